"""The Prometheus face (plugin): ``/metrics`` on a port of its own; see README.md beside this file and face.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import parse_listen
from ...exposition import exposition_for
from ...hookspecs import AlarmEvent, hookimpl
from ...service import face_plugin
from .schema import SCHEMA

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config


def config_problems(cfg: dict, gateway_config: Config, catalog) -> list[str]:
    try:
        parse_listen(cfg["listen"])
    except ValueError as exc:
        return [f"prometheus.listen: {exc}"]
    return []


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
    "prometheus", SCHEMA["prometheus"], "gateway.outputs.prometheus.face:PrometheusService", check=config_problems)


@hookimpl
def bmsgw_alarm_event(gateway: Gateway, event: AlarmEvent) -> None:
    """``bms_alarm_active`` follows the alarms whether /metrics is served here or by the web face."""
    exposition_for(gateway).alarms.event(event)
