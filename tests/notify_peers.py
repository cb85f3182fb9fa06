"""Real peers for the notifier tests, all on loopback or a pseudo-terminal, stopping by themselves:
an HTTP receiver (http.server), an SMTP server with STARTTLS and login (aiosmtpd, certificate made with
cryptography) and a simulated 4G modem that checks the AT dialogue."""
from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import select
import ssl
import threading
import time
import tty
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import free_port


# -- webhook receiver ----------------------------------------------------------------------------------------
class WebhookReceiver:
    """Collects JSON POSTs; ``fail_first`` requests are answered with ``fail_status``."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503) -> None:
        self.posts: list[dict] = []
        self.times: list[float] = []
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests = 0
        self.lock = threading.Lock()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with recv.lock:
                    recv.requests += 1
                    fail = recv.requests <= recv.fail_first
                    if not fail:
                        recv.posts.append({"json": json.loads(body), "headers": dict(self.headers),
                                           "path": self.path})
                        recv.times.append(time.time())
                self.send_response(recv.fail_status if fail else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        with self.lock:
            return [p["json"] for p in self.posts]


# -- SMTP server with STARTTLS and AUTH ----------------------------------------------------------------------
def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class SmtpServer:
    """aiosmtpd on loopback: STARTTLS required, AUTH LOGIN/PLAIN with one user; keeps what it receives."""

    def __init__(self, folder: Path, user: str = "bmsgw", password: str = "s3cret!") -> None:
        self.cert, key = make_certificate(folder)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.user, self.password = user, password
        self.messages: list = []
        self.envelopes: list = []
        self.auth_attempts: list[tuple[str, bool]] = []
        self.tls_sessions = 0
        server = self

        class Handler:
            async def handle_DATA(self, srv, session, envelope):
                server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), session.ssl is not None,
                                         session.authenticated))
                server.messages.append(message_from_bytes(envelope.original_content, policy=default_policy))
                return "250 OK"

        def authenticator(srv, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            server.auth_attempts.append((auth_data.login.decode(), ok))
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=ctx,
                                     require_starttls=True, auth_required=True, authenticator=authenticator,
                                     auth_require_tls=True)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


# -- a 4G modem on a pseudo-terminal ---------------------------------------------------------------------------
class SimulatedModem(threading.Thread):
    """Answers AT commands like a modem in text mode and records the dialogue.

    ``pin``: the SIM asks for it until it is given (None: no PIN needed).  ``cms_errors``: codes answered to
    the next AT+CMGS text submissions, one each.  Checks: a message is only accepted after AT+CMGF=1, and
    only to a number after a ``> `` prompt, terminated by Ctrl-Z.
    """

    def __init__(self, pin: str | None = "1234", cms_errors: list[int] | None = None, registered: bool = True) -> None:
        super().__init__(daemon=True, name="sim-modem")
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self.pin = pin
        self.unlocked = pin is None
        self.echo = True
        self.text_mode = False
        self.cms_errors = list(cms_errors or [])
        self.registered = registered
        self.dialogue: list[str] = []
        self.sms: list[tuple[str, str]] = []
        self.pin_tries: list[str] = []
        self.protocol_errors: list[str] = []
        self._halt = threading.Event()

    def _send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def run(self) -> None:
        buf = b""
        pending_number = None
        while not self._halt.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                continue
            try:
                data = os.read(self.master, 1024)
            except OSError:
                return
            buf += data
            progress = True
            while progress:
                progress = False
                if pending_number is not None:
                    if b"\x1a" in buf:
                        text, _, buf = buf.partition(b"\x1a")
                        self._submit(pending_number, text.decode("ascii", "replace"))
                        pending_number, progress = None, True
                    elif b"\x1b" in buf:
                        buf = buf.partition(b"\x1b")[2]
                        pending_number, progress = None, True
                        self._send("\r\nOK\r\n")
                elif b"\r" in buf:
                    line, _, buf = buf.partition(b"\r")
                    progress = True
                    cmd = line.decode("ascii", "replace").strip()
                    if not cmd:
                        continue
                    self.dialogue.append(cmd)
                    if self.echo:
                        self._send(cmd + "\r")
                    pending_number = self._command(cmd)

    def _ok(self, *info: str) -> None:
        self._send("".join(f"\r\n{i}\r\n" for i in info) + "\r\nOK\r\n")

    def _command(self, cmd: str):
        up = cmd.upper()
        if up == "AT":
            self._ok()
        elif up == "ATE0":
            self.echo = False
            self._ok()
        elif up == "AT+CMEE=1":
            self._ok()
        elif up == "AT+CPIN?":
            self._ok("+CPIN: READY" if self.unlocked else "+CPIN: SIM PIN")
        elif up.startswith("AT+CPIN="):
            given = cmd.split("=", 1)[1].strip('"')
            self.pin_tries.append(given)
            if given == self.pin:
                self.unlocked = True
                self._ok()
            else:
                self._send("\r\n+CME ERROR: 16\r\n")
        elif not self.unlocked:
            self._send("\r\n+CME ERROR: 11\r\n")
        elif up == "AT+CMGF=1":
            self.text_mode = True
            self._ok()
        elif up.startswith("AT+CSCS="):
            self._ok()
        elif up == "AT+CREG?":
            self._ok("+CREG: 0,1" if self.registered else "+CREG: 0,2")
        elif up.startswith("AT+CMGS="):
            if not self.text_mode:
                self.protocol_errors.append("CMGS before CMGF=1")
                self._send("\r\n+CMS ERROR: 304\r\n")
                return None
            self._send("\r\n> ")
            return cmd.split("=", 1)[1].strip('"')
        else:
            self._send("\r\nERROR\r\n")
        return None

    def _submit(self, number: str, text: str) -> None:
        self.dialogue.append(f"<text to {number}>")
        if self.cms_errors:
            self._send(f"\r\n+CMS ERROR: {self.cms_errors.pop(0)}\r\n")
            return
        self.sms.append((number, text))
        self._send(f"\r\n+CMGS: {len(self.sms)}\r\n\r\nOK\r\n")

    def __enter__(self) -> SimulatedModem:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(timeout=2)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
