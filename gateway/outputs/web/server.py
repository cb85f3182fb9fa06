"""The web face as a Service: the Flask app under cheroot's HTTP(S) server, in a thread of its own.

Why cheroot and not waitress: the controller serves HTTPS itself (no reverse proxy on the box), and waitress
has no TLS by design; its asyncore-style channels cannot be handed an SSL socket without re-doing the
handshake and want-read/want-write handling inside its dispatcher, i.e. a private fork of its I/O loop.
cheroot (the CherryPy project's production WSGI server, maintained, pure Python) has a thread pool and a
built-in ``ssl`` adapter, so plain HTTP and HTTPS run through the same, tested code path.
"""
from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

from cheroot import errors as cheroot_errors, server as cheroot_server, wsgi

from gateway.errors import ConfigError
from gateway.secretfiles import exposure

from .app import WebContext, create_app, security_headers
from .guard import DeferredTLS, Guard, GuardedConnection, GuardedServerMixin, prefetch_body
from .settings import WebSettings
from .tlscert import ensure_self_signed, fingerprint

log = logging.getLogger(__name__)


class _Request(cheroot_server.HTTPRequest):
    """cheroot's request, its own error answers (400 malformed, 413 too large, 414 ...) with the security
    headers the application's answers carry."""

    def simple_response(self, status, msg=""):
        status = str(status)
        body = msg.encode("ISO-8859-1", "replace") if isinstance(msg, str) else bytes(msg or b"")
        if status[:3] >= "400":
            self.close_connection = True
        headers = [("Content-Length", str(len(body))), ("Content-Type", "text/plain; charset=ISO-8859-1"),
                   ("Cache-Control", "no-store"), *security_headers(getattr(self.server, "tls", False)).items()]
        if self.close_connection and self.response_protocol == "HTTP/1.1":
            headers.append(("Connection", "close"))
        head = f"{self.server.protocol} {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        try:
            self.conn.wfile.write(head.encode("ISO-8859-1") + body)
        except OSError as ex:
            if ex.args and ex.args[0] not in cheroot_errors.socket_errors_to_ignore:
                raise


class _Connection(GuardedConnection):
    RequestHandlerClass = _Request


class _Server(GuardedServerMixin, wsgi.Server):
    """cheroot's server, with the limits of guard.py, its messages (TLS handshakes a client dropped ...) sent to
    the log, not stderr."""

    ConnectionClass = _Connection
    tls = False

    def error_log(self, msg="", level=logging.INFO, traceback=False):
        # client-side trouble (a refused certificate, a dropped connection) is not the gateway's problem
        log.log(logging.DEBUG if level <= logging.INFO else level, "http server: %s", msg, exc_info=traceback)


class WebService:
    name = "web"

    def __init__(self, gateway, ctx: WebContext | None = None) -> None:
        self.gateway = gateway
        self.ctx = ctx or WebContext(gateway)
        self.settings: WebSettings = self.ctx.settings
        self.app = create_app(self.ctx)
        self._server: wsgi.Server | None = None
        self._thread: threading.Thread | None = None
        self.guard: Guard | None = None
        self.port: int | None = None
        self.cert_fingerprint: str | None = None

    def _tls_files(self) -> tuple[Path, Path]:
        s = self.settings
        if s.tls_cert or s.tls_key:
            if not (s.tls_cert and s.tls_key):
                raise ConfigError(str(self.gateway.config.path), "web.tls",
                                  "give both cert and key, or neither for a self-signed certificate")
            key = self.gateway.config.resolve(s.tls_key)
            why = exposure(key)
            if why:
                log.warning("web.tls.key %s: %s; chmod 600 it (or 640 with the bmsgw group)", key, why)
            return self.gateway.config.resolve(s.tls_cert), key
        return ensure_self_signed(self.gateway.config.state_dir / "web" / "tls", s.host)

    async def start(self) -> None:
        s = self.settings
        guard = Guard(s.limits)
        server = _Server((s.host, s.port), prefetch_body(self.app, guard), numthreads=s.threads, server_name="bmsgw",
                         shutdown_timeout=2,
                         timeout=s.limits.idle_timeout_s)  # type: ignore[arg-type]  # socket timeout: a float works
        server.guard = guard
        server.max_request_body_size = s.max_body
        server.max_request_header_size = 64 * 1024
        if s.tls:
            cert, key = self._tls_files()
            try:
                adapter = DeferredTLS(str(cert), str(key))
                self.cert_fingerprint = fingerprint(cert)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise ConfigError(str(self.gateway.config.path), "web.tls.cert",
                                  f"cannot load {cert} with {key}: {exc}") from None
            adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
            server.ssl_adapter = adapter
            server.tls = True
        try:
            server.prepare()  # binds now, so a port in use stops start-up with a clear error
        except OSError as exc:
            raise ConfigError(str(self.gateway.config.path), "web.listen",
                              f"{s.host}:{s.port}: cannot listen: {exc.strerror or exc}") from None
        self._server = server
        self.guard = guard
        # the trend buffer listens to the store only while the face runs: stop() unsubscribes it
        self.ctx.sources.start_buffer(s.buffer_interval_s, s.buffer_samples)
        guard.start()
        self.port = server.bind_addr[1]
        self._thread = threading.Thread(target=self._serve, args=(server,), name="web", daemon=True)
        self._thread.start()
        log.info("web page and REST API at %s", self.endpoints()[0])
        if not self.ctx.users.has_users():
            log.warning("no web user yet: run `bmsgw user add NAME --role admin`%s",
                        f", or open {self.url}setup in a browser on this controller"
                        if s.setup_from_localhost else "")

    def _serve(self, server: wsgi.Server) -> None:
        try:
            server.serve()
        except Exception:
            log.exception("web server stopped")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.guard is not None:
            self.guard.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.ctx.sources.stop_buffer()

    @property
    def url(self) -> str:
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        return f"{s.scheme}://{host}:{self.port or s.port}/"

    def endpoints(self) -> list[str]:
        out = [self.url]
        if self.cert_fingerprint:
            out.append(f"TLS certificate SHA-256 {self.cert_fingerprint}")
        return out
