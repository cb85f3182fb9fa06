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

        Called once at start-up.  A family must take a free slot of its scope (profiles/points.yaml keeps
        cell 40-53, string 150-249, bank 100-124 and gateway 40-61 for third-party families); a clash stops
        start-up with a message naming both families.
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

        Called by the engine for every value it decodes, once any plugin implements this hook; ``words`` are
        the value's registers as received.  The first non-None result is the value (in the point's SI unit).
        Return None for registers that are not yours (check ``profile.family``), so the generic codec
        decodes them.  Must be fast and must not do I/O.
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

    @hookspec(firstresult=True)
    def bmsgw_encode_register(self, profile: DeviceProfile, register: RegisterSpec, value: float) -> list[int] | None:
        """The simulator's side of ``bmsgw_decode_register``: the registers a device sends for ``value``.

        Called by the built-in simulator for every value it serves, once any plugin implements this hook,
        so a vendor's quirky encoding can be simulated too.  Return None for registers that are not yours
        (the generic codec encodes them); otherwise exactly ``register.count`` words.  Must not do I/O.
        """
