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
    from .points import PointRef, PointSpec
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

    @hookspec(firstresult=True)
    def bmsgw_history_query(self, gateway: Gateway, ref: PointRef, start: float, end: float,
                            max_points: int) -> list[tuple[float, float | None]] | None:
        """Stored samples of one point between ``start`` and ``end`` (Unix seconds), oldest first.

        Called by the web face and the REST API (``/api/v1/history``) from a web server thread, not the event
        loop: the implementation must be thread-safe (e.g. its own SQLite connection per thread).  Return at
        most ``max_points`` ``(ts, value)`` pairs, choosing the resolution from the range (a rolled-up value
        is the mean of its interval); ``value`` None marks a gap.  Return None when this plugin keeps no
        history of the point; with no answer at all the web face serves the samples it buffered in memory.
        """

    @hookspec(firstresult=True)
    def bmsgw_alarms(self, gateway: Gateway, active: bool, limit: int) -> list[dict[str, Any]] | None:
        """The alarm table for the web page and ``/api/v1/alarms``: the active alarms (``active`` True) or the
        alarm log, newest first (raised and cleared ones, at most ``limit``).

        Called from a web server thread, not the event loop: read the alarm engine's state under its lock (or
        from copies).  Each alarm is a JSON-able dict with at least ``id``
        (str, stable while the alarm exists), ``severity`` ("warning" | "critical"), ``message`` (str),
        ``raised`` (Unix s), ``active`` (bool), and where known ``point``, ``string``, ``cell``,
        ``channel``, ``value``, ``threshold``, ``cleared`` (Unix s), ``acknowledged_by`` (str),
        ``acknowledged`` (Unix s).  Return None when no alarm engine is installed.
        """

    @hookspec(firstresult=True)
    def bmsgw_alarm_acknowledge(self, gateway: Gateway, alarm_id: str, user: str) -> bool | None:
        """Acknowledge an alarm on behalf of ``user`` (from the web page or ``POST /api/v1/alarms/{id}/
        acknowledge``).  Called from a web server thread (hand the change over to the event loop if the engine
        needs that).  Return True when the alarm was acknowledged (or already was), False when no active alarm
        has that id, None when no alarm engine is installed.
        """

    @hookspec
    def bmsgw_config_reloaded(self, gateway: Gateway, sections: list[str]) -> None:
        """The configuration was saved and reloaded while running (``gateway.config`` is the new one).

        Called in the event loop after the web page or ``PUT /api/v1/config`` saved a valid file, with the
        names of the sections that changed.  A plugin re-reads its section here (thresholds, notification
        targets ...) without restarting polling.  Changes to buses, strings, bank, plugins and simulator need
        a restart; the gateway keeps the running topology until then.
        """
