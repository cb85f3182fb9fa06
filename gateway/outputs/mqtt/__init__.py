"""The MQTT face (plugin): the bank's readings and alarms to a broker; see README.md beside this file and face.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .schema import POINT_FAMILIES, SCHEMA, section_problems

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config
    from ...points import PointSpec
    from ...service import Service


@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return SCHEMA


@hookimpl
def bmsgw_check_config(gateway_config: Config) -> list[str]:
    cfg = gateway_config.section("mqtt")
    return section_problems(cfg, gateway_config) if cfg["enabled"] else []


@hookimpl
def bmsgw_point_families() -> list[PointSpec]:
    return list(POINT_FAMILIES)


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    from .face import MqttService

    cfg = gateway.config.section("mqtt")
    return [MqttService(gateway, cfg)] if cfg["enabled"] else []
