"""Every hook of bmsgw, in one place.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names are hook names below;
it implements only the hooks, and only the arguments, it needs.  Built-in device families and northbound
faces are plugins too (see ``gateway.plugins.BUILTIN_PLUGINS``); third-party ones come from the entry-point
group ``bmsgw.plugins`` and from the folders named in the config's ``plugins.dirs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

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


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm raised or cleared, as announced by ``bmsgw_alarm_event``.

    ``id`` is the alarm engine's stable identifier (the same in the raise and the clear); ``object`` says what
    the alarm is about ("string 2 cell 37", "bank", "bus1"); ``metric`` is the point family or condition
    ("cell.ohmic", "comm.lost"); ``value``/``threshold`` are in the point's SI unit (``unit``; None when not
    applicable); ``severity`` is "info", "warning" or "critical"; ``text`` is the sentence for a person;
    ``ref`` the point concerned, when there is one; ``ts`` the wall-clock time of the transition.
    """

    id: str
    object: str
    metric: str
    value: float | None
    threshold: float | None
    severity: str
    text: str
    raised: bool
    ts: float
    unit: str | None = None
    ref: PointRef | None = None


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
    def bmsgw_modbus_write_handlers(self, gateway: Gateway) -> list[ModbusWriteHandler]:
        """Holding registers a plugin accepts Modbus TCP writes to (a command such as an alarm acknowledge).

        Called once by the Modbus TCP face when it starts.  Writes reach a handler only when
        ``modbus_tcp.writes.enabled`` is on and the client is in ``modbus_tcp.writes.allow_from``; everything
        else is refused with exception 02 and logged.  A register may not lie inside the point map (writable
        points of the map, like ``io.do``, are written to their device by the face itself) nor be claimed
        twice.  Reserved command registers (README, "Modbus TCP"): ``MODBUS_ALARM_ACK_REGISTER`` (9000) alarm
        acknowledge, ``MODBUS_BASELINE_RESET_REGISTER`` (9100) + (string - 1) a string's baseline reset.
        A command register reads 0 over FC3 and is not in the input table.
        """

    @hookspec
    def bmsgw_alarm_event(self, gateway: Gateway, event: AlarmEvent) -> None:
        """An alarm was raised (``event.raised``) or cleared.

        Called by the alarm engine once per transition, in the gateway's event loop (another thread may use
        ``gateway.loop.call_soon_threadsafe``).  Notifiers (SNMP traps/informs, e-mail, ...) and the SNMP
        active-alarm table implement it; an implementation must not block: queue the delivery and return.
        The return value is ignored.  ``event`` is an ``AlarmEvent`` (or any object with its attributes).
        """


# Command registers reserved in the Modbus TCP holding table (README, "Modbus TCP"); the modules that act on them
# register a ModbusWriteHandler at these addresses through ``bmsgw_modbus_write_handlers``.
MODBUS_ALARM_ACK_REGISTER = 9000  # write 1: acknowledge every active alarm
MODBUS_BASELINE_RESET_REGISTER = 9100  # + (string - 1); write a battery number: reset its ohmic baseline


@dataclass(frozen=True, slots=True)
class ModbusWriteHandler:
    """A writable holding register (or ``count`` consecutive ones) and what a write to it does.

    ``handler(words, client)`` gets the written words (``count`` of them) and the client's IP address; it may
    be a coroutine function (run in the gateway's event loop) and should be quick.  It returns None when done,
    raises ``ValueError`` for a value it does not accept (the client gets exception 03), any other exception
    for a failure (exception 04, logged).
    """

    address: int  # 0-based holding register address
    name: str  # short id for logs and the register list, e.g. "alarm.acknowledge"
    description: str
    handler: Callable[[list[int], str], Awaitable[None] | None]
    count: int = 1
