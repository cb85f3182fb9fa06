"""UPS-MIB (RFC 1628) for the battery bank: the groups a battery monitor can fill.

- ``upsIdent``: manufacturer, model, versions, name, attached devices (``snmp.ups.ident``, the package).
- ``upsBattery``: the whole group.  The "UPS battery" is the bank, its strings in parallel: charge = the lowest
  string's SOC, current = the strings' currents summed (positive charging, negative discharging), on battery =
  a string the core string-state classifier (``string.state``) says discharges.  Minutes remaining are always
  there once a SOC is known (``UpsBattery.minutes``); ``batteryLow`` is the run time against
  ``upsConfigLowBattTime``.
- ``upsOutputSource`` (normal / battery): the one object of the output group the batteries tell.
- ``upsAlarm``: ``upsAlarmsPresent`` and ``upsAlarmTable`` rows for the well-known alarms that apply
  (``UpsAlarms``), with ``upsTrapAlarmEntryAdded``/``Removed`` and ``upsTrapOnBattery``.
- ``upsConfigLowBattTime``: read-write through ``Gateway.write`` (the command point
  ``gateway.ups_low_battery_time``), kept by ``LowBattTime`` in the state folder.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import __version__, fsutil
from ...points import PointRef, Quality, Reading
from ...strings.states import string_states
from . import ber
from .tree import Section, Value

if TYPE_CHECKING:
    from .sections import AgentData

log = logging.getLogger(__name__)

UPS_MIB = (1, 3, 6, 1, 2, 1, 33)
UPS_IDENT = UPS_MIB + (1, 1)
UPS_BATTERY = UPS_MIB + (1, 2)
UPS_OUTPUT_SOURCE = UPS_MIB + (1, 4, 1)
UPS_ALARM = UPS_MIB + (1, 6)
UPS_ALARMS_PRESENT = UPS_ALARM + (1,)
UPS_ALARM_ENTRY = UPS_ALARM + (2, 1)
UPS_WELL_KNOWN = UPS_ALARM + (3,)
UPS_CONFIG_LOW_BATT_TIME = UPS_MIB + (1, 9, 7)
UPS_TRAPS = UPS_MIB + (2,)
TRAP_ON_BATTERY, TRAP_ALARM_ADDED, TRAP_ALARM_REMOVED = UPS_TRAPS + (1,), UPS_TRAPS + (3,), UPS_TRAPS + (4,)
LOW_BATT_POINT = "gateway.ups_low_battery_time"

# upsBatteryStatus, upsOutputSource
UNKNOWN, NORMAL, LOW, DEPLETED = 1, 2, 3, 4
SOURCE_NORMAL, SOURCE_BATTERY = 3, 5

# the well-known alarms (upsWellKnownAlarms.N) this gateway raises
BATTERY_BAD, ON_BATTERY, LOW_BATTERY, DEPLETED_BATTERY, TEMP_BAD, COMMUNICATIONS_LOST = 1, 2, 3, 4, 5, 20
ALARM_NAMES = {BATTERY_BAD: "upsAlarmBatteryBad", ON_BATTERY: "upsAlarmOnBattery", LOW_BATTERY: "upsAlarmLowBattery",
               DEPLETED_BATTERY: "upsAlarmDepletedBattery", TEMP_BAD: "upsAlarmTempBad",
               COMMUNICATIONS_LOST: "upsAlarmCommunicationsLost"}
# alarm-engine rules (gateway/alarms/rules.py) behind an alarm of any severity
RULE_ALARMS = {
    "cell_temperature": TEMP_BAD, "cell_temperature_ambient": TEMP_BAD, "cell_temperature_spread": TEMP_BAD,
    "ambient_temperature": TEMP_BAD, "string_thermal_runaway": TEMP_BAD,
    "cell_comm": COMMUNICATIONS_LOST, "string_comm": COMMUNICATIONS_LOST, "bus_comm": COMMUNICATIONS_LOST,
    "device_comm": COMMUNICATIONS_LOST,
}
# ... and rules whose critical level is a battery's replace threshold (SOH below 80 %, the ohmic rise past
# analytics.thresholds.replace_pct, the datasheet's absolute limit)
REPLACE_RULES = frozenset({"cell_soh", "string_soh", "cell_ohmic", "cell_ohmic_baseline",
                           "cell_ohmic_baseline_critical", "cell_ohmic_average"})
MAX_ALARM_ID = 2147483647
LOW_BATT_FILE = "ups-mib.json"
ON_BATTERY_RESEND_S = 60.0  # RFC 1628: upsTrapOnBattery is resent at one-minute intervals


def _text(value: str, limit: int) -> bytes:
    return value.encode("utf-8")[:limit]


def _good(reading: Reading | None) -> float | None:
    """The reading's value when it is good, else None (as ``sections.good``)."""
    if reading is None or reading.quality is not Quality.GOOD or reading.value is None:
        return None
    return reading.value


