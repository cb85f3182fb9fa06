"""Real MQTT peers for the tests: a Mosquitto broker on loopback and a recording subscriber."""
from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import free_port


def wait_port(port: int, timeout: float = 15.0, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} did not {'open' if up else 'close'} within {timeout} s")


class Mosquitto:
    """``mosquitto -c`` on 127.0.0.1 with persistence in its own folder, so a restart keeps retained
    messages and persistent sessions (what a production broker does)."""

    def __init__(self, folder: Path, port: int | None = None, listener_extra: str = "", extra: str = "",
                 anonymous: bool = True) -> None:
        self.port = port or free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.conf.write_text(
            f"user root\n"
            f"persistence true\npersistence_location {folder}/\n"
            f"max_queued_messages 0\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n"
            f"per_listener_settings false\nallow_anonymous {'true' if anonymous else 'false'}\n"
            f"{extra}\n"
            f"listener {self.port} 127.0.0.1\n{listener_extra}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except AssertionError:
            self.proc.kill()
            raise AssertionError(f"mosquitto did not start: {self.proc.stderr.read().decode()} "
                                 f"{self.log.read_text() if self.log.exists() else ''}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(timeout=15)
            self.proc = None
            wait_port(self.port, up=False)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """A paho client with a persistent session (QoS 1), recording every message it gets."""

    def __init__(self, port: int, topic: str = "bmsgw/#", client_id: str = "test-subscriber",
                 tls: dict | None = None, auth: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, dict | bytes, bool]] = []
        self.lock = threading.Lock()
        self.topic = topic
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if tls:
            self.client.tls_set(**tls)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_message(self, client, userdata, msg):
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = msg.payload
        with self.lock:
            self.messages.append((msg.topic, payload, msg.retain))

    def wait_connected(self, timeout: float = 15) -> None:
        assert self.connected.wait(timeout), "the subscriber could not connect"
        time.sleep(0.2)  # let the SUBACK arrive

    def snapshot(self) -> list[tuple[str, dict | bytes, bool]]:
        with self.lock:
            return list(self.messages)

    def seqs(self) -> list[int]:
        return [p["seq"] for _, p, _ in self.snapshot() if isinstance(p, dict) and "seq" in p]

    def wait_for(self, predicate, timeout: float = 30, what: str = "messages") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; got {len(self.snapshot())} messages")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_pem(path: Path, obj) -> str:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


def make_pki(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all made here."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmsgw test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, server: bool):
        key = _key()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
             .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    skey, scert = leaf("localhost", True)
    ckey, ccert = leaf("gateway-demo", False)
    return {"ca": _write_pem(folder / "ca.pem", ca),
            "server_cert": _write_pem(folder / "server.pem", scert),
            "server_key": _write_pem(folder / "server.key", skey),
            "client_cert": _write_pem(folder / "client.pem", ccert),
            "client_key": _write_pem(folder / "client.key", ckey)}
