"""What a slow, silent or greedy client may hold of the web server: bounded.

cheroot hands every new connection to one of the few worker threads (``web.threads``, 4 by default) at once,
and a worker then waits up to the socket timeout (30 s) for each piece of the request; with TLS on, the
acceptor thread itself does the handshake.  So a handful of connections that send nothing, or a byte now
and then, left the page and the REST API unanswered for everyone; one silent TCP connection to the HTTPS
port stopped the accept loop.  Measured before this module: six idle connections, no answer for 8 s+.

The rules here (the ``web.limits`` settings):

- a new connection waits in cheroot's selector, not in a worker, until its first bytes arrive; a
  connection that stays silent is closed after ``idle_timeout_s``, like an idle keep-alive connection;
- TLS handshakes happen in a worker, under the same deadline as the request;
- the handshake, request line, headers and body must arrive within ``request_timeout_s`` of the first
  byte (the body is read in full before the application sees the request);
- a client address may have at most ``slow_per_address`` requests that have been arriving for more than a
  second; more are closed at once, so one slow client cannot take every worker;
- at most ``max_connections`` open connections, ``max_connections_per_address`` from one address.
"""
from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

from cheroot import errors as cheroot_errors
from cheroot.makefile import MakeFile
from cheroot.server import HTTPConnection, HTTPServer
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .settings import Limits

if TYPE_CHECKING:  # the mixin goes before a cheroot server class: that is what super() reaches
    _ServerBase = HTTPServer
else:
    _ServerBase = object

log = logging.getLogger(__name__)

SLOW_AFTER_S = 1.0  # a request still arriving after this long counts as slow
WATCH_INTERVAL_S = 0.1

class _Arriving:
    __slots__ = ("conn", "start", "address", "killed")

    def __init__(self, conn, start: float, address: str) -> None:
        self.conn, self.start, self.address, self.killed = conn, start, address, False


class Guard:
    """Counts connections and watches requests while they arrive (one watchdog thread)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: Counter = Counter()  # address -> open connections
        self._arriving: dict[int, _Arriving] = {}  # worker thread id -> the request it is reading
        self.counters = {"refused_connections": 0, "timed_out_requests": 0, "slow_closed": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refusals_logged = 0.0

    # -- connections -------------------------------------------------------------------------------------
    def admit(self, address: str) -> bool:
        lim = self.limits
        with self._lock:
            total = sum(self._open.values())
            if total >= lim.max_connections or self._open[address] >= lim.max_connections_per_address:
                self.counters["refused_connections"] += 1
                refused = True
            else:
                self._open[address] += 1
                refused = False
        if refused:
            now = time.monotonic()
            if now - self._refusals_logged >= 60:
                self._refusals_logged = now
                log.warning("web: connection from %s refused: too many open (web.limits.max_connections%s); "
                            "at most one such warning a minute", address,
                            "_per_address" if total < lim.max_connections else "")
        return not refused

    def release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def open_connections(self) -> int:
        with self._lock:
            return sum(self._open.values())

    # -- requests while they arrive ----------------------------------------------------------------------
    def begin(self, conn) -> bool:
        """A worker starts reading a request on ``conn``; False: the address has too many slow ones already."""
        now = time.monotonic()
        address = conn.remote_addr or "?"
        with self._lock:
            slow = sum(1 for a in self._arriving.values()
                       if a.address == address and not a.killed and now - a.start >= SLOW_AFTER_S)
            if slow >= self.limits.slow_per_address:
                self.counters["slow_closed"] += 1
                return False
            self._arriving[threading.get_ident()] = _Arriving(conn, now, address)
        return True

    def arrived(self) -> None:
        """The request is in (or the worker gave up on it): no deadline any more."""
        with self._lock:
            self._arriving.pop(threading.get_ident(), None)

    def _kill(self, entry: _Arriving, why: str) -> None:
        entry.killed = True
        # the worker's blocked read returns at once; cheroot then closes the connection
        with contextlib.suppress(OSError):
            socket.socket.shutdown(entry.conn.socket, socket.SHUT_RDWR)
        log.info("web: closing the connection from %s: %s", entry.address, why)

    def _watch(self) -> None:
        lim = self.limits
        while not self._stop.wait(WATCH_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                entries = [e for e in self._arriving.values() if not e.killed]
                for e in entries:
                    if now - e.start >= lim.request_timeout_s:
                        self.counters["timed_out_requests"] += 1
                        self._kill(e, f"its request did not arrive within {lim.request_timeout_s:g} s "
                                      "(web.limits.request_timeout_s)")
                slow: dict[str, list[_Arriving]] = {}
                for e in entries:
                    if not e.killed and now - e.start >= SLOW_AFTER_S:
                        slow.setdefault(e.address, []).append(e)
                for group in slow.values():
                    group.sort(key=lambda e: e.start)
                    for e in group[lim.slow_per_address:]:  # the oldest may finish; the newest go
                        self.counters["slow_closed"] += 1
                        self._kill(e, "too many slow requests from one address (web.limits.slow_per_address)")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="web-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


# -- cheroot's side ------------------------------------------------------------------------------------------
class DeferredTLS(BuiltinSSLAdapter):
    """cheroot's TLS adapter, with the handshake moved out of the acceptor thread into the worker."""

    def wrap(self, sock):
        return sock, {}

    def makefile(self, sock, mode="r", bufsize=io.DEFAULT_BUFFER_SIZE):
        return MakeFile(sock, mode, bufsize)

    def tls_makefile(self, sock, mode="r", bufsize=io.DEFAULT_BUFFER_SIZE):
        return BuiltinSSLAdapter.makefile(self, sock, mode, bufsize)