# -- upsConfigLowBattTime ----------------------------------------------------------------------------------------
class LowBattTime:
    """upsConfigLowBattTime in minutes: ``snmp.ups.low_minutes_remaining``, or the last value written through
    ``gateway.ups_low_battery_time`` (SNMP SET ...), kept in ``<state_dir>/ups-mib.json`` with the configured
    value it overrode.  Editing the configured value makes that the setting again (the later word wins)."""

    def __init__(self, path: Path | None, configured: float) -> None:
        self.path = path
        self.configured = self._minutes(configured)
        self.minutes = self.configured
        saved: dict[str, Any] = {}
        if path is not None:
            try:
                saved = json.loads(path.read_text())
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                log.warning("UPS-MIB settings %s unreadable (%s); upsConfigLowBattTime is the configured %d min",
                            path, exc, self.configured)
        if saved.get("configured") == self.configured and isinstance(saved.get("low_batt_time_min"), int):
            self.minutes = self._minutes(saved["low_batt_time_min"])

    @staticmethod
    def _minutes(value: float) -> int:
        """RFC 1628: a value between supported ones rounds up; at least one minute."""
        return max(1, min(1440, math.ceil(value)))

    def set(self, minutes: float) -> int:
        self.minutes = self._minutes(minutes)
        self._save()
        return self.minutes

    def reconfigure(self, configured: float) -> None:
        value = self._minutes(configured)
        if value != self.configured:
            self.configured = self.minutes = value
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fsutil.atomic_write(self.path, json.dumps({"low_batt_time_min": self.minutes,
                                                       "configured": self.configured}) + "\n")
        except OSError as exc:
            log.warning("cannot save upsConfigLowBattTime in %s (%s): it returns to %d min at the next start",
                        self.path, exc, self.configured)


# -- upsIdent ----------------------------------------------------------------------------------------------------
def default_model(data: AgentData) -> str:
    """``4 x 120 x 2V 500Ah VRLA``: the bank's strings and batteries."""
    groups: dict[tuple[int, str], int] = {}
    for s in data.topology.strings:
        key = (s.cells, s.battery.model)
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{n} x {cells} x {model}" for (cells, model), n in groups.items()) or "battery bank"


def ident_values(data: AgentData) -> dict[int, str]:
    ident = data.ups["ident"]
    return {1: ident["manufacturer"] or "bmsgw",
            2: ident["model"] or default_model(data),
            3: __version__,
            4: f"bmsgw {__version__}",
            5: ident["name"] or data.system["name"] or data.site_name,
            6: ident["attached_devices"]}


def ident_section(data: AgentData) -> Section:
    sec = Section()
    sizes = {1: 31, 2: 63, 3: 63, 4: 63, 5: 63, 6: 63}
    for col, value in ident_values(data).items():
        sec.static(UPS_IDENT + (col,), (0,), (ber.OCTETS, _text(value, sizes[col])))
    return sec


