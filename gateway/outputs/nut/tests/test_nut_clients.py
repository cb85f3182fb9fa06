"""The NUT face against Debian's real NUT clients (nut-client 2.8: upsc, upsmon) and raw sockets, on a running
gateway with the simulated bank behind it."""
from __future__ import annotations

import os
import pwd
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.outputs.web.auth import hash_password
from gateway.points import PointRef
from tests.support import GatewayThread, free_port, small_bank, write_config

PASSWORD = "nas-password-1"


def upsc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["upsc", *args], capture_output=True, text=True, timeout=30)


def upsc_vars(target: str) -> dict[str, str]:
    r = upsc(target)
    assert r.returncode == 0, r.stderr
    return dict(line.split(": ", 1) for line in r.stdout.splitlines())


def ask(port: int, *lines: str) -> str:
    """Each line sent, the answers read until the server closes (the last line should be LOGOUT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("".join(f"{line}\n" for line in lines).encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def nut_status(gt: GatewayThread, device: str = "bank") -> str | None:
    svc = gt.gateway.service("nut")
    variable = svc.model.device(device).get("ups.status")
    return variable.read()


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """Two floating strings of 4 batteries (the simulator floats by default), a NUT user."""
    tmp = tmp_path_factory.mktemp("nut")
    users = [{"name": "nas", "password_hash": hash_password(PASSWORD)}]
    path = write_config(tmp, {"nut": {"enabled": True, "users": users}}, base=small_bank(2, 4))
    with GatewayThread(path) as gt:
        gt.wait_for(lambda: nut_status(gt) == "OL", what="the analytics to find the bank floating")
        yield gt, gt.gateway.service("nut").port


def test_upsc_lists_the_bank_and_each_string_and_reads_a_floating_bank(bank):
    gt, port = bank
    host = f"127.0.0.1:{port}"
    listed = upsc("-l", host)
    assert listed.returncode == 0 and listed.stdout.splitlines() == ["bank", "string1", "string2"], listed
    described = upsc("-L", host)
    assert described.stdout.splitlines() == ["bank: Battery room", "string1: String 1", "string2: String 2"]
    r = upsc(f"bank@{host}")
    print(f"$ upsc -l {host}\n{listed.stdout}$ upsc bank@{host}\n{r.stdout}")  # the report quotes it (pytest -s)
    values = upsc_vars(f"bank@{host}")
    assert values["ups.status"] == "OL"
    store = gt.gateway.store
    lowest = min(store.value(PointRef("string.soc", s)) for s in (1, 2))
    assert float(values["battery.charge"]) == pytest.approx(lowest, abs=0.1)
    assert values["battery.charger.status"] == "floating"
    assert values["battery.packs"] == "8" and values["battery.voltage.nominal"] == "48"
    assert values["device.type"] == "ups" and values["battery.type"] == "PbAc"
    assert values["battery.packs.bad"] == "0"  # seeded from the alarm engine's active table: none to replace
    assert float(values["battery.voltage"]) == pytest.approx(store.value(PointRef("bank.voltage")), abs=0.5)
    assert float(values["ambient.temperature"]) == pytest.approx(store.value(PointRef("io.ambient_temperature")),
                                                                 abs=0.5)
    assert "battery.runtime" not in values  # no discharge yet: no run time is made up
    assert upsc(f"bank@{host}", "ups.status").stdout == "OL\n"
    one = upsc_vars(f"string2@{host}")
    assert one["ups.status"] == "OL" and one["battery.packs"] == "4"
    assert float(one["battery.voltage"]) == pytest.approx(store.value(PointRef("string.voltage", 2)), abs=0.5)
    assert float(one["experimental.battery.4.voltage"]) == pytest.approx(
        store.value(PointRef("cell.voltage", 2, 4)), abs=0.05)
    missing = upsc(f"bank@{host}", "input.voltage")
    assert missing.returncode == 1 and "Error: Variable not supported by UPS" in missing.stderr
    unknown = upsc(f"ups@{host}")
    assert unknown.returncode == 1 and "Error: Unknown UPS" in unknown.stderr


def test_a_raw_session_is_answered_line_by_line_and_logout_closes_it(bank):
    gt, port = bank
    out = ask(port, "NETVER", "GET UPSDESC bank", "USERNAME nas", f"PASSWORD {PASSWORD}", "LOGIN bank",
              "GET NUMLOGINS bank", "LIST CLIENT bank", "SET VAR bank battery.charge.low 90", "LOGOUT")
    assert out.splitlines() == ["1.3", 'UPSDESC bank "Battery room"', "OK", "OK", "OK", "NUMLOGINS bank 1",
                                "BEGIN LIST CLIENT bank", "CLIENT bank 127.0.0.1", "END LIST CLIENT bank",
                                "ERR ACCESS-DENIED", "OK Goodbye"]
    gt.wait_for(lambda: gt.gateway.service("nut").status()["logged_in"] == 0, what="the logout to count")


def test_a_line_longer_than_512_bytes_is_refused_and_the_connection_closed(bank):
    gt, port = bank
    svc = gt.gateway.service("nut")
    before = svc.counters["protocol_errors"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"NETVER\nGET VAR bank " + b"x" * 600)  # no newline needed: 512 bytes without one is too long
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out == b"1.3\nERR INVALID-ARGUMENT\n"
    assert svc.counters["protocol_errors"] == before + 1
    # a line of exactly 512 bytes is still a line
    assert ask(port, "GET VAR bank " + "y" * 499, "LOGOUT").splitlines() == ["ERR VAR-NOT-SUPPORTED", "OK Goodbye"]


def test_a_client_pipelining_thousands_of_requests_does_not_hold_the_others(bank):
    """3000 LIST VAR sent at once by one client are answered a few dozen per turn of the event loop: another
    client's NETVER, sent just after them, is answered long before the last of them."""
    gt, port = bank
    count, ends = 3000, [0]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as busy, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as other:
        def read_all() -> None:
            tail = b""
            while chunk := busy.recv(1 << 20):
                ends[0] += (tail + chunk).count(b"END LIST VAR string1\n") - tail.count(b"END LIST VAR string1\n")
                tail = chunk[-32:]

        reader = threading.Thread(target=read_all)
        reader.start()
        busy.sendall(b"LIST VAR string1\n" * count)
        other.sendall(b"NETVER\n")
        assert other.recv(64) == b"1.3\n"
        answered_meanwhile = ends[0]
        busy.shutdown(socket.SHUT_WR)
        reader.join(timeout=60)
    assert ends[0] == count
    assert answered_meanwhile < count / 2, f"{answered_meanwhile} of {count} lists answered before a NETVER"


