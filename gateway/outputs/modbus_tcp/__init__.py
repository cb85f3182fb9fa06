"""The Modbus TCP face (plugin): the point map as input and holding registers, commands as writable holding
registers; see README.md beside this file and face.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import parse_listen, parse_networks
from ...errors import ConfigError
from ...service import face_plugin
from .schema import CONFIG_SCHEMA, SECTION

if TYPE_CHECKING:
    from ...config import Config


def config_problems(cfg: dict, gateway_config: Config, catalog) -> list[str]:
    problems = []
    try:
        parse_listen(cfg["listen"])
    except ValueError as exc:
        problems.append(f"{SECTION}.listen: {exc}")
    for key in ("allow_from", "writes.allow_from"):
        items = cfg["writes"]["allow_from"] if key.startswith("writes") else cfg["allow_from"]
        try:
            parse_networks(items, str(gateway_config.path), f"{SECTION}.{key}")
        except ConfigError as exc:
            problems.append(f"{exc.path}: {exc.message}")
    return problems


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
    SECTION, CONFIG_SCHEMA, "gateway.outputs.modbus_tcp.face:ModbusTcpService", check=config_problems)
