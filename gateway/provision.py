"""``bmsgw provision``: create what the faces need before the first start (secrets, keys, certificates).

The Debian package's postinst runs it as the service user after creating the state directory; each face
that needs a secret implements the ``bmsgw_provision`` hook and creates only what is missing, so running it
again (an upgrade, a reinstall) never replaces an operator's key or certificate.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import GatewayError
from .hookspecs import hookimpl

log = logging.getLogger(__name__)


def provision(config_path: str) -> list[Path]:
    """Make sure the state directory exists and is writable, then let every plugin create its secrets."""
    from .cliargs import offline_gateway

    gw = offline_gateway(config_path)
    state = gw.config.state_dir
    try:
        state.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise GatewayError(f"cannot create the state directory {state}: {exc.strerror}") from None
    if not os.access(state, os.W_OK | os.X_OK):
        raise GatewayError(f"the state directory {state} is not writable by this user (uid {os.getuid()})")
    created: list[Path] = []
    for result in gw.pm.hook.bmsgw_provision(gateway=gw):
        created.extend(Path(p) for p in result or [])
    return created


def cmd_provision(args) -> int:
    from .cliargs import config_path

    path = config_path(args)
    created = provision(path)
    for p in created:
        print(f"created {p}")
    if not created:
        print(f"{path}: nothing to create")
    return 0


@hookimpl
def bmsgw_cli_commands(subparsers) -> None:
    from .cliargs import add_config_option

    s = subparsers.add_parser(
        "provision", help="create missing secrets, keys and certificates in the state directory",
        description="Create the state directory and let every face create the secrets, keys and certificates "
                    "it needs. Only what is missing is created; existing files are never replaced. The Debian "
                    "package runs this as the service user when it is installed or upgraded.")
    add_config_option(s)
    s.set_defaults(func=cmd_provision)
