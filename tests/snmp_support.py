"""Helpers for the SNMP tests: the net-snmp command-line tools and snmptrapd, with the project's MIBs."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from pyasn1.codec.ber import encoder
from pysnmp.proto.api import v2c as v2c_api

from tests.conftest import ROOT

MIBS = ROOT / "mibs"
MIB_ARGS = ["-M", str(MIBS), "-m", "ALL"]
V3_USER = {"name": "nms", "auth": "sha256", "auth_key": "auth-secret-1", "priv": "aes128", "priv_key": "priv-secret-1"}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def net_snmp_env(tmp: Path) -> dict:
    """No user or system snmp.conf (Debian's turns MIB loading off), persistent state in the test folder."""
    env = dict(os.environ)
    env["SNMPCONFPATH"] = str(tmp)
    env["SNMP_PERSISTENT_DIR"] = str(tmp / "net-snmp")
    (tmp / "net-snmp" / "cert_indexes").mkdir(parents=True, exist_ok=True)  # else the tools say they made it
    env.pop("MIBS", None)
    env.pop("MIBDIRS", None)
    return env


def v2c(community: str = "public") -> list[str]:
    return ["-v2c", "-c", community]


def v3(user: dict = V3_USER, auth_key: str | None = None) -> list[str]:
    auth = {"sha": "SHA", "sha224": "SHA-224", "sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}
    return ["-v3", "-l", "authPriv", "-u", user["name"], "-a", auth[user["auth"]], "-A",
            auth_key or user["auth_key"], "-x", "AES", "-X", user["priv_key"]]


class NetSnmp:
    def __init__(self, port: int, tmp: Path) -> None:
        self.target = f"udp:127.0.0.1:{port}"
        self.env = net_snmp_env(tmp)

    def run(self, tool: str, auth: list[str], *args: str, timeout: float = 1.0, retries: int = 1,
            check: bool = True) -> subprocess.CompletedProcess:
        cmd = [tool, *auth, *MIB_ARGS, "-t", str(timeout), "-r", str(retries), *args[:-1], self.target, args[-1]] \
            if args else [tool, *auth, *MIB_ARGS, self.target]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def get(self, auth: list[str], *oids: str, opts: str = "-OQs") -> dict[str, str]:
        """``{name: value}`` from snmpget; names without the module prefix (-Os)."""
        proc = subprocess.run(["snmpget", *auth, *MIB_ARGS, "-t", "1", "-r", "1", opts, self.target, *oids],
                              capture_output=True, text=True, env=self.env, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"snmpget {oids} failed: {proc.stderr.strip()}")
        return parse_lines(proc.stdout)

    def walk(self, auth: list[str], oid: str, opts: str = "-OQs", bulk: bool = True, reps: int = 50) -> dict[str, str]:
        cmd = ["snmpbulkwalk" if bulk else "snmpwalk", *auth, *MIB_ARGS, "-t", "2", "-r", "1", opts]
        if bulk:
            cmd.append(f"-Cr{reps}")
        proc = subprocess.run([*cmd, self.target, oid], capture_output=True, text=True, env=self.env, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} {oid} failed: {proc.stderr.strip()}")
        return parse_lines(proc.stdout)


def parse_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out


class TrapReceiver:
    """Debian's snmptrapd on a free port: v2c community ``public`` and the v3 user (for informs)."""

    def __init__(self, tmp: Path, port: int | None = None, user: dict = V3_USER, community: str = "public") -> None:
        self.tmp = tmp
        self.port = port or free_udp_port()
        self.log = tmp / f"snmptrapd-{self.port}.log"
        self.conf = tmp / f"snmptrapd-{self.port}.conf"
        auth = {"sha": "SHA", "sha224": "SHA-224", "sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}
        self.conf.write_text(
            f"authCommunity log {community}\n"
            f"createUser {user['name']} {auth[user['auth']]} \"{user['auth_key']}\" AES \"{user['priv_key']}\"\n"
            f"authUser log {user['name']} priv\n"
            "format2 NOTIFICATION %P\\t%v\\n\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> TrapReceiver:
        env = net_snmp_env(self.tmp)
        self.proc = subprocess.Popen(
            ["snmptrapd", "-f", "-n", "-C", "-c", str(self.conf), *MIB_ARGS, "-Lf", str(self.log),
             f"udp:127.0.0.1:{self.port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.log.exists() and "NET-SNMP version" in self.log.read_text():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"snmptrapd exited: {self.proc.stderr.read()}")
            time.sleep(0.05)
        raise AssertionError("snmptrapd did not start")

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def notifications(self) -> list[dict[str, str]]:
        """One dict per received notification: ``kind`` (TRAP2 / INFORM), ``security`` (``SNMP v2c,
        community public`` ...) and each varbind, by name without its module prefix."""
        out = []
        for line in self.text().splitlines():
            if not line.startswith("NOTIFICATION "):
                continue
            head, *varbinds = line[len("NOTIFICATION "):].split("\t")
            kind, _, security = head.partition(", ")
            item = {"kind": kind, "security": security.strip()}
            for vb in varbinds:
                name, sep, value = vb.partition(" = ")
                if sep:
                    item[name.split("::")[-1].strip()] = value.strip()
            out.append(item)
        return out

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.notifications()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"expected {count} notifications, got: {self.text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> TrapReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def request(kind: str, oids, request_id: int = 4242, non_repeaters: int = 0, max_repetitions: int = 10,
            community: str = "public") -> bytes:
    """An SNMPv2c GET, GETNEXT or GETBULK message, encoded by pysnmp (the fast path's tests and fuzzers)."""
    pdu = {"get": v2c_api.GetRequestPDU, "next": v2c_api.GetNextRequestPDU, "bulk": v2c_api.GetBulkRequestPDU}[kind]()
    if kind == "bulk":
        v2c_api.apiBulkPDU.set_defaults(pdu)
        v2c_api.apiBulkPDU.set_non_repeaters(pdu, non_repeaters)
        v2c_api.apiBulkPDU.set_max_repetitions(pdu, max_repetitions)
    else:
        v2c_api.apiPDU.set_defaults(pdu)
    v2c_api.apiPDU.set_request_id(pdu, request_id)
    v2c_api.apiPDU.set_varbinds(pdu, [(oid, v2c_api.null) for oid in oids])
    msg = v2c_api.Message()
    v2c_api.apiMessage.set_defaults(msg)
    v2c_api.apiMessage.set_community(msg, community)
    v2c_api.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)
