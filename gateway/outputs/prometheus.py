"""Prometheus exporter: ``/metrics`` on a port of its own (config section ``prometheus``).

The text itself comes from ``gateway.exposition`` (shared with the web face, which mounts the same
``/metrics``); this face serves it over HTTP on the gateway's bounded server (``gateway.net``: the same
connection limits and deadlines as every network face, ``prometheus.limits``) and keeps the active-alarm
table fed from the ``bmsgw_alarm_event`` hook for ``bms_alarm_active``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..config import parse_listen
from ..errors import ConfigError
from ..exposition import exposition_for, make_wsgi_app
from ..hookspecs import hookimpl
from ..net.http import HttpServer
from ..net.limits import Limits, allow_from, limits_from_section, with_network_keys
from ..net.server import BindError
from ..service import ReloadResult, Service

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import Config

log = logging.getLogger(__name__)

LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"
# a scrape is a GET without a body; Prometheus keeps its connection between scrapes (15-60 s apart)
DEFAULT_LIMITS = Limits(max_connections=16, max_connections_per_address=4, idle_timeout_s=120,
                        request_timeout_s=10, send_timeout_s=30, max_request_bytes=4096)
THREADS = 2  # scrapes rendered at once; a third waits for one of them (each renders the same cached text)

SCHEMA = {
    "prometheus": with_network_keys({
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "enabled": {"type": "boolean", "default": True,
                        "description": "serve /metrics on a port of its own (the web face serves it too)"},
            "listen": {"type": "string", "pattern": LISTEN_PATTERN, "default": "127.0.0.1:9108",
                       "description": "host:port ([v6addr]:port); 0.0.0.0 to let a Prometheus elsewhere scrape"},
        },
    }, DEFAULT_LIMITS),
}
ERROR_HEADERS = [("X-Content-Type-Options", "nosniff")]


def listen_address(value: str, where: str = "prometheus.listen", file: str = "config") -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port); a ConfigError naming ``where`` when it is not one."""
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise ConfigError(file, where, str(exc)) from None


class PrometheusService(Service):
    """``/metrics`` on ``prometheus.listen``.  An address that cannot be bound refuses start-up, like every face."""

    name = "prometheus"
    sections = ("prometheus", "site")
    face = True

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        src = str(gateway.config.path)
        self.gateway = gateway
        self.host, self.port = listen_address(cfg["listen"], file=src)
        self.limits = limits_from_section(cfg, DEFAULT_LIMITS, "prometheus", src)
        self.allow_from = allow_from(cfg, "prometheus", src)
        self.http: HttpServer | None = None

    async def start(self) -> None:
        exposition_for(self.gateway)  # build the family model now, not on the first scrape
        http = HttpServer("prometheus", make_wsgi_app(self.gateway), host=self.host, port=self.port,
                          limits=self.limits, allow_from=self.allow_from, threads=THREADS,
                          error_headers=ERROR_HEADERS, src=str(self.gateway.config.path))
        await http.start()  # a BindError names prometheus.listen, the address and the reason
        self.http = http
        self.port = http.port
        log.info("prometheus: /metrics on %s", self.endpoints()[0])

    async def stop(self) -> None:
        http, self.http = self.http, None
        if http is not None:
            await http.stop()

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Limits and allow-list at once; a new listen address is bound first (the old one kept when that
        fails); a new site name is in the next scrape's labels."""
        result = ReloadResult()
        cfg, src = config.section("prometheus"), str(config.path)
        if "site" in changed:
            exposition_for(self.gateway).set_site(config.section("site"))
        self.limits = limits_from_section(cfg, DEFAULT_LIMITS, "prometheus", src)
        self.allow_from = allow_from(cfg, "prometheus", src)
        if self.http is None:
            return result
        closed = self.http.apply(self.limits, self.allow_from)
        if closed:
            result.notes.append(f"prometheus: {closed} connection(s) closed by the new limits or allow_from")
        host, port = listen_address(cfg["listen"], file=src)
        if (host, port) != (self.http.host, self.http.port):
            try:
                await self.http.rebind(host, port)
            except BindError as exc:
                result.failed["prometheus.listen"] = f"{exc.message}; still on {self.endpoints()[0]}"
                return result
            self.host, self.port = self.http.host, self.http.port
            result.notes.append(f"prometheus: /metrics now on {self.endpoints()[0]}")
        return result

    def endpoints(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"http://{host}:{self.port}/metrics"] if self.http is not None else []

    def status(self) -> dict:
        exp = exposition_for(self.gateway)
        out: dict[str, Any] = {"listening": self.endpoints(), "renders": exp.renders,
                               "last_render_ms": round(exp.last_render_s * 1000, 2)}
        if self.http is not None:
            out.update(self.http.status())
        return out


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
