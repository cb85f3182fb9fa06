"""Which BACnet objects the face serves: their types, stable instance numbers, names and static properties.

Plain data from the catalog, the point map and the ``bacnet`` section, with no BACnet library: the face
(``face.py``), the EDE export (``ede.py``) and the golden test all read this one plan.

Instance numbers follow from the family's catalog slot and the point's place, never from a position in a list,
so adding a string, a battery or a sensor type never renumbers an object (README beside this file):

=============  ===============================================================  ==========================
scope          instance                                                         e.g.
=============  ===============================================================  ==========================
battery        ``string * 1,000,000 + slot * 1,000 + battery``                  AI 1000017: s1 b17 voltage
string         ``string * 1,000,000 + 100,000 + slot * 10 + k``                 AI 1100010: s1 current
bank           ``100,000 + slot * 100 + channel * 10 + k``                      BI 100420: DI 2
gateway        ``200,000 + slot * 100 + channel * 10 + k``
=============  ===============================================================  ==========================

``channel`` is 0 for a single value; ``k`` is 0, or the severity for the "alarm active" binary-inputs of an
``*.alarm_level`` family (1 warning or worse, 2 critical).  With at most 4 strings, 256 batteries, 54 battery
slots, 250 string slots and 8 channels (the point map's own limits) every number stays below BACnet's
4,194,303 and no two ranges meet.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ...pointmap import MappedPoint, PointMap
from ...points import PointRef, PointSpec

STRING_FACTOR, STRING_SCOPE_OFFSET, BANK_BASE, GATEWAY_BASE = 1_000_000, 100_000, 100_000, 200_000
CELL_SLOT_FACTOR, STRING_SLOT_FACTOR, CHANNEL_SLOT_FACTOR, CHANNEL_FACTOR = 1_000, 10, 100, 10
MAX_INSTANCE = 4_194_302  # 4,194,303 is the wildcard instance

ANALOG_INPUT, BINARY_INPUT, BINARY_OUTPUT, MULTI_STATE_INPUT = (
    "analog-input", "binary-input", "binary-output", "multi-state-input")

# the store's SI unit -> BACnet engineering unit (the library's enumeration name)
UNITS = {"V": "volts", "A": "amperes", "C": "degreesCelsius", "%": "percent", "ohm": "ohms", "s": "seconds",
         "S": "siemens", "W": "watts", "Hz": "hertz", "unix_s": "noUnits", "": "noUnits"}
# cov-increment: per family first, then per unit (what a BMS would call a real change, not sensor noise)
DEFAULT_COV_INCREMENTS: dict[str, float] = {
    "cell.voltage": 0.02, "cell.temperature": 0.5, "cell.ohmic": 0.0001,
    "string.voltage": 0.5, "bank.voltage": 0.5, "string.current": 0.5, "bank.charger_current": 0.5,
    "string.cell_voltage_max": 0.02, "string.cell_voltage_min": 0.02, "string.cell_voltage_avg": 0.02,
    "io.ambient_humidity": 2.0,
    "V": 0.1, "A": 0.5, "C": 0.5, "%": 1.0, "ohm": 0.0001, "s": 60.0, "S": 1.0, "W": 10.0, "Hz": 0.1,
    "unix_s": 86400.0, "": 1.0,
}

DEFAULT_STRING_POINTS = ["string.voltage", "string.current", "string.soc", "string.soh", "string.cell_voltage_max",
                         "string.cell_voltage_min", "string.cell_voltage_avg", "string.cell_temperature_max",
                         "string.state", "string.alarm_level"]
DEFAULT_BANK_POINTS = ["bank.voltage", "bank.charger_current", "io.ambient_temperature", "io.ambient_humidity",
                       "io.di", "io.do", "bank.alarm_level"]
DEFAULT_BATTERY_POINTS = ["cell.voltage", "cell.temperature", "cell.ohmic"]


def object_instance(spec: PointSpec, ref: PointRef, k: int = 0) -> int:
    """The instance number of the object that serves ``ref`` (``k``: the severity of an alarm binary-input)."""
    if spec.scope == "cell":
        return (ref.string or 0) * STRING_FACTOR + spec.slot * CELL_SLOT_FACTOR + (ref.cell or 0)
    if spec.scope == "string":
        return (ref.string or 0) * STRING_FACTOR + STRING_SCOPE_OFFSET + spec.slot * STRING_SLOT_FACTOR + k
    base = BANK_BASE if spec.scope == "bank" else GATEWAY_BASE
    return base + spec.slot * CHANNEL_SLOT_FACTOR + (ref.channel or 0) * CHANNEL_FACTOR + k


def is_alarm_level(spec: PointSpec) -> bool:
    """A family that says the highest active alarm severity (0 normal, then rising severities)."""
    return spec.id.endswith(".alarm_level") and spec.kind == "state" and len(spec.states) > 1


@dataclass(frozen=True, slots=True)
class ObjectPlan:
    """One BACnet object: what it is called, what it serves and how."""

    type: str  # analog-input | binary-input | binary-output | multi-state-input
    instance: int
    name: str
    description: str
    entry: MappedPoint
    units: str = "noUnits"  # BACnet engineering unit (analog-input)
    cov_increment: float | None = None  # analog-input
    min_value: float | None = None
    max_value: float | None = None
    state_values: tuple[int, ...] = ()  # multi-state-input: the point's value of state 1, 2, ... (BACnet counts
    state_texts: tuple[str, ...] = ()  # from 1); binary: (inactive, active) texts
    alarm_at: int | None = None  # alarm binary-input: active while the level is at least this
    writable: bool = False  # binary-output: WriteProperty goes through Gateway.write

    @property
    def ref(self) -> PointRef:
        return self.entry.ref

    @property
    def spec(self) -> PointSpec:
        return self.entry.spec

    @property
    def key(self) -> tuple[str, int]:
        return self.type, self.instance


def place_of(ref: PointRef, spec: PointSpec) -> str:
    """Where a point is, for object names: ``String 1 battery 17``, ``String 1``, ``Bank``, ``Gateway``."""
    if spec.scope == "cell":
        return f"String {ref.string} battery {ref.cell}"
    if spec.scope == "string":
        return f"String {ref.string}"
    return "Bank" if spec.scope == "bank" else "Gateway"


def object_name(ref: PointRef, spec: PointSpec) -> str:
    """``String 1 battery 17 voltage``, ``String 1 current``, ``Bank io.di 2``: the place, then the family."""
    what = spec.name if spec.scope in ("cell", "string") else spec.id.removeprefix(spec.scope + ".")
    return f"{place_of(ref, spec)} {what}" + (f" {ref.channel}" if ref.channel is not None else "")


def units_of(spec: PointSpec) -> str:
    if spec.unit == "%" and "humidity" in spec.id:
        return "percentRelativeHumidity"
    return UNITS.get(spec.unit, "noUnits")


def cov_increment(spec: PointSpec, overrides: dict[str, float]) -> float:
    for key in (spec.id, spec.unit):
        if key in overrides:
            return float(overrides[key])
    for key in (spec.id, spec.unit):
        if key in DEFAULT_COV_INCREMENTS:
            return DEFAULT_COV_INCREMENTS[key]
    return 1.0


def plan_point(entry: MappedPoint, cfg: dict) -> list[ObjectPlan]:
    """The object(s) of one point: an ``*.alarm_level`` point gives one binary-input per severity."""
    spec, ref = entry.spec, entry.ref
    name, description = object_name(ref, spec), spec.description
    if is_alarm_level(spec):
        place = place_of(ref, spec) + (f" {ref.channel}" if ref.channel is not None else "")
        return [ObjectPlan(BINARY_INPUT, object_instance(spec, ref, value), f"{place} {label} alarm",
                           f"{description}: {label} or worse", entry, state_texts=("normal", "alarm"), alarm_at=value)
                for value, label in sorted(spec.states)[1:]]
    instance = object_instance(spec, ref)
    if spec.kind == "state" and spec.states:
        values = tuple(v for v, _ in sorted(spec.states))
        texts = tuple(label for _, label in sorted(spec.states))
        if values == (0, 1):
            writable = spec.writable and cfg["writes"]["enabled"]
            return [ObjectPlan(BINARY_OUTPUT if writable else BINARY_INPUT, instance, name, description, entry,
                               state_texts=texts, writable=writable)]
        return [ObjectPlan(MULTI_STATE_INPUT, instance, name, description, entry, state_values=values,
                           state_texts=texts)]
    low, high = spec.valid_range or (None, None)
    return [ObjectPlan(ANALOG_INPUT, instance, name, description, entry, units=units_of(spec),
                       cov_increment=cov_increment(spec, cfg["cov_increments"]),
                       min_value=low if low is not None and math.isfinite(low) else None,
                       max_value=high if high is not None and math.isfinite(high) else None)]


def selected_families(cfg: dict) -> dict[str, str]:
    """family id -> the ``bacnet.objects`` key that asks for it."""
    objects = cfg["objects"]
    out = dict.fromkeys(objects["strings"], "strings")
    out.update(dict.fromkeys(objects["bank"], "bank"))
    if objects["batteries"]:
        out.update(dict.fromkeys(objects["battery_points"], "battery_points"))
    return out


def plan_objects(pointmap: PointMap, cfg: dict) -> list[ObjectPlan]:
    """Every object the ``bacnet`` section asks for that this bank has, sorted by type and instance."""
    families = selected_families(cfg)
    out = [plan for entry in pointmap if entry.spec.id in families for plan in plan_point(entry, cfg)]
    out.sort(key=lambda p: p.key)
    return out


EXPECTED_SCOPE = {"strings": ("string",), "bank": ("bank", "gateway"), "battery_points": ("cell",)}


def section_problems(cfg: dict, catalog: Iterable[PointSpec]) -> list[str]:
    """What the schema cannot say about the ``bacnet`` section, as ``key.path: what is wrong``."""
    specs = {spec.id: spec for spec in catalog}
    problems = []
    for key, scopes in EXPECTED_SCOPE.items():
        for i, pid in enumerate(cfg["objects"][key]):
            spec = specs.get(pid)
            where = f"bacnet.objects.{key}[{i}]"
            if spec is None:
                problems.append(f"{where}: {pid!r} is not a point family of the catalog")
            elif spec.scope not in scopes:
                problems.append(f"{where}: {pid} is a {spec.scope} family; this list takes "
                                + " or ".join(scopes) + " families")
            elif spec.kind == "command":
                problems.append(f"{where}: {pid} is a command, not a value")
    for key in cfg["cov_increments"]:
        if "." in key and key not in specs:
            problems.append(f"bacnet.cov_increments.{key}: not a point family of the catalog")
        elif "." not in key and key not in UNITS:
            problems.append(f"bacnet.cov_increments.{key}: neither a point family nor a unit "
                            f"({', '.join(repr(u) for u in UNITS if u)})")
    return problems
