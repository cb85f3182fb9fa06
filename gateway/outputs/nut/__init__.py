"""The NUT face (plugin): the bank as Network UPS Tools devices for upsc, upsmon, NAS units and Home Assistant,
read-only; see README.md beside this file and face.py."""
from __future__ import annotations

import re
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
    try:
        parse_networks(cfg["allow_from"], str(gateway_config.path), f"{SECTION}.allow_from")
    except ConfigError as exc:
        problems.append(f"{exc.path}: {exc.message}")
    seen: set[str] = set()
    for i, user in enumerate(cfg["users"]):
        if user["name"] in seen:
            problems.append(f"{SECTION}.users[{i}].name: {user['name']!r} is declared twice")
        seen.add(user["name"])
    if bool(cfg["tls"]["cert"]) != bool(cfg["tls"]["key"]):
        problems.append(f"{SECTION}.tls: give both cert and key (or neither, for the web face's certificate)")
    if re.fullmatch(r"string[0-9]+", cfg["bank_name"], re.IGNORECASE):
        problems.append(f"{SECTION}.bank_name: {cfg['bank_name']!r} is a string's device name (string1 ...)")
    return problems


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
    SECTION, CONFIG_SCHEMA, "gateway.outputs.nut.face:NutService", check=config_problems)