def test_a_client_that_half_closes_gets_every_answer_then_the_end(bank):
    gt, port = bank
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"LIST UPS\r\nGET VAR string1 ups.status\nVER")  # the last line never ends
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.decode().splitlines() == ["BEGIN LIST UPS", 'UPS bank "Battery room"', 'UPS string1 "String 1"',
                                         'UPS string2 "String 2"', "END LIST UPS", 'VAR string1 ups.status "OL"']


def test_upsc_talks_tls_when_the_web_face_has_a_certificate(tmp_path):
    path = write_config(tmp_path, {"web": {"tls": {"enabled": True}},
                                   "nut": {"enabled": True, "limits": {"request_timeout_s": 1}}}, base=small_bank(1, 2))
    with GatewayThread(path, wait_points=None) as gt:
        svc = gt.gateway.service("nut")
        host = f"127.0.0.1:{svc.port}"
        assert svc.status()["starttls"] == str(gt.gateway.config.state_dir / "web" / "tls" / "cert.pem")
        r = upsc("-l", host)
        assert r.returncode == 0 and r.stdout.splitlines() == ["bank", "string1"], r
        assert "Connected to NUT server 127.0.0.1 in SSL" in r.stderr  # upsc's NSS client upgraded
        assert svc.counters["tls_upgrades"] == 1
        # the same by hand: STARTTLS, the handshake, the protocol inside TLS.  What the client sent in clear after
        # STARTTLS (before the handshake) is dropped, not answered as if it had come through TLS.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as raw:
            raw.sendall(b"STARTTLS\nLIST UPS\n")
            assert raw.recv(64) == b"OK STARTTLS\n"
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"STARTTLS\nGET UPSDESC string1\nLOGOUT\n")
                out = b""
                while chunk := tls.recv(4096):
                    out += chunk
        assert out.decode().splitlines() == ["ERR ALREADY-SSL-MODE", 'UPSDESC string1 "String 1"', "OK Goodbye"]
        # a client that says STARTTLS and then stalls its handshake is closed at the request deadline
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as raw:
            raw.sendall(b"STARTTLS\n")
            assert raw.recv(64) == b"OK STARTTLS\n"
            raw.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, never finished
            t0 = time.monotonic()
            assert raw.recv(64) == b""
            assert time.monotonic() - t0 < 5
        assert svc.counters["timed_out"] == 1