# -- upsBattery --------------------------------------------------------------------------------------------------
class UpsBattery:
    """The battery group for the whole bank, from the strings' points (see the module's docstring)."""

    def __init__(self, data: AgentData) -> None:
        self.data = data
        self.strings = [(s.id, s.battery.capacity_ah) for s in data.topology.strings]
        self.cells = [(s.id, c) for s in data.topology.strings for c in range(1, s.cells + 1)]
        self.discharging_code = string_states(data.pointmap.catalog).discharging
        self._refs: dict[tuple[str, int | None], PointRef] = {}  # made once: a request reads a few dozen

    def _value(self, point: str, string: int | None = None) -> float | None:
        key = (point, string)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = PointRef(point, string)
        return _good(self.data.store.get(ref))

    def _strings(self, point: str) -> list[float]:
        return [v for v in (self._value(point, s) for s, _cap in self.strings) if v is not None]

    def _soc(self, string: int) -> float | None:
        soc = self._value("string.soc", string)
        return soc if soc is not None else self._value("string.sensor_soc", string)

    def charge(self) -> float | None:
        values = [v for v in (self._soc(s) for s, _cap in self.strings) if v is not None]
        return min(values) if values else None

    def discharging_strings(self) -> set[int]:
        """The strings the string supervision classifies as discharging (``string.state``)."""
        code = self.discharging_code
        return {s for s, _cap in self.strings if (v := self._value("string.state", s)) is not None and int(v) == code}

    def discharging(self) -> bool:
        return bool(self.discharging_strings())

    def state_known(self) -> bool:
        return bool(self._strings("string.state"))

    def _peukert_hours(self, remaining_ah: float, amps: float, capacity_ah: float) -> float:
        """Hours ``remaining_ah`` lasts at ``amps`` (Peukert-corrected against the rated current)."""
        rated = capacity_ah / self.data.rated_hours
        effective = amps * (amps / rated) ** (self.data.peukert - 1.0)
        return remaining_ah / effective

    def minutes(self) -> float | None:
        """Estimated minutes to depletion under the present load (None while no string's SOC is known).

        Per string: charge remaining = SOC x capacity x SOH over its share of the load, Peukert-corrected.
        The load on battery is each discharging string's measured current (else the analytics' estimate at
        the present current); on float it is ``snmp.ups.typical_load_a`` shared in proportion to capacity,
        else the analytics' estimate at the last discharge's current, else the rated (C20) current.  The
        bank's run time is its shortest string's."""
        on = self.discharging_strings()
        typical = self.data.ups["typical_load_a"]
        known = [(s, cap, soc) for s, cap in self.strings if (soc := self._soc(s)) is not None]
        if not known:
            return None
        total_cap = sum(cap for _s, cap, _soc in known) or 1.0
        hours: list[float] = []
        for s, cap, soc in known:
            if on and s not in on:
                continue  # a string that carries no current now (breaker open) does not end the run
            soh = self._value("string.soh", s)
            remaining = max(soc, 0.0) / 100.0 * cap * (soh / 100.0 if soh else 1.0)
            amps: float | None = None
            if on:
                current = self._value("string.current", s)
                if current is not None and current < 0:
                    amps = -current
            elif typical:
                amps = typical * cap / total_cap
            if amps is None:
                runtime = self._value("string.runtime_remaining", s)
                if runtime is not None:
                    hours.append(runtime / 3600.0)
                    continue
                amps = typical * cap / total_cap if typical else cap / self.data.rated_hours
            hours.append(self._peukert_hours(remaining, amps, cap) if amps > 0 else math.inf)
        finite = [h for h in hours if math.isfinite(h)]
        return min(finite) * 60.0 if finite else None

    @staticmethod
    def served_minutes(minutes: float) -> int:
        """upsEstimatedMinutesRemaining is a PositiveInteger: whole minutes, at least 1."""
        return max(1, min(int(minutes), 2147483647))

    def status_code(self) -> int:
        """RFC 1628: batteryLow when the run time is at or below upsConfigLowBattTime, batteryDepleted when the
        batteries could not carry the load (under a minute left, or the charge at the depleted level)."""
        charge = self.charge()
        minutes = self.minutes()
        if charge is None or minutes is None:
            return UNKNOWN
        ups = self.data.ups
        if minutes < 1.0 or charge <= ups["depleted_charge_percent"]:
            return DEPLETED
        low_charge = ups["low_charge_percent"]
        if self.served_minutes(minutes) <= self.data.low_batt_time() or (low_charge is not None
                                                                         and charge <= low_charge):
            return LOW
        return NORMAL

    # -- the objects ------------------------------------------------------------------------------------
    def status(self) -> Value:
        return ber.INTEGER, self.status_code()

    def seconds_on_battery(self) -> Value:
        on = self.discharging_strings()
        if not on:
            return ber.INTEGER, 0
        times = [v for v in (self._value("string.on_battery_time", s) for s in on) if v is not None]
        return ber.INTEGER, int(max(times)) if times else 0

    def minutes_remaining(self) -> Value | None:
        minutes = self.minutes()
        return None if minutes is None else (ber.INTEGER, self.served_minutes(minutes))

    def charge_remaining(self) -> Value | None:
        charge = self.charge()
        return None if charge is None else (ber.INTEGER, max(0, min(100, round(charge))))

    def voltage(self) -> Value | None:
        v = self._value("bank.voltage")
        if v is None:
            values = self._strings("string.voltage")
            v = sum(values) / len(values) if values else None
        return None if v is None else (ber.INTEGER, max(0, round(v * 10)))

    def current(self) -> Value | None:
        values = self._strings("string.current")
        return (ber.INTEGER, round(sum(values) * 10)) if values else None

    def temperature(self) -> Value | None:
        t = self._value("io.ambient_temperature")
        if t is None:
            store = self.data.store
            temps = [v for v in (_good(store.get(PointRef("cell.temperature", s, c))) for s, c in self.cells)
                     if v is not None]
            t = max(temps) if temps else None
        return None if t is None else (ber.INTEGER, round(t))

    def output_source(self) -> Value | None:
        if not self.state_known():
            return None
        return ber.INTEGER, SOURCE_BATTERY if self.discharging() else SOURCE_NORMAL


