"""Every hook of bmsgw, in one place.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names are hook names below;
it implements only the hooks, and only the arguments, it needs.  Built-in device families and northbound
faces are plugins too (see ``gateway.plugins.BUILTIN_PLUGINS``); third-party ones come from the entry-point
group ``bmsgw.plugins`` and from the folders named in the config's ``plugins.dirs``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import argparse

    from .app import Gateway
    from .engine import CommEvent
    from .points import PointSpec
    from .profiles import DeviceProfile, RegisterSpec

PROJECT = "bmsgw"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Service(Protocol):
    """A long-running face (a server, an uploader).  ``bmsgw run`` starts it after the engine, in the
    gateway's event loop, and stops it on shutdown."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def endpoints(self) -> list[str]:
        """Human-readable places it listens or sends to, e.g. ``modbus-tcp://127.0.0.1:5020``."""
        ...


class GatewaySpecs:
    @hookspec
    def bmsgw_profile_dirs(self) -> list[Path]:
        """Folders of YAML device profiles this plugin brings.

        Called once by the plugin manager before the config is read.  Site folders (the config's
        ``plugins.profile_dirs``) are read after these, so a site profile with the same file name wins.
        """

    @hookspec
    def bmsgw_point_families(self) -> list[PointSpec]:
        """Point families this plugin adds to the catalog (typically values it derives).

        Called once at start-up.  A family must take a free slot of its scope (see profiles/points.yaml);
        a clash stops start-up with a message naming both families.
        """

    @hookspec
    def bmsgw_config_schema(self) -> dict[str, dict]:
        """Config sections this plugin owns: ``{section name: JSON Schema}``.

        Called once before the config file is validated; ``default`` values in the schema are filled in, so
        a face reads ``gateway.config.section(name)`` without checking for missing keys.
        """

    @hookspec(firstresult=True)
    def bmsgw_decode_register(self, profile: DeviceProfile, register: RegisterSpec, words: list[int]) -> float | None:
        """Decode a register the generic codec cannot (a vendor's quirk).

        Called by the engine for every value of a profile whose ``family`` a plugin claims; the first
        non-None result is the value.  Return None to leave the register to the generic codec.
        Must be fast and must not do I/O.
        """

    @hookspec
    def bmsgw_services(self, gateway: Gateway) -> list[Service]:
        """Long-running faces to start with ``bmsgw run`` (after the engine is created, before polling).

        Return [] when the plugin's config section turns it off.
        """

    @hookspec
    def bmsgw_gateway_ready(self, gateway: Gateway) -> None:
        """Called once the point store, point map and engine exist, before services start: the place to
        subscribe to the store (``gateway.store.subscribe``) for derived values, alarms or history."""

    @hookspec
    def bmsgw_comm_event(self, gateway: Gateway, event: CommEvent) -> None:
        """A device stopped answering (``event.lost``) or answers again.  Called by the engine in the event
        loop, once per transition; must not block."""

    @hookspec
    def bmsgw_cli_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Add sub-commands to ``bmsgw``.  Each parser must ``set_defaults(func=callable(args) -> int)``."""

    @hookspec
    def bmsgw_status(self, gateway: Gateway) -> dict[str, Any]:
        """A plugin's status for ``/api/v1/status`` and the log: ``{name: json-able value}``."""

    @hookspec
    def bmsgw_provision(self, gateway: Gateway) -> list[Path]:
        """Create the secrets, keys and certificates this plugin needs, once, before the service first runs.

        Called by ``bmsgw provision`` (the Debian package's postinst runs it as the service user on every
        configure, after the state directory exists).  Create only what is missing under
        ``gateway.config.state_dir`` (or a path from the plugin's config section) and never replace an
        existing file, so upgrades keep the operator's keys; write secrets readable by the owner only.
        Return the paths created by this call ([] when everything was already there).
        """
