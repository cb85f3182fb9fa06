"""The NUT face: a read-only Network UPS Tools network protocol server (upsd's side of ``docs/net-protocol.txt``).

Clients (``upsc``, ``upsmon`` as a secondary, NAS units, Proxmox, Home Assistant's NUT integration) read the bank
as the devices ``bank`` and ``string1`` ... ``stringN`` (``variables.py``).  One request per line, answered in
order, on the gateway's bounded server (``gateway.net.server``): a line is at most 512 bytes (longer: ``ERR
INVALID-ARGUMENT`` and the connection closed), a client that stops reading its answers stops being read.

Answers and errors follow upsd (NUT 2.8's ``server/net*.c``) command by command; what differs is in the README
("Differences from upsd").  Nothing is written and no command is carried out: ``SET`` and ``FSD`` get
``ERR ACCESS-DENIED`` (no user here holds those rights), ``INSTCMD`` ``ERR CMD-NOT-SUPPORTED`` (no device has
instant commands), as upsd answers them.  ``LOGIN`` checks the user's argon2 hash in a worker thread, one check
at a time; an address that failed 5 times in 5 minutes is refused without a check until the window passes.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import __version__
from ...config import listen_address, parse_networks
from ...hookspecs import AlarmEvent, hookimpl
from ...net.limits import limits_from_section
from ...net.server import BoundedConnection, BoundedServer, LogLimiter
from ...net.tls import server_context
from ...service import ReloadResult, Service, StartError
from . import protocol as p
from .protocol import LineError, error, quote, split_words
from .schema import DEFAULT_LIMITS, MAX_LINE_BYTES, SECTION
from .variables import Device, Model, StatusAlarms

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config

log = logging.getLogger(__name__)

NETVER = "1.3"  # the protocol version of NUT 2.8 (net-protocol.txt, "Revision history")
HELP = "Commands: HELP VER NETVER PROTVER GET LIST LOGIN LOGOUT USERNAME PASSWORD STARTTLS\n"
MAX_BACKLOG = 64 * 1024  # bytes of pipelined requests held while an answer is pending, then reading pauses
# pipelined lines answered in one turn of the event loop (at most this many, and no more once this time is
# spent): a client pipelining thousands of LIST VAR takes turns with the other clients and the gateway's polling
# instead of holding the loop for seconds (a LIST VAR of a 120-battery string costs about 9 ms here, 0.2 s on
# the controller)
LINES_PER_TURN, TURN_BUDGET_S = 32, 0.005
LOGIN_FAILURES, LOGIN_WINDOW_S = 5, 300.0  # per client address
MAX_THROTTLED_ADDRESSES = 4096
# commands that need USERNAME and PASSWORD first (upsd's FLAG_USER), checked before their arguments
USER_COMMANDS = frozenset({"LOGIN", "PRIMARY", "MASTER", "FSD", "SET", "INSTCMD"})


@dataclass(frozen=True, slots=True)
class Close:
    """Answer ``text``, then close the connection (LOGOUT)."""

    text: str


@dataclass(frozen=True, slots=True)
class StartTls:
    """Answer ``OK STARTTLS``, then hand the connection to TLS with ``context``."""

    context: ssl.SSLContext


Answer = str | Close | StartTls | Awaitable[str]



class LoginThrottle:
    """Failed LOGINs per client address in a sliding window; a locked address is refused without a password
    check (each check costs an argon2 computation).  Bounded: the addresses failing longest ago go first."""

    def __init__(self, max_failures: int = LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._fails: OrderedDict[str, list[float]] = OrderedDict()

    def locked(self, address: str) -> bool:
        now = self.clock()
        return len([t for t in self._fails.get(address, ()) if now - t < self.window_s]) >= self.max_failures

    def failed(self, address: str) -> None:
        now = self.clock()
        fails = [t for t in self._fails.pop(address, ()) if now - t < self.window_s]
        self._fails[address] = [*fails, now][-self.max_failures:]
        while len(self._fails) > MAX_THROTTLED_ADDRESSES:
            self._fails.popitem(last=False)


class NutService(Service):
    """The NUT protocol server: read-only devices for upsc, upsmon secondaries and NUT integrations."""

    name = SECTION
    sections = (SECTION, "site", "analytics")
    after = ("alarms", "web")  # the active alarm table (RB) and the web face's certificate (STARTTLS) first
    face = True

    def __init__(self, gateway: Gateway, cfg: dict[str, Any]) -> None:
        self.gateway = gateway
        src = str(gateway.config.path)
        host, port = listen_address(cfg["listen"], f"{SECTION}.listen", src)
        self.alarms = StatusAlarms()
        self.counters = {"requests": 0, "errors": 0, "logins": 0, "refused_logins": 0, "tls_upgrades": 0,
                         "protocol_errors": 0}
        self.refusals = LogLimiter(log, "nut")
        self.throttle = LoginThrottle()
        self.logins: dict[NutConnection, int] = {}  # connection -> the device key it logged into
        self._kdf = threading.BoundedSemaphore(1)  # an argon2 check takes 64 MiB for a moment: one at a time
        self._dummy_hash: str | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.tls_source = ""
        self._settings(cfg, gateway.config)
        self.server = BoundedServer(SECTION, lambda server: NutConnection(self), host=host, port=port,
                                    limits=self.limits, allow_from=self.allow_from, src=src, counters=self.counters)
        self._commands: dict[str, Callable[[NutConnection, list[str]], Answer]] = {
            "VER": self._ver, "NETVER": self._netver, "PROTVER": self._netver, "HELP": self._help,
            "STARTTLS": self._starttls, "GET": self._get, "LIST": self._list, "USERNAME": self._username,
            "PASSWORD": self._password, "LOGIN": self._login, "LOGOUT": self._logout, "PRIMARY": self._primary,
            "MASTER": self._primary, "FSD": self._fsd, "SET": self._set, "INSTCMD": self._instcmd,
        }

    def _settings(self, cfg: dict[str, Any], config: Config) -> None:
        """Everything of the section but the listen address and TLS: taken at start and at a reload."""
        src = str(config.path)
        self.cfg = cfg
        self.limits = limits_from_section(cfg, DEFAULT_LIMITS, SECTION, src)
        self.allow_from = parse_networks(cfg["allow_from"], src, f"{SECTION}.allow_from")
        self.users: dict[str, str] = {u["name"]: u["password_hash"] for u in cfg["users"]}
        self.model = Model(self.gateway.store, self.gateway.pointmap, config, cfg, self.alarms)

    # -- life cycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.alarms.seed(self.gateway.pm.hook.bmsgw_alarms(gateway=self.gateway, active=True, limit=1_000_000))
        self.tls_context, self.tls_source = self._tls(self.cfg, self.gateway.config)
        await self.server.start()  # BindError (a StartError) names the address and the reason
        if self.server.host not in ("127.0.0.1", "::1", "localhost") and not self.allow_from:
            log.warning("nut: serving the bank to any address on %s (nut.allow_from is empty)", self.endpoints()[0])

    async def stop(self) -> None:
        await self.server.stop()

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Every setting applies at once: users (connections logged in as a user removed or changed are
        closed), device names, low-battery settings, limits and allow-list from the next request; a new TLS
        certificate from the next STARTTLS; a new listen address is bound first, the old one kept when that
        fails."""
        result = ReloadResult()
        cfg = config.section(SECTION)
        old_users = self.users
        try:
            context, source = self._tls(cfg, config)
        except StartError as exc:
            result.failed[f"{SECTION}.tls"] = f"{exc}; STARTTLS keeps the certificate it had"
        else:
            self.tls_context, self.tls_source = context, source
        self._settings(cfg, config)
        closed = self.server.apply(self.limits, self.allow_from)
        if closed:
            result.notes.append(f"{SECTION}: {closed} client connection(s) no longer in allow_from (or over the new "
                                "limits) closed")
        gone = [c for c in self.logins if c.username is not None and
                self.users.get(c.username) != old_users.get(c.username)]
        for conn in gone:
            conn.close()
        if gone:
            result.notes.append(f"{SECTION}: {len(gone)} logged-in client(s) of a user removed or changed closed")
        host, port = listen_address(cfg["listen"], f"{SECTION}.listen", str(config.path))
        await self.server.follow_listen(host, port, result, lambda: self.endpoints()[0])
        return result

    def _tls(self, cfg: dict[str, Any], config: Config) -> tuple[ssl.SSLContext | None, str]:
        """The STARTTLS context: ``nut.tls.cert``/``key``; else the web face's certificate when ``web.tls`` is on
        (``web.tls.cert``/``key``, or the self-signed pair the web face keeps in ``<state_dir>/web/tls``)."""
        tls = cfg["tls"]
        if not tls["enabled"]:
            return None, ""
        key_name = f"{SECTION}.tls.cert"
        if tls["cert"] or tls["key"]:
            cert, key = config.resolve(tls["cert"]), config.resolve(tls["key"])
        else:
            web_tls = config.section("web").get("tls")  # None when the web face is not loaded
            if not web_tls or not web_tls["enabled"]:
                return None, ""
            key_name = "web.tls.cert"
            if web_tls["cert"] or web_tls["key"]:
                cert, key = config.resolve(web_tls["cert"]), config.resolve(web_tls["key"])
            else:
                folder = config.state_dir / "web" / "tls"
                cert, key = folder / "cert.pem", folder / "key.pem"
                if not (cert.exists() and key.exists()):  # the web face makes them at its start; it is off
                    log.warning("nut: STARTTLS is not offered: web.tls is on but %s is not there (is the web face "
                                "off? set nut.tls.cert and key)", cert)
                    return None, ""
        try:
            return server_context(str(cert), str(key)), str(Path(cert))
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise StartError(f"{key_name}: cannot load {cert} with {key} for STARTTLS: {exc}") from None

    def endpoints(self) -> list[str]:
        host = f"[{self.server.host}]" if ":" in self.server.host else self.server.host
        return [f"nut://{host}:{self.server.port}"]

    def status(self) -> dict[str, Any]:
        return {**self.server.status(), **self.counters, "listen": self.endpoints()[0],
                "devices": [d.name for d in self.model.listed()], "logged_in": len(self.logins),
                "starttls": self.tls_source or None}

    @property
    def port(self) -> int:
        return self.server.port

    @hookimpl
    def bmsgw_alarm_event(self, event: AlarmEvent) -> None:
        self.alarms.event(event.alarm_id, event.point, event.severity, event.string, event.cell, event.active,
                          event.value, event.threshold)

    # -- requests ----------------------------------------------------------------------------------------------
    def answer(self, conn: NutConnection, line: bytes) -> Answer:
        """The answer to one request line (its newline removed)."""
        self.counters["requests"] += 1
        try:
            words = split_words(line)
        except LineError:
            return self._err(p.INVALID_ARGUMENT)
        if not words:
            return self._err(p.UNKNOWN_COMMAND)  # upsd answers an empty line so
        handler = self._commands.get(words[0].upper())
        if handler is None:
            return self._err(p.UNKNOWN_COMMAND)
        if words[0].upper() in USER_COMMANDS:
            if conn.username is None:
                return self._err(p.USERNAME_REQUIRED)
            if conn.password is None:
                return self._err(p.PASSWORD_REQUIRED)
        return handler(conn, words[1:])

    def _err(self, name: str) -> str:
        self.counters["errors"] += 1
        return error(name)

    def _device(self, name: str) -> Device | None:
        return self.model.device(name)

    # -- VER, NETVER, HELP, STARTTLS ------------------------------------------------------------------------------
    def _ver(self, conn: NutConnection, args: list[str]) -> Answer:
        if args:
            return self._err(p.INVALID_ARGUMENT)
        return f"bmsgw {__version__} NUT network protocol server (read-only) - https://www.networkupstools.org/\n"

    def _netver(self, conn: NutConnection, args: list[str]) -> Answer:
        return self._err(p.INVALID_ARGUMENT) if args else f"{NETVER}\n"

    def _help(self, conn: NutConnection, args: list[str]) -> Answer:
        return self._err(p.INVALID_ARGUMENT) if args else HELP

    def _starttls(self, conn: NutConnection, args: list[str]) -> Answer:
        if conn.tls:
            return self._err(p.ALREADY_SSL_MODE)
        if self.tls_context is None:
            return self._err(p.FEATURE_NOT_CONFIGURED)
        return StartTls(self.tls_context)

    # -- GET -------------------------------------------------------------------------------------------------------
    def _get(self, conn: NutConnection, args: list[str]) -> Answer:
        if not args:
            return self._err(p.INVALID_ARGUMENT)
        sub = args[0].upper()
        if sub == "TRACKING":
            if len(args) < 2:
                return "ON\n" if conn.tracking else "OFF\n"
            # nothing is ever tracked here (no SET, no INSTCMD is carried out)
            return "ERR UNKNOWN\n" if conn.tracking else self._err(p.FEATURE_NOT_CONFIGURED)
        if len(args) < 2:
            return self._err(p.INVALID_ARGUMENT)
        name = args[1]
        if sub in ("NUMLOGINS", "UPSDESC"):
            device = self._device(name)
            if device is None:
                return self._err(p.UNKNOWN_UPS)
            if sub == "NUMLOGINS":
                return f"NUMLOGINS {name} {sum(1 for k in self.logins.values() if k == device.key)}\n"
            return f"UPSDESC {name} {quote(device.description)}\n"
        if len(args) < 3:
            return self._err(p.INVALID_ARGUMENT)
        var = args[2]
        if sub == "VAR" and var.lower().startswith("server."):
            return self._server_var(name, var)
        if sub not in ("VAR", "TYPE", "DESC", "CMDDESC"):
            return self._err(p.INVALID_ARGUMENT)
        device = self._device(name)
        if device is None:
            return self._err(p.UNKNOWN_UPS)
        if sub == "CMDDESC":  # upsd describes any name; no device has instant commands here
            return f"CMDDESC {name} {var} {quote('Description unavailable')}\n"
        variable = device.get(var)
        if sub == "DESC":
            text = variable.description if variable is not None else "Description unavailable"
            return f"DESC {name} {var} {quote(text)}\n"
        if variable is None:
            return self._err(p.VAR_NOT_SUPPORTED)
        if sub == "TYPE":
            kind = f"STRING:{variable.string_size}" if variable.string_size else "NUMBER"
            return f"TYPE {name} {var} {kind}\n"
        value = variable.read()
        if value is None:
            return self._err(p.DATA_STALE)
        return f"VAR {name} {var} {quote(value)}\n"

    def _server_var(self, name: str, var: str) -> str:
        if var.lower() == "server.info":
            return f"VAR {name} {var} {quote(f'bmsgw {__version__} NUT network protocol server (read-only)')}\n"
        if var.lower() == "server.version":
            return f"VAR {name} {var} {quote(__version__)}\n"
        return self._err(p.VAR_NOT_SUPPORTED)

    # -- LIST ------------------------------------------------------------------------------------------------------
    def _list(self, conn: NutConnection, args: list[str]) -> Answer:
        if not args:
            return self._err(p.INVALID_ARGUMENT)
        sub = args[0].upper()
        if sub == "UPS":
            lines = ["BEGIN LIST UPS\n"]
            lines += [f"UPS {d.name} {quote(d.description)}\n" for d in self.model.listed()]
            lines.append("END LIST UPS\n")
            return "".join(lines)
        if len(args) < 2:
            return self._err(p.INVALID_ARGUMENT)
        name = args[1]
        if sub in ("VAR", "RW", "CMD", "CLIENT"):
            device = self._device(name)
            if device is None:
                return self._err(p.UNKNOWN_UPS)
            lines = [f"BEGIN LIST {sub} {name}\n"]
            if sub == "VAR":
                for variable in device.ordered:
                    value = variable.read()
                    if value is not None:
                        lines.append(f"VAR {name} {variable.name} {quote(value)}\n")
            elif sub == "CLIENT":
                lines += [f"CLIENT {device.name} {c.peer}\n" for c, k in self.logins.items() if k == device.key]
            # RW and CMD: nothing is writable, no instant command exists
            lines.append(f"END LIST {sub} {name}\n")
            return "".join(lines)
        if len(args) < 3:
            return self._err(p.INVALID_ARGUMENT)
        if sub not in ("ENUM", "RANGE"):
            return self._err(p.INVALID_ARGUMENT)
        device = self._device(name)
        if device is None:
            return self._err(p.UNKNOWN_UPS)
        var = args[2]
        if device.get(var) is None:
            return self._err(p.VAR_NOT_SUPPORTED)
        return f"BEGIN LIST {sub} {name} {var}\nEND LIST {sub} {name} {var}\n"  # no variable is enumerated

    # -- USERNAME, PASSWORD, LOGIN, LOGOUT --------------------------------------------------------------------------
    def _username(self, conn: NutConnection, args: list[str]) -> Answer:
        if len(args) != 1:
            return self._err(p.INVALID_ARGUMENT)
        if conn.username is not None:
            return self._err(p.ALREADY_SET_USERNAME)
        conn.username = args[0]
        return "OK\n"

    def _password(self, conn: NutConnection, args: list[str]) -> Answer:
        if len(args) != 1:
            return self._err(p.INVALID_ARGUMENT)
        if conn.password is not None:
            return self._err(p.ALREADY_SET_PASSWORD)
        conn.password = args[0]
        return "OK\n"

    def _login(self, conn: NutConnection, args: list[str]) -> Answer:
        if len(args) != 1:
            return self._err(p.INVALID_ARGUMENT)
        if conn in self.logins:
            return self._err(p.ALREADY_LOGGED_IN)
        device = self._device(args[0])
        if device is None:
            return self._err(p.UNKNOWN_UPS)
        return self._finish_login(conn, device)

    async def _finish_login(self, conn: NutConnection, device: Device) -> str:
        user, password = conn.username or "", conn.password or ""
        if conn.verified is None:
            if self.throttle.locked(conn.peer):
                self.counters["refused_logins"] += 1
                self.refusals.warning("nut: LOGIN of %s from %s refused unchecked: %d failed logins from this "
                                      "address in %.0f s", user, conn.peer, LOGIN_FAILURES, LOGIN_WINDOW_S)
                return self._err(p.ACCESS_DENIED)
            conn.verified = await asyncio.to_thread(self._check_password, self.users.get(user), password)
            if not conn.verified:
                self.throttle.failed(conn.peer)
        if conn.closed:
            return ""  # gone while its password was checked: nobody to answer
        if not conn.verified:
            self.counters["refused_logins"] += 1
            self.refusals.warning("nut: LOGIN to %s refused: user %r from %s (unknown user or wrong password)",
                                  device.name, user, conn.peer)
            return self._err(p.ACCESS_DENIED)
        if conn in self.logins:
            return self._err(p.ALREADY_LOGGED_IN)
        self.logins[conn] = device.key
        self.counters["logins"] += 1
        log.info("nut: user %s@%s logged into %s%s", user, conn.peer, device.name, " (TLS)" if conn.tls else "")
        return "OK\n"

    def _check_password(self, pw_hash: str | None, password: str) -> bool:
        """The check of ``bmsgw user hash``'s argon2 hashes, the web face's (``web/auth.py``), one NUT check at a
        time; an unknown user costs the same time, so the answer does not tell which names exist."""
        from ..web.auth import hash_password, verify_password

        with self._kdf:
            if pw_hash is None:
                if self._dummy_hash is None:
                    self._dummy_hash = hash_password(secrets.token_hex(16))
                verify_password(self._dummy_hash, password)
                return False
            return verify_password(pw_hash, password)

    def _logout(self, conn: NutConnection, args: list[str]) -> Answer:
        if args:
            return self._err(p.INVALID_ARGUMENT)
        return Close("OK Goodbye\n")

    def forget(self, conn: NutConnection) -> None:
        """A connection is gone: its login no longer counts."""
        key = self.logins.pop(conn, None)
        if key is not None:
            log.info("nut: user %s@%s logged out of %s", conn.username, conn.peer,
                     next((d.name for d in self.model.listed() if d.key == key), key))

    # -- refused: no primary, no FSD, no writes, no instant commands ------------------------------------------------
    def _primary(self, conn: NutConnection, args: list[str]) -> Answer:
        if len(args) != 1:
            return self._err(p.INVALID_ARGUMENT)
        if self._device(args[0]) is None:
            return self._err(p.UNKNOWN_UPS)
        return self._err(p.ACCESS_DENIED)  # users here are upsmon secondaries

    def _fsd(self, conn: NutConnection, args: list[str]) -> Answer:
        return self._primary(conn, args)  # the same checks, the same refusal

    def _set(self, conn: NutConnection, args: list[str]) -> Answer:
        if len(args) < 2:
            return self._err(p.INVALID_ARGUMENT)
        sub = args[0].upper()
        if sub == "VAR":
            if len(args) < 4:
                return self._err(p.INVALID_ARGUMENT)
            if self._device(args[1]) is None:
                return self._err(p.UNKNOWN_UPS)
            return self._err(p.ACCESS_DENIED)  # no user here may SET (upsd checks that before the variable)
        if sub == "TRACKING":
            if args[1].upper() not in ("ON", "OFF"):
                return self._err(p.INVALID_ARGUMENT)
            conn.tracking = args[1].upper() == "ON"
            return "OK\n"
        return self._err(p.INVALID_ARGUMENT)

    def _instcmd(self, conn: NutConnection, args: list[str]) -> Answer:
        if len(args) < 2:
            return self._err(p.INVALID_ARGUMENT)
        if self._device(args[0]) is None:
            return self._err(p.UNKNOWN_UPS)
        return self._err(p.CMD_NOT_SUPPORTED)  # no device has instant commands


