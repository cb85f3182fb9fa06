"""String supervision (core): the one classifier of a string's state (float / charging / discharging / rest),
the current sensor's zero (auto-zero, manual zero), the thermal-runaway watch, the cell-to-cell temperature
spread and the current imbalance between parallel strings.

It runs whether or not the analytics do: alarms, analytics, SNMP (UPS-MIB on battery), MQTT and every other face
read what it publishes (``string.state``, ``string.on_battery_time``, the offset-corrected ``string.current``
with ``string.current_measured`` beside it, ``string.current_offset``, ``string.thermal_runaway`` ...).

The manual zero is the writable command point ``string.zero_current`` (write 1; Modbus, REST, the web page,
SNMP SET through ``Gateway.write``, for administrators), or in Python::

    from gateway import strings
    sup = strings.supervisor_for(gateway)      # None while the gateway is not running
    sup.zero_current(2, by="alice")            # string 2 carries no current now: zero its sensor
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ..commands import Command, Principal, WriteFailed
from ..hookspecs import hookimpl
from ..pointmap import require_position
from ..points import PointRef
from ..service import ReloadResult, Service
from .classifier import ClassifierParams, StringClassifier, ZeroRefused, ZeroState
from .states import StringStates, string_states
from .supervisor import STATE_FILE, StringSupervisor

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import Config

log = logging.getLogger(__name__)

__all__ = ["SCHEMA", "ClassifierParams", "StringClassifier", "StringService", "StringStates", "StringSupervisor",
           "ZeroRefused", "ZeroState", "make_supervisor", "string_states", "supervisor_for"]


def _n(default: float, minimum: float, maximum: float, desc: str = "") -> dict:
    out: dict = {"type": "number", "minimum": minimum, "maximum": maximum, "default": default}
    if desc:
        out["description"] = desc
    return out


SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "interval_s": _n(10, 1, 600, "how often the runaway watch, the temperature spread and the current "
                                     "imbalance are computed"),
        "float_min_v_per_cell": _n(2.18, 2.0, 2.4, "at or above (V per 2 V cell): a charger holds the string, "
                                                   "which is then floating or charging, never discharging"),
        "charge_above_c": _n(0.01, 0.0001, 1, "charging above this current (x capacity in Ah); at float voltage "
                                             "below it: float"),
        "discharge_below_c": _n(0.005, 0.0001, 1, "discharging below minus this current (x capacity), under "
                                                  "float voltage"),
        "falling_v_per_cell_h": _n(0.02, 0.001, 10, "a voltage falling faster (V per cell per hour) confirms a "
                                                    "discharge (or says one, without a current sensor)"),
        "deadband_a": _n(0.3, 0, 100, "a corrected current within +-this reads 0 A"),
        "imbalance_min_c": _n(0.02, 0.001, 1, "parallel strings' currents are compared above this mean current "
                                              "(x capacity)"),
        "current_zero": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "auto": {"type": "boolean", "default": True,
                         "description": "learn the hall sensor's zero offset while the string floats"},
                "max_offset_a": _n(10, 0, 100, "the offset is never learnt beyond this (1 % of a +-1000 A clamp)"),
                "learn_rate_a_per_h": _n(6.0, 0.001, 100, "how fast the offset moves until it is known"),
                "track_rate_a_per_h": _n(0.1, 0.0001, 10, "how fast it follows the sensor's drift once known"),
                "float_settle_s": _n(3600, 0, 604800, "learning waits this long on float after a charge or discharge"),
                "float_current_ma_per_ah": _n(0.5, 0, 100, "the float current assumed while learning (mA per Ah), "
                                                           "until a manual zero lets the gateway measure it"),
            },
        },
        "thermal_runaway": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": True},
                "float_current_factor": _n(3.0, 1.1, 100, "float current above this many times its normal"),
                "min_excess_c": _n(0.001, 0, 1, "... and above the normal by at least this (x capacity)"),
                "window_s": _n(1800, 60, 86400, "current and temperature rising together over this time"),
                "current_rise_c": _n(0.0005, 0, 1, "by more than this current (x capacity)"),
                "temperature_rise_c": _n(0.5, 0.05, 50, "and the batteries' temperature over ambient by more than "
                                                        "this (C)"),
            },
        },
    },
}

def supervisor_for(gateway: Gateway) -> StringSupervisor | None:
    """The gateway's string supervisor while it runs."""
    svc = gateway.service("strings")
    return svc.supervisor if isinstance(svc, StringService) else None