class GuardedConnection(HTTPConnection):
    """A connection that counts itself in the guard, shakes hands in the worker and reads under a deadline."""

    def __init__(self, server, sock, makefile=MakeFile):
        super().__init__(server, sock, makefile)
        self.admitted: bool | None = None  # decided once the address is known (GuardedServer.process_conn)
        self.first_bytes = False
        self.handshaken = not isinstance(server.ssl_adapter, DeferredTLS)
        self._released = False

    def communicate(self):
        guard: Guard = self.server.guard
        if not guard.begin(self):
            return False
        try:
            if not self.handshaken and not self._handshake():
                return False
            return super().communicate()
        finally:
            guard.arrived()

    def _handshake(self) -> bool:
        adapter: DeferredTLS = self.server.ssl_adapter
        try:
            tls = adapter.context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        except OSError:
            return False
        self.socket = tls  # from here the guard's deadline shuts this one down
        try:
            tls.do_handshake()
        except ssl.SSLError as exc:
            if "http request" in str(exc).lower():  # plain HTTP to the HTTPS port: say so in plain HTTP
                msg = b"The client sent a plain HTTP request, but this server only speaks HTTPS on this port."
                with contextlib.suppress(OSError):
                    socket.socket.sendall(tls, b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                          b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(msg), msg))
            else:
                self.server.error_log(f"TLS handshake with {self.remote_addr} failed: {exc}")
            return False
        except OSError as exc:
            self.server.error_log(f"TLS handshake with {self.remote_addr} failed: {exc}")
            return False
        self.ssl_env, self.handshaken = adapter.get_environ(tls), True
        self.rfile = adapter.tls_makefile(tls, "rb", self.rbufsize)
        self.wfile = adapter.tls_makefile(tls, "wb", self.wbufsize)
        return True

    def close(self):
        if self.admitted and not self._released:
            self._released = True
            self.server.guard.release(self.remote_addr or "?")
        # a socket already gone: a worker thread must never die of closing it (cheroot's would)
        with contextlib.suppress(OSError):
            super().close()


class GuardedServerMixin(_ServerBase):
    """For a cheroot server class: admission at accept, silent new connections parked in the selector."""

    guard: Guard
    ConnectionClass = GuardedConnection

    def process_conn(self, conn):
        if conn.admitted is None:  # a new connection (called in the selector thread)
            conn.admitted = self.guard.admit(conn.remote_addr or "?")
            if not conn.admitted:
                conn.close()
                return
        if not conn.first_bytes:
            conn.first_bytes = True
            if not conn.rfile.has_data():
                # wait for the client's first bytes in the selector, not in a worker; cheroot closes it after
                # the idle timeout if none come
                self._connections.put(conn)  # type: ignore[attr-defined]  # cheroot's, not in its stubs
                return
        super().process_conn(conn)


def _refuse(start_response, status: str, text: str) -> list[bytes]:
    body = text.encode() + b"\n"
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            ("Connection", "close"), ("X-Content-Type-Options", "nosniff")])
    return [body]


def prefetch_body(app, guard: Guard):
    """WSGI middleware: read the whole body (under the request deadline), then hand the request over."""

    def wrapped(environ, start_response):
        stream = environ["wsgi.input"]
        try:
            body = stream.read()
        except cheroot_errors.MaxSizeExceeded:
            guard.arrived()
            return _refuse(start_response, "413 Request Entity Too Large",
                           "The request body is larger than web.api.max_body_kib allows.")
        except ValueError as exc:  # a chunk size that is not hexadecimal ...: cheroot's ChunkedRFile
            guard.arrived()
            return _refuse(start_response, "400 Bad Request", f"Malformed request body: {exc}")
        except OSError:
            guard.arrived()
            return _refuse(start_response, "408 Request Timeout", "The request did not arrive in time.")
        expected = environ.get("CONTENT_LENGTH")
        if expected and expected.isdigit() and len(body) < int(expected):
            guard.arrived()
            return _refuse(start_response, "408 Request Timeout", "The request body did not arrive in full.")
        guard.arrived()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return app(environ, start_response)

    return wrapped


__all__ = ["Guard", "DeferredTLS", "GuardedConnection", "GuardedServerMixin", "prefetch_body"]