class NutConnection(BoundedConnection):
    """One client: splits the byte stream into lines and answers each, in order.  Admission, eviction and the
    idle / request / send deadlines are the bounded server's (``gateway.net.server``)."""

    def __init__(self, service: NutService) -> None:
        super().__init__(service.server)
        self.service = service
        self.buf = bytearray()
        self.username: str | None = None
        self.password: str | None = None
        self.verified: bool | None = None  # the password checked once per connection (it cannot change)
        self.tls = False
        self.tracking = False
        self.pending: asyncio.Future[None] | None = None  # a LOGIN being checked, a TLS handshake
        self.resuming = False  # more lines to answer at the loop's next turn
        self.eof = False

    def lost(self, exc: Exception | None) -> None:
        self.service.forget(self)

    def eof_received(self) -> bool | None:
        """The client will send no more (``nc -N``): answer what it sent, then close."""
        self.eof = True
        if self.pending is None and not self.writing_paused and not self.resuming:
            self._process()
            return None
        return True  # closed once the pending answer and the requests held back are answered

    # -- flow control: a client that does not read its answers stops being read ----------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        self._update_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.pending is None and not self.closed and not self.resuming:
            self._process()

    def _update_reading(self) -> None:
        if self.closed:
            return
        self.set_reading_paused(self.writing_paused or ((self.pending is not None or self.resuming) and
                                                        len(self.buf) > MAX_BACKLOG))

    # -- requests ----------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buf += data
        if self.pending is None and not self.resuming:
            self._process()
        else:
            self._update_reading()

    def _process(self) -> None:
        buf = self.buf
        answered, turn_ends = 0, time.monotonic() + TURN_BUDGET_S
        while not self.closed and self.pending is None and not self.writing_paused:
            end = buf.find(b"\n", 0, MAX_LINE_BYTES + 1)
            if end < 0:
                break
            if answered and (answered == LINES_PER_TURN or time.monotonic() >= turn_ends):
                # the others' turn: carry on at the loop's next turn
                self.resuming = True
                self.loop.call_soon(self._resume)
                self._update_reading()
                return
            line = bytes(buf[:end])
            del buf[:end + 1]
            answered += 1
            self.request_complete()  # only whole lines count: a byte-a-minute client times out
            self._send(self.service.answer(self, line))
        if self.closed:
            return
        if self.pending is None and len(buf) > MAX_LINE_BYTES and not self.writing_paused:
            self.service.counters["protocol_errors"] += 1
            self.service.counters["errors"] += 1
            self.service.refusals.warning("nut: closing the connection from %s: a line longer than %d bytes",
                                          self.peer, MAX_LINE_BYTES)
            buf.clear()
            self.transport.write(error(p.INVALID_ARGUMENT).encode())
            self.close()
            return
        if buf and self.pending is None:
            self.request_started()  # the next line has begun
        if self.eof and self.pending is None and (not self.writing_paused or not buf):
            self.close()  # the client half-closed: every whole line it sent is answered
            return
        self._update_reading()

    def _resume(self) -> None:
        self.resuming = False
        if not self.closed and self.pending is None:
            self._process()
        elif not self.closed:
            self._update_reading()

    def _send(self, answer: Answer) -> None:
        if isinstance(answer, str):
            self.transport.write(answer.encode())
        elif isinstance(answer, Close):
            self.transport.write(answer.text.encode())
            self.close()
        elif isinstance(answer, StartTls):
            self.transport.write(b"OK STARTTLS\n")
            # what was sent after STARTTLS in clear must not be read as if it came through TLS
            self.buf.clear()
            self._wait(self._upgrade(answer.context))
        else:
            self._wait(self._deliver(answer))

    def _wait(self, work: Awaitable[None]) -> None:
        self.answer_pending()
        self.pending = asyncio.ensure_future(work)
        self._update_reading()

    async def _deliver(self, answer: Awaitable[str]) -> None:
        text = await answer
        self.pending = None
        if self.closed:
            return
        self.answer_sent()
        self.transport.write(text.encode())
        self._process()

    async def _upgrade(self, context: ssl.SSLContext) -> None:
        """The TLS handshake, under the request deadline like a request; then the same connection, in TLS."""
        self.answer_sent()
        self.request_started()
        try:
            transport = await self.loop.start_tls(self.transport, self, context, server_side=True,
                                                  ssl_handshake_timeout=self.server.limits.request_timeout_s)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError, RuntimeError) as exc:
            log.debug("nut: TLS handshake with %s failed: %s", self.peer, exc)
            self.pending = None
            self.abort()
            return
        self.pending = None
        if transport is None or self.closed:  # the loop gave no TLS transport, or the client left meanwhile
            if transport is not None:
                transport.abort()
            self.abort()
            return
        self.transport = transport
        self.tls = True
        self.service.counters["tls_upgrades"] += 1
        self.between_requests()
        self._process()
