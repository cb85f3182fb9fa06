"""Prometheus exporter: ``/metrics`` on a port of its own (config section ``prometheus``).

The text itself comes from ``gateway.exposition`` (shared with the web face, which mounts the same
``/metrics``); this face only serves it over HTTP from a small threaded WSGI server (the standard library's,
as prometheus-client's own exporter does) and keeps the active-alarm table fed from the
``bmsgw_alarm_event`` hook for ``bms_alarm_active``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..config import parse_listen
from ..errors import ConfigError
from ..exposition import exposition_for, make_wsgi_app
from ..hookspecs import hookimpl
from ..service import ReloadResult, Service, StartError

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import Config

log = logging.getLogger(__name__)

LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"

SCHEMA = {
    "prometheus": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "enabled": {"type": "boolean", "default": True,
                        "description": "serve /metrics on a port of its own (the web face serves it too)"},
            "listen": {"type": "string", "pattern": LISTEN_PATTERN, "default": "127.0.0.1:9108",
                       "description": "host:port ([v6addr]:port); 0.0.0.0 to let a Prometheus elsewhere scrape"},
        },
    },
}


def listen_address(value: str, where: str = "prometheus.listen", file: str = "config") -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port); a ConfigError naming ``where`` when it is not one."""
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise ConfigError(file, where, str(exc)) from None


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a client hanging up is not worth a traceback
        log.debug("prometheus: connection from %s failed", client_address,
                  exc_info=True)  # noqa: LOG014 socketserver calls handle_error inside its except block


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):  # http.server's own %-format: filled here, only when it is logged
            log.debug("prometheus: %s %s", self.address_string(), format % args)


def _server_class(host: str) -> type[WSGIServer]:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: resolve it
        family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    return type("_Server", (_ThreadingWSGIServer,), {"address_family": family})


class PrometheusService(Service):
    """``/metrics`` on ``prometheus.listen``."""

    name = "prometheus"
    sections = ("prometheus", "site")
    face = True

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        self.gateway = gateway
        self.host, self.port = listen_address(cfg["listen"], file=str(gateway.config.path))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _serve(self, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
        try:
            server = make_server(host, port, make_wsgi_app(self.gateway), server_class=_server_class(host),
                                 handler_class=_QuietHandler)
        except OSError as exc:
            raise StartError(f"prometheus.listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                  name="prometheus-http", daemon=True)
        thread.start()
        return server, thread

    async def start(self) -> None:
        exposition_for(self.gateway)  # build the family model now, not on the first scrape
        self._server, self._thread = self._serve(self.host, self.port)
        self.port = self._server.server_address[1]
        log.info("prometheus: /metrics on %s", self.endpoints()[0])

    async def _close(self, server: WSGIServer, thread: threading.Thread | None) -> None:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await self._close(server, self._thread)

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """A new listen address is bound first (the old one kept when that fails); a new site name is in the
        next scrape's labels."""
        result = ReloadResult()
        if "site" in changed:
            exposition_for(self.gateway).set_site(config.section("site"))
        host, port = listen_address(config.section("prometheus")["listen"], file=str(config.path))
        if (host, port) != (self.host, self.port) and self._server is not None:
            try:
                server, thread = self._serve(host, port)
            except StartError as exc:
                result.failed["prometheus.listen"] = f"{exc}; still on {self.endpoints()[0]}"
                return result
            old, old_thread = self._server, self._thread
            self._server, self._thread, self.host = server, thread, host
            self.port = server.server_address[1]
            await self._close(old, old_thread)
            result.notes.append(f"prometheus: /metrics now on {self.endpoints()[0]}")
        return result

    def endpoints(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"http://{host}:{self.port}/metrics"] if self._server is not None else []

    def status(self) -> dict:
        exp = exposition_for(self.gateway)
        return {"listening": self.endpoints(), "renders": exp.renders,
                "last_render_ms": round(exp.last_render_s * 1000, 2)}


@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return SCHEMA


@hookimpl
def bmsgw_check_config(gateway_config: Config) -> list[str]:
    try:
        parse_listen(gateway_config.section("prometheus")["listen"])
    except ValueError as exc:
        return [f"prometheus.listen: {exc}"]
    return []


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    cfg = gateway.config.section("prometheus")
    return [PrometheusService(gateway, cfg)] if cfg["enabled"] else []


@hookimpl
def bmsgw_alarm_event(gateway: Gateway, event: Any) -> None:
    """``bms_alarm_active`` follows the alarms whether /metrics is served here or by the web face."""
    exposition_for(gateway).alarms.event(event)
