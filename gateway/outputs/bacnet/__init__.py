"""The BACnet/IP face (plugin): config section ``bacnet`` (off by default), the device service and
``bmsgw bacnet ede``; see README.md beside this file.

The parts: objects.py (which objects, their instance numbers; no BACnet library), store_objects.py (objects read
from the point store), stack.py (bacpypes3's stack, bounded), face.py (the service), ede.py (the EDE export).
bacpypes3 is imported only when the face runs or exports.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ... import fsutil
from ...hookspecs import hookimpl
from ...service import face_plugin
from .objects import section_problems
from .schema import SCHEMA, SECTION, address_problems

if TYPE_CHECKING:
    from ...config import Config


def config_problems(cfg: dict, gateway_config: Config, catalog) -> list[str]:
    if not cfg["enabled"]:
        return []
    problems = address_problems(cfg) + section_problems(cfg, catalog)
    from ...config import parse_networks
    from ...errors import ConfigError

    try:
        parse_networks(cfg["writes"]["allow_from"], str(gateway_config.path), f"{SECTION}.writes.allow_from")
    except ConfigError as exc:
        problems.append(f"{exc.path}: {exc.message}")
    return problems


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
    SECTION, SCHEMA, "gateway.outputs.bacnet.face:BacnetService", check=config_problems)


def cmd_ede(args) -> int:
    from ...cliargs import config_path, offline_gateway
    from .ede import ede_files, state_texts_path
    from .face import NOTIFICATION_CLASS, device_name
    from .objects import plan_objects

    gw = offline_gateway(config_path(args))
    cfg = gw.config.section(SECTION)
    plans = plan_objects(gw.pointmap, cfg)
    extra = [("notification-class", NOTIFICATION_CLASS, "Alarm notifications", "Recipients of the alarm "
              "binary-inputs' event notifications"), ("network-port", 1, "BACnet/IP port", "")]
    project = args.project or gw.config.section("site")["name"]
    ede, states = ede_files(plans, cfg["device"]["instance"], device_name(cfg, gw.config), project, extra)
    if args.output:
        out = Path(args.output)
        fsutil.atomic_write(out, ede)
        fsutil.atomic_write(state_texts_path(out), states)
        print(f"{out}: {len(plans) + 3} objects; state texts in {state_texts_path(out)}", file=sys.stderr)
    else:
        sys.stdout.write(ede)
    return 0


@hookimpl
def bmsgw_cli_commands(subparsers) -> None:
    from ...cliargs import add_config_option

    s = subparsers.add_parser("bacnet", help="BACnet/IP face tools (bmsgw bacnet ede)",
                              description="Tools of the BACnet/IP face (config section bacnet).")
    sub = s.add_subparsers(dest="bacnet_command", required=True, metavar="COMMAND")
    e = sub.add_parser("ede", help="write the EDE file set (Engineering Data Exchange) integrators import",
                       description="The B.I.G.-EU EDE 2.3 file of every object the BACnet face serves for this "
                                   "configuration (whether or not bacnet.enabled is on): one line per object "
                                   "with its type, instance, name, description, unit and state-text reference. "
                                   "With -o FILE the state texts go to FILE's <name>_StateTexts.csv beside it.")
    add_config_option(e)
    e.add_argument("--output", "-o", default=None, help="write to this file (e.g. site_EDE.csv) instead of stdout")
    e.add_argument("--project", default=None, help="PROJECT_NAME of the file (default: site.name)")
    e.set_defaults(func=cmd_ede)
