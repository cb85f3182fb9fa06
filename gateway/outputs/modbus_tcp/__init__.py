"""The Modbus TCP face (plugin): the point map as input and holding registers, commands as writable holding
registers; see README.md beside this file and face.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import parse_listen, parse_networks
from ...errors import ConfigError
from ...hookspecs import hookimpl
from .schema import CONFIG_SCHEMA, SECTION

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config
    from ...service import Service


@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {SECTION: CONFIG_SCHEMA}


@hookimpl
def bmsgw_check_config(gateway_config: Config) -> list[str]:
    cfg = gateway_config.section(SECTION)
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


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    from .face import ModbusTcpService

    cfg = gateway.config.section(SECTION)
    return [ModbusTcpService(gateway, cfg)] if cfg["enabled"] else []
