"""The MQTT face (plugin): the bank's readings and alarms to a broker; see README.md beside this file and face.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from ...service import face_plugin
from .schema import POINT_FAMILIES, SCHEMA, section_problems

if TYPE_CHECKING:
    from ...config import Config
    from ...points import PointSpec


def config_problems(cfg: dict, gateway_config: Config, catalog) -> list[str]:
    return section_problems(cfg, gateway_config) if cfg["enabled"] else []


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
    "mqtt", SCHEMA["mqtt"], "gateway.outputs.mqtt.face:MqttService", check=config_problems)


@hookimpl
def bmsgw_point_families() -> list[PointSpec]:
    return list(POINT_FAMILIES)