def ups_section(data: AgentData, battery: UpsBattery | None = None) -> Section:
    """Ident, battery, output source and upsConfigLowBattTime (the alarm group is ``UpsAlarms``')."""
    sec = ident_section(data)
    ups = battery or UpsBattery(data)
    for col, fn in ((1, ups.status), (2, ups.seconds_on_battery), (3, ups.minutes_remaining),
                    (4, ups.charge_remaining), (5, ups.voltage), (6, ups.current), (7, ups.temperature)):
        sec.add(UPS_BATTERY + (col,), (0,), fn, volatile=True)
    sec.add(UPS_OUTPUT_SOURCE, (0,), ups.output_source, volatile=True)
    sec.add(UPS_CONFIG_LOW_BATT_TIME, (0,), lambda: (ber.INTEGER, data.low_batt_time()), volatile=True)
    return sec


# -- upsAlarm ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpsAlarmRow:
    alarm_id: int  # upsAlarmId: the row's index
    alarm: int  # upsWellKnownAlarms.N
    onset: float  # when the condition began (wall clock)

    @property
    def descr(self) -> tuple[int, ...]:
        return UPS_WELL_KNOWN + (self.alarm,)


Notify = Callable[[tuple[int, ...], list[tuple[tuple[int, ...], Value]], str], None]


