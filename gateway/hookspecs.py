"""Every hook of bmsgw, in one place.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names are hook names below;
it implements only the hooks, and only the arguments, it needs.  Built-in device families and northbound
faces are plugins too (see ``gateway.plugins.BUILTIN_PLUGINS``); third-party ones come from the entry-point
group ``bmsgw.plugins`` and from the folders named in the config's ``plugins.dirs``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from .points import PointRef

if TYPE_CHECKING:
    import argparse

    from .app import Gateway
    from .commands import Command
    from .config import Config
    from .engine import CommEvent
    from .notify.base import Notifier
    from .pointmap import Catalog
    from .points import PointSpec
    from .profiles import DeviceProfile, RegisterSpec
    from .service import Service

PROJECT = "bmsgw"
LEVEL = {"normal": 0, "warning": 1, "critical": 2}  # alarm severities, ordered
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Subcommands(Protocol):
    """What ``bmsgw_cli_commands`` gets: argparse's group of ``bmsgw`` sub-commands."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition of one alarm, as every notifier sees it (``bmsgw_alarm_event``), in the words of the
    alarm record (``gateway.alarms.model.alarm_record``: the web page, REST, the log).

    ``active`` is True when the alarm starts and False when it clears; ``ts`` is when that happened
    (wall-clock seconds) and ``raised`` when the alarm was raised (the same as ``ts`` for a new alarm).
    ``object`` names what is affected (``string 2 cell 37``, ``bus bus1``, ``room``), ``point`` the point
    family (``cell.ohmic_baseline_deviation``); ``value``/``threshold`` are in the family's unit (see the point
    catalog); ``message`` is the sentence for a person.  ``acknowledged_by`` (who) and ``acknowledged`` (when,
    wall-clock seconds) are set once someone acknowledged the alarm (``bmsgw_alarm_acknowledged`` carries the
    same record).  A face whose published format still says ``metric``/``acknowledged_ts`` maps the names at
    its boundary (see ``gateway.notify.webhook.posted_fields``).
    """

    alarm_id: int | str
    object: str
    point: str
    value: float | None
    threshold: float | None
    severity: str  # warning | critical
    message: str
    active: bool
    ts: float
    rule: str = ""
    unit: str = ""
    string: int | None = None
    cell: int | None = None
    channel: int | None = None
    raised: float | None = None
    acknowledged_by: str | None = None
    acknowledged: float | None = None

    @property
    def level(self) -> int:
        return LEVEL.get(self.severity, 0)

    @property
    def ref(self) -> PointRef | None:
        """The point the alarm is about, when it is about one point."""
        if self.string is None and self.cell is None and self.channel is None and "." not in self.point:
            return None
        return PointRef(self.point, self.string, self.cell, self.channel)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    def bmsgw_config_schema(self) -> dict[str, dict[str, Any]]:
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
        """The long-running parts this plugin brings (``gateway.service.Service``): faces, engines, uploaders.

        Called by ``Gateway.start`` (``bmsgw run``) once the store, map and engine exist, before polling; and
        by ``Gateway.reload`` for a plugin whose section was off and is now on.  Return [] when the plugin's
        config section turns it off.  The gateway owns what is returned: it registers each service in the
        plugin manager (so the service's own ``@hookimpl`` methods are called with its state), starts them in
        the order their ``after`` names ask for, calls ``reload`` when a section in their ``sections``
        changes, and stops them in reverse order.  A service that cannot start (a port in use) raises: start-up
        stops with its name, the address and the reason.  Construct cheaply; open, bind and spawn in ``start``.
        """

    @hookspec
    def bmsgw_commands(self, gateway: Gateway) -> list[Command]:
        """The writable point families this plugin carries out (``gateway.commands.Command``): an alarm
        acknowledge, a baseline reset, a current zero ...

        Called by ``Gateway.write`` (the one path of every write: Modbus, REST, the web page, SNMP SET) to find
        the owner of the point written; the gateway has already checked that the point is writable and exists,
        the writer's role and the value against the family's states and range.  Writable device registers
        (``writable: true`` in a profile) need no command: the engine writes them.  Return [] when off.
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
    def bmsgw_cli_commands(self, subparsers: Subcommands) -> None:
        """Add sub-commands to ``bmsgw``.  Each parser must ``set_defaults(func=callable(args) -> int)``."""

    @hookspec
    def bmsgw_status(self, gateway: Gateway) -> dict[str, Any]:
        """A plugin's status for ``/api/v1/status`` and the log: ``{name: json-able value}``."""

    @hookspec
    def bmsgw_alarm_event(self, gateway: Gateway, event: AlarmEvent) -> None:
        """An alarm was raised (``event.active`` True) or cleared (False).

        Called by ``gateway.alarms`` in the gateway's event loop, once per transition, with ``event`` carrying
        ``alarm_id, object, point, value, threshold, severity, message, active, ts, raised`` (see
        ``AlarmEvent`` above).  Notifiers (SNMP traps, MQTT, the ``gateway.notify`` router for
        e-mail, SMS, relay and webhook) implement it; each implementation is called on its own, so one that
        raises does not stop the others.  Must not block: queue the work.  The return value is ignored.
        """

    @hookspec
    def bmsgw_alarm_acknowledged(self, gateway: Gateway, event: AlarmEvent) -> None:
        """Someone acknowledged an active alarm (``event.acknowledged_by`` / ``event.acknowledged`` are set,
        ``event.active`` is True, ``event.ts`` is the acknowledgement time).

        Called by ``gateway.alarms`` in the gateway's event loop after an acknowledgement (the command points
        ``gateway.acknowledge_alarm``/``gateway.acknowledge_alarms`` written from any face).  The alarm relay
        uses it to silence the horn.  Must not block; the return value is ignored.
        """

    @hookspec
    def bmsgw_notifiers(self, gateway: Gateway) -> list[Notifier]:
        """Notifier objects this plugin brings (see ``gateway.notify.base.Notifier``): e-mail, SMS, relay, webhook.

        Called once by ``gateway.notify`` when the gateway is ready.  The router gives each notifier its own
        worker thread with retries and back-off: a *routed* notifier receives composed messages for the
        recipients of the routes (severities, quiet hours, digests), an unrouted one receives every alarm
        event of its severities.  Return [] when the plugin's config turns it off.
        """

    @hookspec(firstresult=True)
    def bmsgw_alarm_log(self, config: Config, start: float, end: float,
                        string: int | None) -> list[dict[str, Any]] | None:
        """The alarm log of a period, for reports (``bmsgw report``, ``gateway.reports.make_report``).

        Called once per report, in the report's process (the gateway itself may or may not be running: read
        what the alarm plugin persisted under ``config.state_dir``).  Return None when this plugin keeps no
        alarm log (the report then says "no alarm log"); otherwise the alarms raised in [start, end], oldest
        first, as dicts shaped as ``bmsgw_alarms`` returns them: at least ``raised`` (Unix s), ``cleared`` (Unix s
        or None), ``severity`` ("warning" or "critical") and ``message``, and where known ``point``, ``string``,
        ``cell``, ``value``, ``threshold``, ``acknowledged_by``, ``rule``.  ``string``: only that string's alarms and
        bank-wide ones.
        """

    @hookspec(firstresult=True)
    def bmsgw_encode_register(self, profile: DeviceProfile, register: RegisterSpec, value: float) -> list[int] | None:
        """The simulator's side of ``bmsgw_decode_register``: the registers a device sends for ``value``.

        Called by the built-in simulator for every value it serves, once any plugin implements this hook,
        so a vendor's quirky encoding can be simulated too.  Return None for registers that are not yours
        (the generic codec encodes them); otherwise exactly ``register.count`` words.  Must not do I/O.
        """

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
        ``acknowledged`` (Unix s), ``rule`` (the name of the rule that raised it).  Return None when no alarm
        engine is installed.
        """

    @hookspec(firstresult=True)
    def bmsgw_setpoints(self, gateway: Gateway) -> Any | None:
        """The alarm setpoints as a table, for the web face's setpoints page: an object with ``strings()``,
        ``table(string)`` (rows of one string's rules, or the room's with None), ``scopes(string)``,
        ``check(string, scope, changes)`` and ``edit(document, string, scope, changes, resets)`` (see
        ``gateway.alarms.setpoints.Setpoints``), computed from the running configuration.  Called from a web
        server thread.  Return None when no alarm engine is installed.
        """

    @hookspec
    def bmsgw_check_config(self, gateway_config: Config, catalog: Catalog) -> list[str]:
        """What is wrong in this plugin's config section beyond its JSON schema (which the core checks
        already): references to unknown point families, setpoints in the wrong order, strings or channels
        that do not exist ...

        Called by ``bmsgw check-config``, when the gateway starts (before ``bmsgw_gateway_ready``) and before
        the web page saves a configuration, with the configuration (sections defaults-filled, its topology)
        and the point catalog (built-in, profile and plugin families).  Only look: open no file, port or
        thread.  Return every problem found, each as ``"key.path: what is wrong"`` (e.g.
        ``"alarms.rules.cell_voltage_float.high: the critical setpoint must be above the warning setpoint"``),
        [] when the section is fine.  Any problem makes check-config list them all and exit 2, keeps the
        gateway from starting and the web page from saving.
        """