def test_settings_apply_live_users_allow_list_low_battery_and_listen(tmp_path):
    port, new_port = free_port(), free_port()
    path = write_config(tmp_path, {"nut": {"enabled": True, "listen": f"127.0.0.1:{port}"}}, base=small_bank(1, 2))
    with GatewayThread(path) as gt, socket.socket() as busy:
        gw = gt.gateway
        gt.wait_for(lambda: nut_status(gt) == "OL", what="the bank floating")
        login = ("USERNAME nas", f"PASSWORD {PASSWORD}", "LOGIN bank")
        assert ask(port, *login, "LOGOUT").splitlines() == ["OK", "OK", "ERR ACCESS-DENIED", "OK Goodbye"]
        doc = dict(gw.config.data)
        doc["nut"] = {**doc["nut"], "users": [{"name": "nas", "password_hash": hash_password(PASSWORD)}],
                      "low_battery": {"charge_pct": 100, "runtime_s": 300}}
        report = gt.call(gw.reload(gw.check(doc)))
        assert "nut" in report.applied and report.restart_required == [] and report.failed == {}
        assert nut_status(gt) == "OL LB"  # every charge is at or below 100 %
        # a logged-in client of a user that is then removed is closed
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.sendall("".join(f"{line}\n" for line in login).encode())
        got = b""
        while got.count(b"\n") < 3:
            got += held.recv(64)
        assert got == b"OK\nOK\nOK\n"
        doc["nut"] = {**doc["nut"], "users": [], "allow_from": ["127.0.0.2"]}
        report = gt.call(gw.reload(gw.check(doc)))
        assert any("no longer in allow_from" in n for n in report.notes), report.notes
        assert held.recv(64) == b""
        held.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
            assert refused.recv(64) == b""  # not in allow_from
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)) as ok:
            ok.sendall(b"NETVER\n")
            assert ok.recv(64) == b"1.3\n"
        # a new address: a busy one keeps the old, a free one moves the server
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        doc["nut"] = {**doc["nut"], "allow_from": [], "listen": f"127.0.0.1:{busy.getsockname()[1]}"}
        report = gt.call(gw.reload(gw.check(doc)))
        assert "in use" in report.failed["nut.listen"] and f"nut://127.0.0.1:{port}" in report.failed["nut.listen"]
        doc["nut"] = {**doc["nut"], "listen": f"127.0.0.1:{new_port}"}
        report = gt.call(gw.reload(gw.check(doc)))
        assert "nut" in report.applied and report.failed == {}
        assert ask(new_port, "NETVER", "LOGOUT") == "1.3\nOK Goodbye\n"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)


