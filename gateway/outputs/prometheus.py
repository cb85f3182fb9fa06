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
import weakref
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..config import parse_listen
from ..errors import ConfigError
from ..exposition import exposition_for, make_wsgi_app
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..app import Gateway

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


class PrometheusService:
    """``/metrics`` on ``prometheus.listen``.  A port already in use is logged and reported in the status;
    polling and the other faces keep running."""

    name = "prometheus"

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        self.gateway = gateway
        self.host, self.port = listen_address(cfg["listen"], file=str(gateway.config.path))
        self.error = ""
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        exposition_for(self.gateway)  # build the family model now, not on the first scrape
        app = make_wsgi_app(self.gateway)
        try:
            self._server = make_server(self.host, self.port, app, server_class=_server_class(self.host),
                                       handler_class=_QuietHandler)
        except OSError as exc:
            self.error = f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            log.error("prometheus: %s; /metrics is not served on its own port", self.error)
            return
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="prometheus-http", daemon=True)
        self._thread.start()
        log.info("prometheus: /metrics on %s", self.endpoints()[0])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def endpoints(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"http://{host}:{self.port}/metrics"] if self._server is not None else []

    def status(self) -> dict:
        exp = exposition_for(self.gateway)
        out = {"listening": self.endpoints(), "renders": exp.renders,
               "last_render_ms": round(exp.last_render_s * 1000, 2)}
        if self.error:
            out["error"] = self.error
        return out


_services: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return SCHEMA


@hookimpl
def bmsgw_services(gateway: Gateway) -> list:
    cfg = gateway.config.section("prometheus")
    if not cfg.get("enabled", True):
        return []
    svc = PrometheusService(gateway, cfg)
    _services[gateway] = svc
    return [svc]


@hookimpl
def bmsgw_alarm_event(gateway: Gateway, event: Any) -> None:
    exposition_for(gateway).alarms.event(event)


@hookimpl
def bmsgw_status(gateway: Gateway) -> dict:
    svc = _services.get(gateway)
    return {"prometheus": svc.status()} if svc is not None else {}