class UpsAlarms:
    """The alarm conditions of the bank in RFC 1628's terms, as rows of ``upsAlarmTable``.

    ``evaluate()`` (every second, and on each alarm event) computes the conditions: on battery, low and
    depleted battery from ``UpsBattery``; battery bad, temperature bad and communications lost from the alarm
    engine's active alarms (``observe``).  A row is added when a condition starts and removed when it ends,
    each with ``upsTrapAlarmEntryAdded``/``Removed`` through ``notify``; ``upsTrapOnBattery`` goes out when the
    bank goes on battery and every minute while it stays there.  The onset (upsAlarmTime) is when the
    condition began: the alarm's raise time, the discharge's start; so a condition older than the agent reads
    0, as RFC 1628 asks.  Low and depleted battery follow an estimate that wavers around the threshold: their
    rows go only after ``CLEAR_AFTER_S`` without the condition (RFC 1628: a notification no more often than
    every five seconds).
    """

    CLEAR_AFTER_S = 5.0

    def __init__(self, data: AgentData, battery: UpsBattery, notify: Notify | None = None,
                 send_traps: bool = True) -> None:
        self.data = data
        self.battery = battery
        self.notify = notify
        self.send_traps = send_traps
        self.rows: dict[int, UpsAlarmRow] = {}  # by well-known alarm
        # active alarm-engine alarms behind a condition: alarm id -> (well-known alarm, raised at)
        self.events: dict[str, tuple[int, float]] = {}
        self._absent: dict[int, float] = {}  # rows whose condition is gone, since when
        self._next = 1
        self._on_battery_sent = -math.inf
        self.changed: Callable[[], None] = lambda: None  # the index's rows must be rebuilt

    def take_over(self, old: UpsAlarms) -> None:
        """A reload's new agent: the same rows, ids and onsets (no notifications for what did not change)."""
        self.rows, self.events, self._next = dict(old.rows), dict(old.events), old._next
        self._absent = dict(old._absent)
        self._on_battery_sent = old._on_battery_sent
        self.changed()

    def observe(self, event: Any) -> None:
        """An alarm-engine alarm raised or cleared (``bmsgw_alarm_event``)."""
        rule = str(getattr(event, "rule", "") or "")
        alarm = RULE_ALARMS.get(rule)
        if alarm is None and rule in REPLACE_RULES and str(getattr(event, "severity", "")) == "critical":
            alarm = BATTERY_BAD
        key = str(getattr(event, "alarm_id", ""))
        if getattr(event, "active", True) and alarm is not None:
            onset = getattr(event, "raised", None) or getattr(event, "ts", None) or time.time()
            self.events[key] = (alarm, float(onset))
        else:
            self.events.pop(key, None)  # cleared, or no longer critical

    def conditions(self, now: float) -> dict[int, float]:
        """The well-known alarms in effect, each with when it began (wall clock)."""
        out: dict[int, float] = {}
        for alarm, onset in self.events.values():
            out[alarm] = min(onset, out.get(alarm, onset))
        status = self.battery.status_code()
        if self.battery.discharging():
            seconds = self.battery.seconds_on_battery()[1]
            out[ON_BATTERY] = now - (seconds if isinstance(seconds, int) else 0)
        if status in (LOW, DEPLETED):
            out[LOW_BATTERY] = now
        if status == DEPLETED:
            out[DEPLETED_BATTERY] = now
        return out

    def evaluate(self, now: float | None = None) -> None:
        """Add and remove rows (with their notifications) for the conditions at ``now`` (wall clock)."""
        now = time.time() if now is None else now
        wanted = self.conditions(now)
        added = [a for a in sorted(wanted) if a not in self.rows]
        removed = []
        for alarm in sorted(self.rows):
            if alarm in wanted:
                self._absent.pop(alarm, None)
                continue
            since = self._absent.setdefault(alarm, now)
            if alarm in (LOW_BATTERY, DEPLETED_BATTERY) and now - since < self.CLEAR_AFTER_S:
                continue  # the estimate may come back under the threshold: not yet
            removed.append(self.rows.pop(alarm))
            del self._absent[alarm]
        for alarm in added:
            self.rows[alarm] = UpsAlarmRow(self._new_id(), alarm, wanted[alarm])
        if added or removed:
            self.changed()
        for row in removed:
            self._trap(TRAP_ALARM_REMOVED, row, "removed")
        for alarm in added:  # RFC 1628: not for upsAlarmOnBattery, which has upsTrapOnBattery
            if alarm != ON_BATTERY:
                self._trap(TRAP_ALARM_ADDED, self.rows[alarm], "added")
        mono = time.monotonic()  # the resend interval does not follow the wall clock's jumps
        if ON_BATTERY in self.rows and mono - self._on_battery_sent >= ON_BATTERY_RESEND_S:
            self._on_battery_sent = mono
            self._trap_on_battery()
        elif ON_BATTERY not in self.rows:
            self._on_battery_sent = -math.inf

    def _new_id(self) -> int:
        used = {r.alarm_id for r in self.rows.values()}
        alarm_id = self._next
        while alarm_id in used:  # wrapped past the maximum: the first free value
            alarm_id = alarm_id % MAX_ALARM_ID + 1
        self._next = alarm_id % MAX_ALARM_ID + 1
        return alarm_id

    def _trap(self, trap: tuple[int, ...], row: UpsAlarmRow, what: str) -> None:
        if self.notify is None or not self.send_traps:
            return
        index = (row.alarm_id,)
        self.notify(trap, [(UPS_ALARM_ENTRY + (1,) + index, (ber.INTEGER, row.alarm_id)),
                           (UPS_ALARM_ENTRY + (2,) + index, (ber.OID, row.descr))],
                    f"{ALARM_NAMES.get(row.alarm, row.alarm)} {what}")

    def _trap_on_battery(self) -> None:
        if self.notify is None or not self.send_traps:
            return
        varbinds: list[tuple[tuple[int, ...], Value]] = []
        minutes = self.battery.minutes_remaining()
        if minutes is not None:
            varbinds.append((UPS_BATTERY + (3, 0), minutes))
        varbinds.append((UPS_BATTERY + (2, 0), self.battery.seconds_on_battery()))
        varbinds.append((UPS_CONFIG_LOW_BATT_TIME + (0,), (ber.INTEGER, self.data.low_batt_time())))
        self.notify(TRAP_ON_BATTERY, varbinds, "on battery")

    def stamp(self, row: UpsAlarmRow) -> int:
        """upsAlarmTime: sysUpTime at the onset; 0 when it was before this agent started."""
        return self.data.stamp(row.onset)

    def section(self) -> Section:
        sec = Section()
        sec.add(UPS_ALARMS_PRESENT, (0,), lambda: (ber.GAUGE32, len(self.rows)), volatile=True)
        for col in (2, 3):
            sec.declare(UPS_ALARM_ENTRY + (col,))
        for row in sorted(self.rows.values(), key=lambda r: r.alarm_id):
            sec.static(UPS_ALARM_ENTRY + (2,), (row.alarm_id,), (ber.OID, row.descr))
            sec.static(UPS_ALARM_ENTRY + (3,), (row.alarm_id,), (ber.TIMETICKS, self.stamp(row)))
        return sec
