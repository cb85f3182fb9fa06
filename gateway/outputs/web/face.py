"""The web face as a Service: the Flask app over HTTP or HTTPS, on the gateway's bounded server (``gateway.net``).

Requests are read on the gateway's event loop (h11), under ``web.limits``: a slow, silent or greedy client
holds a connection slot for a bounded time and never a worker thread; only a request that has arrived whole
runs the app, in a pool of ``web.threads`` workers.  The server's own error answers (400, 408, 413, 431, 500,
503) carry the same security headers as the app's answers.
"""
from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from pathlib import Path
from typing import Any

from gateway import fsutil
from gateway.net.http import HttpServer
from gateway.net.limits import allow_from
from gateway.net.server import BindError
from gateway.net.tls import TlsSettings, server_context
from gateway.secretfiles import exposure
from gateway.service import ReloadResult, Service, StartError

from .context import WebContext, security_headers
from .schema import WebSettings

log = logging.getLogger(__name__)


# What a running web face cannot take while it runs: TLS and the worker threads (the server is built with them);
# ``enabled`` neither: the face cannot stop itself while it answers the request that turns it off.
RESTART_KEYS = ("enabled", "tls", "threads")


class WebService(Service):
    """The web page and the REST API on the gateway's bounded HTTP(S) server."""

    name = "web"
    sections = ("web", "site")
    after = ("alarms", "history")  # the page asks them for tables and trends from its first request
    face = True
    stops_live = False

    def __init__(self, gateway, cfg: dict, ctx: WebContext | None = None) -> None:
        self.gateway = gateway
        self.ctx = ctx or WebContext(gateway)
        self.settings: WebSettings = self.ctx.settings
        self.section = cfg  # as applied: a reload compares the new one with it
        self._app: Any = None  # the Flask app, built by the first request (the ``app`` property)
        self._app_lock = threading.Lock()
        self.http: HttpServer | None = None
        self.port: int | None = None
        self.cert_fingerprint: str | None = None

    @property
    def app(self) -> Any:
        """The Flask app, built when first used (the first request, in a worker thread): Flask, Werkzeug and
        Jinja take about 7 MB of the controller's memory, not spent while nobody opens the page."""
        app = self._app
        if app is None:
            with self._app_lock:
                if self._app is None:
                    from .app import create_app

                    self._app = create_app(self.ctx)
                app = self._app
        return app

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)

    def _tls_files(self) -> tuple[Path, Path]:
        s = self.settings
        if s.tls_cert or s.tls_key:  # both, or neither (Gateway.check)
            key = self.gateway.config.resolve(s.tls_key)
            why = exposure(key)
            if why:
                log.warning("web.tls.key %s: %s; chmod 600 it (or 640 with the bmsgw group)", key, why)
            return self.gateway.config.resolve(s.tls_cert), key
        from .tlscert import ensure_self_signed  # cryptography: only with TLS on

        return ensure_self_signed(self.gateway.config.state_dir / "web" / "tls", s.host)

    def _tls(self) -> TlsSettings:
        from .tlscert import fingerprint

        cert, key = self._tls_files()
        try:
            context = server_context(str(cert), str(key))
            self.cert_fingerprint = fingerprint(cert)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise StartError(f"web.tls.cert: cannot load {cert} with {key}: {exc}") from None
        return TlsSettings(context)

    async def start(self) -> None:
        s = self.settings
        # what a save killed mid-write (a power cut) left beside the config file
        path = Path(self.gateway.config.path)
        fsutil.remove_stale_temporaries(path.parent, path.name)
        src = str(self.gateway.config.path)
        networks = allow_from({"allow_from": list(s.allow_from)}, "web", src)
        http = HttpServer("web", self._wsgi, host=s.host, port=s.port, limits=s.limits, allow_from=networks,
                          threads=s.threads, tls=self._tls() if s.tls else None,
                          error_headers=list(security_headers(s.tls).items()), src=src)
        await http.start()  # binds now: a port in use stops start-up with the address and the reason
        self.http = http
        self.port = http.port
        # the trend buffer listens to the store only while the face runs: stop() unsubscribes it
        self.ctx.sources.start_buffer(s.buffer_interval_s, s.buffer_samples)
        log.info("web page and REST API at %s", self.endpoints()[0])
        if not self.ctx.users.has_users():
            log.warning("no web user yet: run `bmsgw user add NAME --role admin`%s",
                        f", or open {self.url}setup in a browser on this controller"
                        if s.setup_from_localhost else "")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None
        self.ctx.sources.stop_buffer()

    async def reload(self, config, changed: frozenset[str]) -> ReloadResult:
        """Users, sessions, login limits, the connection limits and allow-list, a new listen address: at once
        (the new address bound first, the old one kept when that fails).  TLS and the worker threads wait for
        a restart."""
        old, new = self.section, config.section("web")
        result = ReloadResult(restart=[f"web.{k}" for k in RESTART_KEYS if old.get(k) != new.get(k)])
        self.ctx.reload(config)
        s = self.settings = self.ctx.settings
        self.section = new
        if self.http is None:
            return result
        src = str(config.path)
        closed = self.http.apply(s.limits, allow_from({"allow_from": list(s.allow_from)}, "web", src))
        if closed:
            result.notes.append(f"web: {closed} connection(s) closed by the new limits or allow_from")
        if (s.host, s.port) != (self.http.host, self.http.port):
            try:  # open connections finish where they are: one of them carries the answer to this change
                await self.http.rebind(s.host, s.port, close_clients=False)
            except BindError as exc:
                self.settings = self.ctx.settings = dataclasses.replace(s, host=self.http.host, port=self.http.port)
                result.failed["web.listen"] = f"{exc.message}; still at {self.url}"
                return result
            self.port = self.http.port
            result.notes.append(f"web: now at {self.url}")
        return result

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
        """Where it serves, and the server's counters (connections, refusals, evictions, time-outs, requests)."""
        return {"url": self.url, "tls_fingerprint": self.cert_fingerprint,
                **(self.http.status() if self.http is not None else {})}
