"""String supervision (core): the one classifier of a string's state (float / charging / discharging / rest),
the current sensor's zero (auto-zero, manual zero), the thermal-runaway watch, the cell-to-cell temperature
spread and the current imbalance between parallel strings.

It runs whether or not the analytics do: alarms, analytics, SNMP (UPS-MIB on battery), MQTT and every other face
read what it publishes (``string.state``, ``string.on_battery_time``, the offset-corrected ``string.current``
with ``string.current_measured`` beside it, ``string.current_offset``, ``string.thermal_runaway`` ...).

Python API (the web/REST/Modbus command points call it)::

    from gateway import strings
    sup = strings.supervisor_for(gateway)      # None before the gateway is ready
    sup.zero_current(2, by="alice")            # string 2 carries no current now: zero its sensor
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from .classifier import ClassifierParams, StringClassifier, ZeroRefused, ZeroState
from .states import StringStates, string_states
from .supervisor import STATE_FILE, StringSupervisor

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger(__name__)

__all__ = ["ClassifierParams", "StringClassifier", "StringStates", "StringSupervisor", "ZeroRefused", "ZeroState",
           "SCHEMA", "string_states", "supervisor_for", "make_supervisor"]


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

_supervisors: weakref.WeakKeyDictionary[Gateway, StringSupervisor] = weakref.WeakKeyDictionary()


def supervisor_for(gateway: Gateway) -> StringSupervisor | None:
    """The gateway's string supervisor (made when the gateway is ready)."""
    return _supervisors.get(gateway)


def make_supervisor(gateway: Gateway, persist: bool = True) -> StringSupervisor:
    """A supervisor for the gateway's strings, its transforms installed on the gateway's store."""
    measured = [e.ref for e in gateway.pointmap if e.spec.source != "derived"]
    sup = StringSupervisor(gateway.topology.strings, gateway.config.section("string_state"), gateway.store,
                           string_states(gateway.catalog),
                           gateway.config.state_dir / STATE_FILE if persist else None, measured=measured)
    sup.install()
    return sup


class StringService:
    """Ticks the supervisor; saves the zero offsets at the stop."""

    name = "strings"

    def __init__(self, supervisor: StringSupervisor, interval_s: float) -> None:
        self.supervisor = supervisor
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None
        self.errors = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="strings")

    async def _run(self) -> None:
        while True:
            try:
                self.supervisor.tick(time.time())
            except Exception:
                self.errors += 1
                log.exception("string supervision: tick failed")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.supervisor.save()

    def endpoints(self) -> list[str]:
        path = self.supervisor.state_path
        return [f"zero offsets {path}"] if path is not None else []


# -- hooks ---------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"string_state": SCHEMA}


@hookimpl
def bmsgw_gateway_ready(gateway: Gateway) -> None:
    if gateway not in _supervisors:
        _supervisors[gateway] = make_supervisor(gateway)


@hookimpl
def bmsgw_services(gateway: Gateway) -> list:
    sup = _supervisors.get(gateway)
    if sup is None:
        return []
    return [StringService(sup, float(gateway.config.section("string_state").get("interval_s", 10)))]


@hookimpl
def bmsgw_config_reloaded(gateway: Gateway, sections: list[str]) -> None:
    sup = _supervisors.get(gateway)
    if sup is not None and "string_state" in sections:
        sup.reconfigure(gateway.config.section("string_state"))
        log.info("string supervision: the new string_state settings apply now")


@hookimpl
def bmsgw_status(gateway: Gateway) -> dict:
    sup = _supervisors.get(gateway)
    return {"strings": sup.status()} if sup is not None else {}
