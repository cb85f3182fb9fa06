"""Prometheus exporter: ``/metrics`` on a port of its own (config section ``prometheus``).

The text itself comes from ``gateway.exposition`` (shared with the web face, which mounts the same
``/metrics``); this face serves it over HTTP on the gateway's bounded server (``gateway.net``: the same
connection limits and deadlines as every network face, ``prometheus.limits``) and keeps the active-alarm
table fed from the ``bmsgw_alarm_event`` hook for ``bms_alarm_active``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...config import listen_address
from ...exposition import exposition_for, make_wsgi_app
from ...net.http import HttpServer
from ...net.limits import allow_from, limits_from_section
from ...net.server import BindError
from ...service import ReloadResult, Service
from .schema import DEFAULT_LIMITS, THREADS

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config

log = logging.getLogger(__name__)

ERROR_HEADERS = [("X-Content-Type-Options", "nosniff")]


class PrometheusService(Service):
    """``/metrics`` on ``prometheus.listen``.  An address that cannot be bound refuses start-up, like every face."""

    name = "prometheus"
    sections = ("prometheus", "site")
    face = True

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        src = str(gateway.config.path)
        self.gateway = gateway
        self.host, self.port = listen_address(cfg["listen"], "prometheus.listen", src)
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
        host, port = listen_address(cfg["listen"], "prometheus.listen", src)
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
