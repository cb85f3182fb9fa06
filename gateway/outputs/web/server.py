"""The web face as a Service: the Flask app over HTTP or HTTPS, on the gateway's bounded server (``gateway.net``).

Requests are read on the gateway's event loop (h11), under ``web.limits``: a slow, silent or greedy client
holds a connection slot for a bounded time and never a worker thread; only a request that has arrived whole
runs the app, in a pool of ``web.threads`` workers.  The server's own error answers (400, 408, 413, 431, 500,
503) carry the same security headers as the app's answers.
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.net.http import HttpServer
from gateway.net.limits import allow_from
from gateway.net.tls import TlsSettings, server_context
from gateway.secretfiles import exposure

from .app import WebContext, create_app, security_headers
from .settings import WebSettings
from .tlscert import ensure_self_signed, fingerprint

log = logging.getLogger(__name__)


class WebService:
    name = "web"

    def __init__(self, gateway, ctx: WebContext | None = None) -> None:
        self.gateway = gateway
        self.ctx = ctx or WebContext(gateway)
        self.settings: WebSettings = self.ctx.settings
        self.app = create_app(self.ctx)
        self.http: HttpServer | None = None
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

    def _tls(self) -> TlsSettings:
        cert, key = self._tls_files()
        try:
            context = server_context(str(cert), str(key))
            self.cert_fingerprint = fingerprint(cert)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(str(self.gateway.config.path), "web.tls.cert",
                              f"cannot load {cert} with {key}: {exc}") from None
        return TlsSettings(context)

    async def start(self) -> None:
        s = self.settings
        src = str(self.gateway.config.path)
        networks = allow_from({"allow_from": list(s.allow_from)}, "web", src)
        http = HttpServer("web", self.app, host=s.host, port=s.port, limits=s.limits, allow_from=networks,
                          threads=s.threads, tls=self._tls() if s.tls else None,
                          error_headers=list(security_headers(s.tls).items()), src=src)
        await http.start()  # binds now: a port in use stops start-up with the address and the reason
        self.http = http
        self.port = http.port
        log.info("web page and REST API at %s", self.endpoints()[0])
        if not self.ctx.users.has_users():
            log.warning("no web user yet: run `bmsgw user add NAME --role admin`%s",
                        f", or open {self.url}setup in a browser on this controller"
                        if s.setup_from_localhost else "")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None

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

    def status(self) -> dict[str, Any]:
        """The server's counters (connections, refusals, evictions, time-outs, requests)."""
        return self.http.status() if self.http is not None else {}
