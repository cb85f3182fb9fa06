"""What the NUT face serves: the devices (``bank``, ``string1`` ... ``stringN``) and their variables, named after
NUT's variable naming standard (``docs/nut-names.txt``), read from the point store at request time.

A variable *exists* on a device when the gateway has its source here (the point family is in the point map, or the
setting is configured); an existing variable whose value is not known now (its point is not GOOD) is left out of
``LIST VAR`` and answers ``ERR DATA-STALE`` to ``GET VAR``: nothing is made up.  The bank's values aggregate the
strings (README "Variables"): the lowest charge and run time, the highest temperature, the summed current.

``ups.status`` comes from the one string-state point (``string.state``, derived by the analytics) and the alarms:
``OB DISCHRG`` while discharging, ``OL`` (``OL CHRG`` while charging) otherwise, ``LB`` at or below the low-battery
settings, ``RB`` while a battery's state-of-health alarm is critical (past its replacement threshold).
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...points import PointRef, PointStore
from ...strings import StringStates, string_states

if TYPE_CHECKING:
    from ...config import Config
    from ...pointmap import PointMap
    from ...topology import StringConfig

BANK_KEY = 0  # a device is keyed by 0 (the bank) or its string id: stable across reloads that rename the bank
STRING_PREFIX = "string"
STRING_SIZE = 64  # TYPE ... STRING:n of the text variables
BATTERY_TYPE = {"vrla": "PbAc", "vented": "PbAc"}  # NUT's name for lead-acid chemistry
REPLACE_METRICS = frozenset({"cell.soh", "string.soh"})  # a critical alarm on these: the battery needs replacing
LOW_VOLTAGE_METRICS = frozenset({"cell.voltage", "string.voltage"})  # low, on battery: the end of discharge is near

Reader = Callable[[], "str | None"]


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    description: str
    read: Reader
    string_size: int = 0  # 0: a number (TYPE ... NUMBER); n: text (TYPE ... STRING:n)


@dataclass(frozen=True, slots=True)
class Device:
    key: int
    name: str
    description: str
    variables: dict[str, Variable]  # by lower-case name (NUT names are case-insensitive)
    ordered: tuple[Variable, ...]  # in upsd's order (its state tree sorts names case-insensitively)

    def get(self, name: str) -> Variable | None:
        return self.variables.get(name.lower())


# -- value formatting: decimal, never exponent notation (nut-names.txt "Numeric format") -------------------------
def fixed(value: float | None, decimals: int) -> str | None:
    if value is None:
        return None
    text = f"{value:.{decimals}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text  # no "-0.0"


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else fixed(value, 2) or ""


def const(text: str) -> Reader:
    return lambda: text


# -- the alarms ups.status reads -------------------------------------------------------------------------------
class StatusAlarms:
    """The active alarms ``ups.status`` reads, as the alarm engine decides them (its setpoints, delays and
    hysteresis): critical state-of-health alarms (``cell.soh``, ``string.soh``: a battery past its replacement
    threshold, RB) and low battery-voltage alarms (``cell.voltage``, ``string.voltage`` below their setpoint: on
    battery, the end-of-discharge alarms, LB).  Seeded from the active table at start and kept by the alarm
    events; ``known`` is False when no alarm engine runs here."""

    def __init__(self) -> None:
        self.known = False
        self._replace: dict[str, tuple[str, int | None, int | None]] = {}  # alarm id -> (point, string, cell)
        self._low_voltage: dict[str, int | None] = {}  # alarm id -> string

    def seed(self, rows: list[dict[str, Any]] | None) -> None:
        self._replace.clear()
        self._low_voltage.clear()
        self.known = rows is not None
        for row in rows or ():
            self._note(str(row.get("id")), row.get("point"), row.get("severity"), row.get("string"), row.get("cell"),
                       bool(row.get("active", True)), row.get("value"), row.get("threshold"))

    def event(self, alarm_id: Any, point: str | None, severity: str | None, string: int | None, cell: int | None,
              raised: bool, value: float | None = None, threshold: float | None = None) -> None:
        self.known = True
        self._note(str(alarm_id), point, severity, string, cell, raised, value, threshold)

    def _note(self, alarm_id: str, point: Any, severity: Any, string: Any, cell: Any, raised: bool,
              value: Any, threshold: Any) -> None:
        if raised and point in REPLACE_METRICS and severity == "critical":
            self._replace[alarm_id] = (point, string, cell)
        else:
            self._replace.pop(alarm_id, None)
        if raised and point in LOW_VOLTAGE_METRICS and isinstance(value, int | float) and \
                isinstance(threshold, int | float) and value <= threshold:
            self._low_voltage[alarm_id] = string
        else:
            self._low_voltage.pop(alarm_id, None)

    def bad_batteries(self, string: int | None = None) -> int | None:
        """Batteries with an active critical ``cell.soh`` alarm (of one string, or all); None when unknown."""
        if not self.known:
            return None
        return len({(s, c) for point, s, c in self._replace.values()
                    if point == "cell.soh" and (string is None or s == string)})

    def replace(self, string: int | None = None) -> bool:
        return any(string is None or s == string for _m, s, _c in self._replace.values())

    def low_voltage(self, string: int | None = None) -> bool:
        """A low-voltage alarm of a battery or the string (of one string, or any) is active."""
        return any(string is None or s == string for s in self._low_voltage.values())


# -- the devices --------------------------------------------------------------------------------------------------
class Model:
    """The devices a config serves, built from the point map and the config; values read at request time."""

    def __init__(self, store: PointStore, pointmap: PointMap, config: Config, cfg: dict[str, Any],
                 alarms: StatusAlarms) -> None:
        self.store, self.pointmap, self.alarms = store, pointmap, alarms
        self.catalog = pointmap.catalog
        self._state_labels: dict[str, dict[int, str]] = {}
        low = cfg["low_battery"]
        self.charge_low, self.runtime_low = float(low["charge_pct"]), float(low["runtime_s"])
        # the codes of the one string-state classifier (gateway/strings), never numbers or names of our own
        self.codes: StringStates | None = string_states(self.catalog) if "string.state" in self.catalog else None
        site = config.section("site")
        analytics = config.section("analytics")
        strings = pointmap.topology.strings
        self.devices: dict[int, Device] = {}
        for s in strings:
            self.devices[s.id] = self._string_device(s, cfg, analytics)
        self.devices[BANK_KEY] = self._bank_device(strings, cfg, str(site.get("name") or "battery bank"), analytics)
        self.by_name: dict[str, Device] = {d.name.lower(): d for d in self.devices.values()}

    def device(self, name: str) -> Device | None:
        return self.by_name.get(name.lower())

    def listed(self) -> list[Device]:
        """Devices in LIST UPS order: the bank, then the strings."""
        return [self.devices[BANK_KEY], *(d for k, d in sorted(self.devices.items()) if k != BANK_KEY)]

    # -- reading points ---------------------------------------------------------------------------------------
    def has(self, ref: PointRef) -> bool:
        return self.pointmap.get(ref) is not None

    def value(self, ref: PointRef) -> float | None:
        return self.store.value(ref)

    def state(self, sid: int) -> str | None:
        """The string's operating state as the string classifier publishes it (``string.state``): one of
        ``floating``, ``charging``, ``discharging``, ``rest``; None when not known."""
        codes = self.codes
        v = self.value(PointRef("string.state", sid))
        if codes is None or v is None:
            return None
        return {codes.floating: "floating", codes.charging: "charging", codes.discharging: "discharging",
                codes.rest: "rest"}.get(int(v))

    def _reader(self, ref: PointRef, decimals: int, factor: float = 1.0) -> Reader:
        """The variable's text from the point's value now (None while it is not known)."""
        return PointReader(self, ref, decimals, factor)

    def _known(self, point: str, sids: Iterable[int]) -> list[float]:
        return [v for v in (self.value(PointRef(point, s)) for s in sids) if v is not None]

    # -- status -----------------------------------------------------------------------------------------------
    def status(self, states: list[str], charge: float | None, runtime: float | None, replace: bool,
               low_voltage: bool = False) -> str | None:
        """``ups.status`` from the operating states of the strings concerned (those known, from the string
        classifier), their charge and run time against battery.charge.low / battery.runtime.low, the
        end-of-discharge voltage alarms, and whether a battery needs replacing."""
        if not states:
            return None
        on_battery = "discharging" in states
        tokens = ["OB", "DISCHRG"] if on_battery else ["OL"]
        if not on_battery and "charging" in states:
            tokens.append("CHRG")
        if (charge is not None and charge <= self.charge_low) or \
                (on_battery and runtime is not None and runtime <= self.runtime_low) or (on_battery and low_voltage):
            tokens.append("LB")
        if replace:
            tokens.append("RB")
        return " ".join(tokens)

    @staticmethod
    def charger_status(states: list[str]) -> str | None:
        """battery.charger.status (nut-names.txt): charging, discharging, floating or resting."""
        for label, word in (("discharging", "discharging"), ("charging", "charging"), ("floating", "floating"),
                            ("rest", "resting")):
            if label in states:
                return word
        return None

    # -- one string ------------------------------------------------------------------------------------------
    def _string_device(self, s: StringConfig, cfg: dict[str, Any], analytics: dict[str, Any]) -> Device:
        sid = s.id
        bat = s.battery
        vars_: list[Variable] = []

        def add(name: str, description: str, read: Reader, string_size: int = 0) -> None:
            vars_.append(Variable(name, description, read, string_size))

        def point(name: str, description: str, family: str, decimals: int) -> None:
            ref = PointRef(family, sid)
            if self.has(ref):
                add(name, description, lambda: fixed(self.value(ref), decimals))

        self._identity(add, cfg, bat.model or "battery string", s.name or f"String {sid}", serial="")

        def status() -> str | None:
            state = self.state(sid)
            return self.status([state] if state else [], self.value(PointRef("string.soc", sid)),
                               self.value(PointRef("string.runtime_remaining", sid)), self.alarms.replace(sid),
                               self.alarms.low_voltage(sid))

        if self.has(PointRef("string.state", sid)):
            add("ups.status", "UPS status", status, STRING_SIZE)
            add("battery.charger.status", "Status of the battery charger",
                lambda: self.charger_status([st] if (st := self.state(sid)) else []), STRING_SIZE)
        point("battery.charge", "Battery charge (percent)", "string.soc", 1)
        point("battery.runtime", "Battery runtime (seconds)", "string.runtime_remaining", 0)
        point("battery.voltage", "Battery voltage (V)", "string.voltage", 2)
        point("battery.current", "Battery current (A); negative: discharging", "string.current", 2)
        point("battery.temperature", "Battery temperature (degrees C): the warmest battery",
              "string.cell_temperature_max", 1)
        point("experimental.battery.soh", "Battery string state of health (percent)", "string.soh", 1)
        self._settings(add, cfg)
        add("battery.voltage.nominal", "Nominal battery voltage (V)", const(number(s.cells * bat.nominal_voltage)))
        add("battery.capacity.nominal", "Nominal battery capacity (Ah)", const(number(bat.capacity_ah)))
        add("battery.packs", "Number of batteries in the string", const(str(s.cells)))
        add("battery.type", "Battery chemistry", const(BATTERY_TYPE.get(bat.chemistry, bat.chemistry)), STRING_SIZE)
        date = install_date(analytics, sid)
        if date:
            add("battery.date", "Battery installation date", const(date), STRING_SIZE)
        add("battery.packs.bad", "Number of batteries past their replacement threshold (state-of-health alarm)",
            lambda: _count(self.alarms.bad_batteries(sid)))
        if cfg["per_battery"]:
            for c in range(1, s.cells + 1):
                self._battery(add, sid, c)
        return _device(sid, f"{STRING_PREFIX}{sid}", s.name or f"String {sid}", vars_)

    def _battery(self, add, sid: int, c: int) -> None:
        """experimental.battery.N.*: one battery of a string (N counts from 1 along the string)."""
        base = f"experimental.battery.{c}"
        for family, suffix, description, factor, decimals in (
                ("cell.voltage", "voltage", "voltage (V)", 1.0, 3),
                ("cell.temperature", "temperature", "temperature (degrees C)", 1.0, 1),
                ("cell.ohmic", "ohmic", "ohmic value (milliohm)", 1000.0, 3),
                ("cell.soh", "soh", "state of health (percent)", 1.0, 1)):
            ref = PointRef(family, sid, c)
            if self.has(ref):
                add(f"{base}.{suffix}", f"Battery {c} {description}", self._reader(ref, decimals, factor))
        ref = PointRef("cell.alarm_level", sid, c)
        spec = self.catalog.get("cell.alarm_level")
        if self.has(ref) and spec is not None:
            add(f"{base}.alarm", f"Battery {c} alarm level (normal, warning, critical)",
                LabelReader(self, ref, self._labels(spec)), STRING_SIZE)

    def _labels(self, spec) -> dict[int, str]:
        """A state family's labels by code, one dict for all its points."""
        labels = self._state_labels.get(spec.id)
        if labels is None:
            labels = self._state_labels[spec.id] = dict(spec.states)
        return labels

    # -- the bank --------------------------------------------------------------------------------------------
    def _bank_device(self, strings: tuple[StringConfig, ...], cfg: dict[str, Any], site_name: str,
                     analytics: dict[str, Any]) -> Device:
        sids = [s.id for s in strings]
        vars_: list[Variable] = []

        def add(name: str, description: str, read: Reader, string_size: int = 0) -> None:
            vars_.append(Variable(name, description, read, string_size))

        def any_has(family: str) -> bool:
            return any(self.has(PointRef(family, s)) for s in sids)

        self._identity(add, cfg, cfg["device"]["model"], site_name, serial=cfg["device"]["serial"])

        def states() -> list[str]:
            return [st for st in (self.state(s) for s in sids) if st]

        def charge() -> float | None:
            known = self._known("string.soc", sids)
            return min(known) if known else None

        def runtime() -> float | None:
            known = self._known("string.runtime_remaining", sids)
            return min(known) if known else None

        def temperature() -> float | None:
            known = self._known("string.cell_temperature_max", sids)
            return max(known) if known else None

        def current() -> float | None:
            known = self._known("string.current", sids)
            return sum(known) if len(known) == len(sids) else None

        def voltage() -> float | None:
            own = self.value(PointRef("bank.voltage"))
            if own is not None:
                return own
            known = self._known("string.voltage", sids)
            return sum(known) / len(known) if known and len(known) == len(sids) else None

        if any_has("string.state"):
            add("ups.status", "UPS status",
                lambda: self.status(states(), charge(), runtime(), self.alarms.replace(),
                                    self.alarms.low_voltage()), STRING_SIZE)
            add("battery.charger.status", "Status of the battery charger", lambda: self.charger_status(states()),
                STRING_SIZE)
        if any_has("string.soc"):
            add("battery.charge", "Battery charge (percent): the lowest string", lambda: fixed(charge(), 1))
        if any_has("string.runtime_remaining"):
            add("battery.runtime", "Battery runtime (seconds): the shortest string", lambda: fixed(runtime(), 0))
        if any_has("string.voltage") or self.has(PointRef("bank.voltage")):
            add("battery.voltage", "Battery voltage (V)", lambda: fixed(voltage(), 2))
        if any_has("string.current"):
            add("battery.current", "Battery current (A): the strings' sum; negative: discharging",
                lambda: fixed(current(), 2))
        if any_has("string.cell_temperature_max"):
            add("battery.temperature", "Battery temperature (degrees C): the warmest battery",
                lambda: fixed(temperature(), 1))
        for family, name, description, decimals in (
                ("io.ambient_temperature", "ambient.temperature", "Ambient temperature (degrees C)", 1),
                ("io.ambient_humidity", "ambient.humidity", "Ambient relative humidity (percent)", 1)):
            ref = PointRef(family)
            if self.has(ref):
                add(name, description, self._reader(ref, decimals))
        self._settings(add, cfg)
        nominal = {s.cells * s.battery.nominal_voltage for s in strings}
        if len(nominal) == 1:  # strings in parallel share one nominal voltage; different ones have none
            add("battery.voltage.nominal", "Nominal battery voltage (V)", const(number(nominal.pop())))
        if strings:
            add("battery.capacity.nominal", "Nominal battery capacity (Ah): the strings' sum",
                const(number(sum(s.battery.capacity_ah for s in strings))))
            add("battery.packs", "Number of batteries in the bank", const(str(sum(s.cells for s in strings))))
        chemistry = {BATTERY_TYPE.get(s.battery.chemistry, s.battery.chemistry) for s in strings}
        if len(chemistry) == 1:
            add("battery.type", "Battery chemistry", const(chemistry.pop()), STRING_SIZE)
        dates = {install_date(analytics, s) for s in sids}
        if len(dates) == 1 and (date := dates.pop()):
            add("battery.date", "Battery installation date", const(date), STRING_SIZE)
        add("battery.packs.bad", "Number of batteries past their replacement threshold (state-of-health alarm)",
            lambda: _count(self.alarms.bad_batteries()))
        return _device(BANK_KEY, cfg["bank_name"], site_name, vars_)

    # -- shared -------------------------------------------------------------------------------------------------
    @staticmethod
    def _identity(add, cfg: dict[str, Any], model: str, description: str, serial: str) -> None:
        add("device.mfr", "Device manufacturer", const(cfg["device"]["mfr"]), STRING_SIZE)
        add("device.model", "Device model", const(model), STRING_SIZE)
        add("device.type", "Device type (ups, pdu, scd, psu, ats)", const("ups"), STRING_SIZE)
        add("device.description", "Device description", const(description), STRING_SIZE)
        if serial:
            add("device.serial", "Device serial number", const(serial), STRING_SIZE)

    def _settings(self, add, cfg: dict[str, Any]) -> None:
        add("battery.charge.low", "Remaining battery level when UPS switches to LB (percent)",
            const(number(self.charge_low)))
        add("battery.runtime.low", "Remaining battery runtime when UPS switches to LB (seconds)",
            const(number(self.runtime_low)))


