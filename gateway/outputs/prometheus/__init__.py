"""The Prometheus face (plugin): ``/metrics`` on a port of its own; see README.md beside this file and face.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import parse_listen
from ...exposition import exposition_for
from ...hookspecs import AlarmEvent, hookimpl
from .schema import SCHEMA

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config
    from ...service import Service


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
    from .face import PrometheusService

    cfg = gateway.config.section("prometheus")
    return [PrometheusService(gateway, cfg)] if cfg["enabled"] else []


@hookimpl
def bmsgw_alarm_event(gateway: Gateway, event: AlarmEvent) -> None:
    """``bms_alarm_active`` follows the alarms whether /metrics is served here or by the web face."""
    exposition_for(gateway).alarms.event(event)