def make_supervisor(gateway: Gateway, persist: bool = True) -> StringSupervisor:
    """A supervisor for the gateway's strings, its transforms installed on the gateway's store."""
    measured = [e.ref for e in gateway.pointmap if e.spec.source != "derived"]
    sup = StringSupervisor(gateway.topology.strings, gateway.config.section("string_state"), gateway.store,
                           string_states(gateway.catalog),
                           gateway.config.state_dir / STATE_FILE if persist else None, measured=measured)
    sup.install()
    return sup


class StringService(Service):
    """The string supervision of one gateway: its transforms on the store from start to stop, the tick, the
    saved zero offsets, and the ``string.zero_current`` command."""

    name = "strings"
    sections = ("string_state",)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.supervisor: StringSupervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self.errors = 0

    async def start(self) -> None:
        self.supervisor = make_supervisor(self.gateway)
        self._task = asyncio.create_task(self._run(self.supervisor), name="strings")

    async def _run(self, supervisor: StringSupervisor) -> None:
        while True:
            try:
                supervisor.tick(time.time())
            except Exception:
                self.errors += 1
                log.exception("string supervision: tick failed")
            await asyncio.sleep(float(supervisor.section["interval_s"]))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.supervisor is not None:
            self.supervisor.save()
            self.supervisor.uninstall()

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """New thresholds, deadband, zero and runaway settings apply at once; each string keeps its zero."""
        if self.supervisor is not None:
            self.supervisor.reconfigure(config.section("string_state"))
        return ReloadResult()

    def status(self) -> dict[str, Any]:
        sup = self.supervisor
        return {"strings": sup.status(), "errors": self.errors} if sup is not None else {}

    def endpoints(self) -> list[str]:
        path = self.supervisor.state_path if self.supervisor is not None else None
        return [f"zero offsets {path}"] if path is not None else []

    @hookimpl
    def bmsgw_commands(self) -> list[Command]:
        """``string.zero_current`` (write 1): the string carries no current now (its breaker open, the clamp
        off the cable): its sensor's present reading becomes its zero offset.  For administrators."""
        def zero(ref: PointRef, value: float, by: Principal) -> str:
            sup = self.supervisor
            if sup is None:
                raise WriteFailed("the string supervision is not running")
            string = require_position(ref.string, ref, "string")
            offset = sup.zero_current(string, by=by.name or by.via)  # ZeroRefused is a ValueError: refused
            return f"string {string}: current sensor zeroed, offset {offset:+.2f} A"

        return [Command("string.zero_current", zero, role="admin"),
                Command("string.start_ohmic_test", self._start_ohmic_test, role="operator")]

    async def _start_ohmic_test(self, ref: PointRef, value: float, by: Principal) -> str:
        """``string.start_ohmic_test``: 0 every battery of the string, N battery N.  Each battery's sensor is
        told to test now (its write-only ``cell.ohmic_test`` register); the string's slow registers are read
        at the next cycle, so the results come in seconds, not at the next slow period."""
        from ..engine import DeviceWriteError

        string = require_position(ref.string, ref, "string")
        cells = self.gateway.topology.string(string).cells
        wanted = range(1, cells + 1) if int(value) == 0 else [int(value)]
        if int(value) > cells:
            raise ValueError(f"string {string} has {cells} batteries, not {int(value)}")
        engine = self.gateway.engine
        targets = [PointRef("cell.ohmic_test", string, c) for c in wanted]
        targets = [t for t in targets if engine.writable(t) is not None]
        if not targets:
            raise ValueError(f"no sensor of string {string} can run an ohmic test on demand (its profile has no "
                             "writable cell.ohmic_test register)")
        failed: list[str] = []
        for target in targets:
            try:
                await engine.write_point(target, 1)
            except DeviceWriteError as exc:
                failed.append(f"battery {target.cell}: {exc}")
        if len(failed) == len(targets):
            raise WriteFailed(f"string {string}: no sensor took the ohmic test request ({failed[0]})")
        engine.read_slow_soon(targets)
        started = len(targets) - len(failed)
        what = f"battery {targets[0].cell}" if len(targets) == 1 else f"{started} of {len(targets)} batteries"
        return f"string {string}: ohmic test started on {what}" + (f"; failed: {'; '.join(failed[:5])}"
                                                                    if failed else "")


# -- hooks ---------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"string_state": SCHEMA}


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    return [StringService(gateway)]
