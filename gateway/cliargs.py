"""What every ``bmsgw`` command shares, the core's and the plugins' (``bmsgw_cli_commands``): the
``--config`` option, the file it names, and a gateway loaded from that file without opening a serial port."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Gateway


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config/-c FILE`` on a (sub)command; read it back with ``config_path(args)``."""
    from .app import default_config_path

    parser.add_argument("--config", "-c", default=None,
                        help=f"configuration file (default: $BMSGW_CONFIG, ./config.yaml or /etc/bmsgw/config.yaml; "
                             f"now {default_config_path()})")


def config_path(args: argparse.Namespace) -> str:
    """The configuration file a command works on: ``--config`` or the default."""
    from .app import default_config_path

    return args.config or default_config_path()


def unopened_ports(path: str) -> dict[str, str]:
    """A placeholder port for every bus of the config at ``path``, so that loading it opens no serial port
    (for ``port_overrides``); a config too broken to list its buses gives {} and fails later, with its error."""
    from .config import read_raw

    raw = read_raw(path)
    buses = raw.get("buses")
    if not isinstance(buses, list):
        buses = []
    return {b["name"]: "(not opened)" for b in buses if isinstance(b, dict) and isinstance(b.get("name"), str)}


def offline_gateway(path: str) -> Gateway:
    """The gateway the config at ``path`` describes, with no port opened and no simulator: for commands that
    read the config, the state files or the point map while (or instead of) ``bmsgw run`` runs."""
    from .app import Gateway

    return Gateway(path, simulator=False, port_overrides=unopened_ports(path))