def test_a_busy_port_refuses_start_up_with_the_key_and_the_reason(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        path = write_config(tmp_path, {"nut": {"enabled": True, "listen": f"127.0.0.1:{busy.getsockname()[1]}"}},
                            base=small_bank(1, 2))
        gt = GatewayThread(path, wait_points=None)
        try:
            with pytest.raises(ConfigError, match=r"nut\.listen: cannot listen on 127\.0\.0\.1:\d+: Address already"):
                gt.start()
        finally:
            gt.stop()


# -- upsmon --------------------------------------------------------------------------------------------------------
UPSMON_CONF = """\
MONITOR bank@127.0.0.1:{port} 1 nas {password} secondary
MINSUPPLIES 1
SHUTDOWNCMD "{dir}/shutdown.sh"
NOTIFYCMD "{dir}/notify.sh"
{notify}
POLLFREQ 1
POLLFREQALERT 1
HOSTSYNC 1
DEADTIME 3
FINALDELAY 0
POWERDOWNFLAG {dir}/killpower
"""
UPSMON = "/lib/nut/upsmon"  # from nut-client
NOTIFY_EVENTS = ("ONLINE", "ONBATT", "LOWBATT", "FSD", "COMMOK", "COMMBAD", "SHUTDOWN", "REPLBATT", "NOCOMM")


def private_upsmon(folder: Path, port: int) -> list[str]:
    """upsmon's command, with its config, state, notifications, shutdown command and `wall` in ``folder``.

    It runs as `nobody`: the only place upsmon 2.8 writes outside its config is its PID file, at a path built in
    (/run/nut, the system's), and `nobody` may not write there.  NUT_CONFPATH/NUT_STATEPATH point at ``folder``,
    so nothing of the system's NUT set-up is read or touched."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    scripts = {folder / "shutdown.sh": f'#!/bin/sh\necho "shutdown $(date +%s.%N)" >> {folder}/shutdown-ran\n',
               folder / "notify.sh": f'#!/bin/sh\necho "$NOTIFYTYPE $UPSNAME $*" >> {folder}/notify.log\n',
               bin_dir / "wall": f"#!/bin/sh\ncat >> {folder}/wall.log\n"}
    for script, text in scripts.items():
        script.write_text(text)
        script.chmod(0o755)
    conf = folder / "upsmon.conf"
    conf.write_text(UPSMON_CONF.format(port=port, password=PASSWORD, dir=folder,
                                       notify="\n".join(f"NOTIFYFLAG {e} EXEC" for e in NOTIFY_EVENTS)))
    conf.chmod(0o600)
    nobody = pwd.getpwnam("nobody")
    for path in (folder, bin_dir, *scripts, conf):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    # Debian's /sbin/upsmon is a wrapper that runs only when /etc/nut/nut.conf sets a MODE: run the daemon itself
    return [UPSMON, "-DD"]  # debug level 2 logs every status it polls


def ups_battery_bank(strings: int = 2, cells: int = 4) -> dict:
    """``small_bank`` with the batteries of a small UPS: 12 V 9 Ah (minutes of run time at tens of amperes)."""
    base = small_bank(strings, cells)
    for s in base["strings"]:
        s["battery"] = {"model": "12V 9Ah AGM", "capacity_ah": 9}
    return base


def test_upsmon_as_a_secondary_shuts_its_host_down_when_the_bank_discharges_to_low_battery(tmp_path):
    """A real upsmon (MONITOR bank@... secondary) logs in and polls a floating bank of 12 V 9 Ah batteries, with
    the default low-battery settings (battery.runtime.low 300 s).  The simulator's mains_failure scenario: the
    strings discharge at 20 A (about 10 minutes of run time: OB DISCHRG, upsmon says ONBATT and waits); then the
    load grows to 40 A (the run-time estimate falls under 300 s: OB DISCHRG LB) and upsmon runs its shutdown
    command."""
    users = [{"name": "nas", "password_hash": hash_password(PASSWORD)}]
    path = write_config(tmp_path, {"nut": {"enabled": True, "users": users}}, base=ups_battery_bank())
    with GatewayThread(path) as gt, tempfile.TemporaryDirectory(prefix="bmsgw-upsmon-") as private:
        svc = gt.gateway.service("nut")
        model = gt.gateway.simulator.model
        store = gt.gateway.store
        gt.wait_for(lambda: nut_status(gt) == "OL", what="the analytics to find the bank floating")
        nut_dir = Path(private)
        command = private_upsmon(nut_dir, svc.port)
        env = {**os.environ, "NUT_CONFPATH": private, "NUT_STATEPATH": private, "NUT_ALTPIDPATH": private,
               "PATH": f"{nut_dir / 'bin'}:{os.environ['PATH']}"}
        log_path = tmp_path / "upsmon.log"
        notify_log = nut_dir / "notify.log"

        def notified(event: str) -> bool:
            return notify_log.exists() and event in notify_log.read_text()

        def runtime() -> float:
            return min(store.value(PointRef("string.runtime_remaining", s)) or 1e9 for s in (1, 2))

        with open(log_path, "w") as log_file:
            upsmon = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=private,
                                      user="nobody", group="nogroup", extra_groups=[], start_new_session=True)
        try:
            gt.wait_for(lambda: svc.status()["logged_in"] == 1, what="upsmon to LOGIN")
            polled = svc.counters["requests"]
            gt.wait_for(lambda: svc.counters["requests"] >= polled + 3, what="upsmon to poll ups.status")
            assert not (nut_dir / "shutdown-ran").exists()  # on line: nothing to do
            model.start_scenario("mains_failure", value=20.0)  # the mains fail
            gt.wait_for(lambda: notified("ONBATT"), what="upsmon to see the bank on battery")
            assert nut_status(gt) == "OB DISCHRG" and runtime() > 300
            assert not (nut_dir / "shutdown-ran").exists()  # on battery, not low: upsmon waits
            model.start_scenario("mains_failure", value=40.0)  # the load grows
            gt.wait_for(lambda: (nut_dir / "shutdown-ran").exists(), what="upsmon to run its shutdown command")
            assert runtime() <= 300 and nut_status(gt) == "OB DISCHRG LB"
            assert upsmon.wait(timeout=30) == 0  # it shut down: it exits
        finally:
            if upsmon.poll() is None:
                os.killpg(upsmon.pid, signal.SIGTERM)
                upsmon.wait(timeout=10)
        notes = (nut_dir / "notify.log").read_text()
        shutdowns = (nut_dir / "shutdown-ran").read_text().count("shutdown")
    text = log_path.read_text()
    print("upsmon log:\n" + text + "\nnotifications:\n" + notes)  # the report quotes it (pytest -s)
    assert "Logged into UPS bank@127.0.0.1" in text
    assert "parse_status: [OL]" in text and "parse_status: [OB DISCHRG]" in text
    assert "parse_status: [OB DISCHRG LB]" in text
    assert "Giving up on the primary for UPS [bank@127.0.0.1" in text  # a secondary with no primary: HOSTSYNC
    assert "Executing automatic power-fail shutdown" in text
    assert "ONBATT" in notes and "LOWBATT" in notes and "SHUTDOWN" in notes
    assert shutdowns == 1


def test_an_end_of_discharge_alarm_of_the_alarm_engine_says_lb_on_battery(tmp_path):
    """The alarm engine's events reach the face: with the end-of-discharge warning raised to 14 V per 12 V unit
    (above float, so it is active from the start), the floating bank still reads OL; on battery it reads LB at
    once, with hours of run time left by the estimate."""
    rules = {"cell_voltage_discharge": {"low": {"warning": 14.0, "critical": None}}}
    path = write_config(tmp_path, {"nut": {"enabled": True}, "alarms": {"rules": rules}}, base=small_bank(1, 2))
    with GatewayThread(path) as gt:
        svc = gt.gateway.service("nut")
        gt.wait_for(lambda: svc.alarms.low_voltage(1), what="the end-of-discharge alarm to reach the NUT face")
        gt.wait_for(lambda: nut_status(gt) == "OL", what="the bank floating")
        gt.gateway.simulator.model.start_scenario("mains_failure", value=25.0)  # C/4: about 3 hours
        gt.wait_for(lambda: (nut_status(gt) or "").startswith("OB"), what="the bank on battery")
        assert nut_status(gt) == "OB DISCHRG LB"
        gt.wait_for(lambda: gt.gateway.store.value(PointRef("string.runtime_remaining", 1)) is not None,
                    what="a run-time estimate")
        assert gt.gateway.store.value(PointRef("string.runtime_remaining", 1)) > 3600
        assert upsc(f"bank@127.0.0.1:{svc.port}", "ups.status").stdout == "OB DISCHRG LB\n"
