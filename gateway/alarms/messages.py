"""Sentences a person understands: "String 2 cell 37: ohmic value 6.1 mOhm, +34 % over baseline (alarm at +30 %)"."""
from __future__ import annotations

from collections.abc import Callable

from ..points import PointRef
from ..topology import Topology
from .model import AlarmKey

# how a value beyond a setpoint reads, per rule and side (default: "too high" / "too low")
_PHRASE = {
    ("string_current", "high"): "charging too fast",
    ("string_current", "low"): "discharging",
    ("string_current_imbalance", "high"): "more than its share",
    ("string_current_imbalance", "low"): "less than its share",
    ("cell_voltage_discharge", "low"): "near the end of discharge",
    ("string_voltage_discharge", "low"): "near the end of discharge",
    ("cell_soc", "low"): "low", ("string_soc", "low"): "low",
    ("cell_soh", "low"): "low", ("string_soh", "low"): "low",
}
_OHMIC_DEVIATION_RULES = ("cell_ohmic_baseline", "cell_ohmic_baseline_critical", "cell_ohmic_average")


def format_value(value: float | None, unit: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    sign = "+" if signed else ""
    if unit == "V":
        return f"{value:{sign}.1f} V" if abs(value) >= 100 else f"{value:{sign}.2f} V"
    if unit == "A":
        return f"{value:{sign}.1f} A"
    if unit == "C":
        return f"{value:{sign}.1f} °C"
    if unit == "ohm":
        return f"{value * 1000:{sign}.3g} mOhm"
    if unit == "%":
        return f"{value:{sign}.0f} %"
    if unit:
        return f"{value:{sign}.4g} {unit}"
    return f"{value:{sign}.4g}"


class Messages:
    """Names and sentences for alarms, from the topology and the point catalog."""

    def __init__(self, topology: Topology, unit_of: Callable[[str], str], value_of: Callable[[PointRef], float | None],
                 devices: dict[str, str] | None = None) -> None:
        self.topology = topology
        self.unit_of = unit_of
        self.value_of = value_of
        self.devices = devices or {}  # "bus:address" -> device label
        self.bus_names = {b.index: b.name for b in topology.buses}

    # -- names ---------------------------------------------------------------------------------------------
    def object_id(self, key: AlarmKey) -> str:
        """A stable, short name of what is affected: ``string 2 cell 37``, ``bus bus1``, ``DI 1``."""
        if key.cell is not None:
            return f"string {key.string} cell {key.cell}"
        if key.string is not None:
            return f"string {key.string}"
        if key.device:
            return f"device {key.device}"
        if key.point.startswith("gateway.bus"):
            return f"bus {self._bus_name(key.channel)}"
        if key.point.startswith("gateway."):
            return "gateway"
        if key.point == "io.di":
            return f"DI {key.channel}"
        if key.point.startswith("io."):
            return "room"
        return "bank"

    def _bus_name(self, channel: int | None) -> str | int | None:
        """The configured name of bus number ``channel`` (the number when there is no such bus)."""
        return self.bus_names.get(channel, channel) if channel is not None else None

    def object_name(self, key: AlarmKey) -> str:
        if key.string is not None:
            try:
                sname = self.topology.string(key.string).name or f"String {key.string}"
            except KeyError:
                sname = f"String {key.string}"
            return f"{sname} cell {key.cell}" if key.cell is not None else sname
        if key.device:
            return self.devices.get(key.device, f"Device {key.device}")
        if key.point.startswith("gateway.bus"):
            return f"Bus {self._bus_name(key.channel)}"
        if key.point.startswith("gateway."):
            return "Gateway"
        if key.point.startswith("io."):
            return "Battery room"
        return "Bank"

    # -- sentences -----------------------------------------------------------------------------------------
    def _value_phrase(self, key: AlarmKey, rule, value: float | None, raw: float | None) -> tuple[str, str]:
        """(what, how much): ("ohmic value", "6.1 mOhm, +34 % over baseline")."""
        unit = self.unit_of(key.point)
        if rule.id in _OHMIC_DEVIATION_RULES:
            where = "the string average" if rule.id == "cell_ohmic_average" else "baseline"
            ohm = self.value_of(PointRef("cell.ohmic", key.string, key.cell))
            rel = "over" if (value or 0) >= 0 else "under"
            dev = f"{format_value(value, '%', signed=True)} {rel} {where}"
            return "ohmic value", (f"{format_value(ohm, 'ohm')}, {dev}" if ohm is not None else dev)
        if rule.reference:
            ref_label = "ambient" if rule.reference == "io.ambient_temperature" else rule.reference
            rel = "above" if (value or 0) >= 0 else "below"
            return rule.label, f"{format_value(raw, unit)}, {format_value(abs(value or 0), unit)} {rel} {ref_label}"
        return rule.label, format_value(value, unit, key.point.endswith("deviation"))

    def _threshold(self, key: AlarmKey, rule, threshold: float) -> str:
        unit = self.unit_of(key.point)
        signed = key.point.endswith("deviation") or key.point.endswith("imbalance") or bool(rule.reference)
        word = "alarm" if key.severity == "critical" else "warning"
        if rule.id == "cell_ohmic_baseline_critical":
            word = "critical"
        return f"{word} at {format_value(threshold, unit, signed)}"

    def raised(self, key: AlarmKey, rule, value: float | None, raw: float | None, threshold: float) -> str:
        name = self.object_name(key)
        if rule.id == "device_address":
            now = int(value or 0)
            return (f"{name}: now answers at address {now} (sensor replaced or readdressed); polled there: "
                    f"set address {now} in the config")
        if rule.kind == "state":
            return f"{name}: {self._state_text(key, rule, True)}"
        phrase = _PHRASE.get((rule.id, key.side))
        relative = rule.id in _OHMIC_DEVIATION_RULES or rule.reference
        if relative or key.point.endswith("deviation"):
            phrase = None  # the value phrase already says which way
        elif phrase is None:
            phrase = "too high" if key.side == "high" else "too low"
        if rule.id == "bus_comm":
            return f"{name}: no sensor answers"
        what, how = self._value_phrase(key, rule, value, raw)
        return f"{name}: {what} {how}{', ' + phrase if phrase else ''} ({self._threshold(key, rule, threshold)})"

    def cleared(self, key: AlarmKey, rule, value: float | None, raw: float | None) -> str:
        name = self.object_name(key)
        if rule.id == "device_address":
            return f"{name}: answers at its configured address again"
        if rule.kind == "state":
            return f"{name}: {self._state_text(key, rule, False)}"
        if rule.id == "bus_comm":
            return f"{name}: sensors answer again"
        if value is None:
            return f"{name}: {rule.label} alarm cleared"
        what, how = self._value_phrase(key, rule, value, raw)
        return f"{name}: {what} back to normal ({how})"

    def _state_text(self, key: AlarmKey, rule, raised: bool) -> str:
        if rule.point == "io.di":
            closed = bool(rule.active_state) == raised  # the contact is in its active state while raised
            state = "closed" if closed else "open"
            return f"{rule.name or rule.label} contact {state}"
        if rule.id == "device_comm":
            return "stopped answering" if raised else "answers again"
        if rule.id == "string_on_battery":
            return "on battery: the string discharges (mains lost?)" if raised else "off battery: no longer discharging"
        if rule.point == "string.thermal_runaway":
            if not raised:
                return "thermal runaway watch back to normal"
            ref = PointRef("string.current", key.string)
            current, normal = self.value_of(ref), self.value_of(PointRef("string.float_current_normal", key.string))
            why = {1: "float current over 3x its normal", 2: "float current rising with the temperature"}.get(
                int(self.value_of(PointRef(rule.point, key.string)) or 1), "float current over 3x its normal")
            figures = (f" ({format_value(current, 'A')}, normal {format_value(normal, 'A')})"
                       if current is not None and normal is not None else "")
            return f"THERMAL RUNAWAY suspected: {why}{figures}; check the charger and the batteries now"
        if rule.point == "gateway.history_fault":
            if not raised:
                return "history is written again"
            why = {2: "a write error"}.get(int(self.value_of(PointRef(rule.point)) or 1), "a full disk")
            return f"history cannot be written ({why}); measurements are not being recorded"
        what = rule.label
        return f"{what} stopped answering" if raised else f"{what} answers again"