def install_date(analytics: dict[str, Any], sid: int) -> str | None:
    """The string's installation date (``analytics.install_dates``, else ``analytics.install_date``), YYYY-MM-DD."""
    text = (analytics.get("install_dates") or {}).get(str(sid)) or analytics.get("install_date")
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(str(text)).isoformat()
    except ValueError:
        return None


def _device(key: int, name: str, description: str, variables: list[Variable]) -> Device:
    ordered = tuple(sorted(variables, key=lambda v: v.name.lower()))
    return Device(key, name, description, {v.name.lower(): v for v in ordered}, ordered)


class PointReader:
    """A variable's text from one point's value now (None while it is not known): four slots where a closure
    took about 300 bytes, for each of the thousands of per-battery variables of a bank."""

    __slots__ = ("model", "ref", "decimals", "factor")

    def __init__(self, model: Model, ref: PointRef, decimals: int, factor: float = 1.0) -> None:
        self.model, self.ref, self.decimals, self.factor = model, ref, decimals, factor

    def __call__(self) -> str | None:
        return fixed(_scaled(self.model.value(self.ref), self.factor), self.decimals)


class LabelReader:
    """A state point's label now (None while it is not known)."""

    __slots__ = ("model", "ref", "labels")

    def __init__(self, model: Model, ref: PointRef, labels: dict[int, str]) -> None:
        self.model, self.ref, self.labels = model, ref, labels

    def __call__(self) -> str | None:
        return _label(self.labels, self.model.value(self.ref))


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _label(labels: dict[int, str], value: float | None) -> str | None:
    return None if value is None else labels.get(int(value))


def _count(n: int | None) -> str | None:
    return None if n is None else str(n)
