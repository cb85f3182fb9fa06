"""What the agent serves, section by section, all read from the point store through the point map.

- BMSGW-MIB: every point of the point map at base.1.<oid suffix>, plus the active-alarm table.
- SNMPv2-MIB system and snmp groups, SNMP-FRAMEWORK-MIB snmpEngine group.
- UPS-MIB (RFC 1628) for the bank: ident, battery, output source, alarms, low-battery time (upsmib.py).
- ENTITY-MIB physical table and ENTITY-SENSOR-MIB sensor table for the ambient, string and battery sensors.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ... import __version__
from ...modbus.codecs import northbound_words
from ...pointmap import PointMap, require_position
from ...points import PointRef, PointSpec, PointStore, Quality, Reading
from ...topology import Topology
from . import ber
from .mib import ALARM_GROUP, decimals, value_range
from .tree import Section, Value, ValueFn

MIB2 = (1, 3, 6, 1, 2, 1)
SYSTEM = MIB2 + (1,)
SNMP_GROUP = MIB2 + (11,)
ENT_PHYSICAL_ENTRY = MIB2 + (47, 1, 1, 1, 1)
ENT_LAST_CHANGE = MIB2 + (47, 1, 4, 1)
ENT_SENSOR_ENTRY = MIB2 + (99, 1, 1, 1)
SNMP_ENGINE = (1, 3, 6, 1, 6, 3, 10, 2, 1)
ZERO_DOT_ZERO = (0, 0)
_INF = float("inf")
TRUE, FALSE = 1, 2

# MIB modules listed in sysORTable: (OID, description)
_MODULES = [
    (None, "BMSGW-MIB: the battery bank, the gateway and its alarms"),
    ((1, 3, 6, 1, 6, 3, 1), "SNMPv2-MIB: system and snmp groups"),
    ((1, 3, 6, 1, 6, 3, 10), "SNMP-FRAMEWORK-MIB: snmpEngine group"),
    (MIB2 + (33,), "UPS-MIB: the battery bank as a UPS battery: ident, battery, alarms"),
    (MIB2 + (47,), "ENTITY-MIB: physical table of the bank, strings and sensors"),
    (MIB2 + (99,), "ENTITY-SENSOR-MIB: ambient, string and battery sensors"),
]

# ENTITY-SENSOR-MIB data types by SI unit
_SENSOR_TYPE = {"V": (4, "V DC"), "A": (5, "A"), "C": (8, "degrees C")}
_PERCENT_RH = (9, "%RH")
_SCALE_UNITS = 9


def good(reading: Reading | None) -> float | None:
    if reading is None or reading.quality is not Quality.GOOD or reading.value is None:
        return None
    return reading.value


def register_int(spec: PointSpec, reading: Reading | None) -> int:
    """The point's scaled integer as in its Modbus register, with the same not-available code."""
    words = northbound_words(good(reading), spec.dtype, spec.scale)
    if len(words) == 1:
        raw = words[0]
        return raw - 0x10000 if spec.dtype == "int16" and raw & 0x8000 else raw
    raw = (words[0] << 16) | words[1]
    return raw - 0x100000000 if spec.dtype == "int32" and raw & 0x80000000 else raw


def text(value: str, limit: int = 255) -> bytes:
    return value.encode("utf-8")[:limit]


@dataclass
class AgentData:
    """What the sections read: the gateway's data and the agent's own state."""

    store: PointStore
    pointmap: PointMap
    topology: Topology
    base: tuple[int, ...]
    site_name: str
    system: dict
    ups: dict
    entity_points: list[str]
    poll: dict
    started: float = field(default_factory=time.time)  # wall clock at agent start
    started_mono: float = field(default_factory=time.monotonic)
    counters: Callable[[], dict[str, int]] = dict
    engine: Callable[[], dict] = dict
    low_batt_time: Callable[[], int] = lambda: 5  # upsConfigLowBattTime (minutes)
    peukert: float = 1.25  # the analytics' SOC model (analytics.soc), for the run-time estimate
    rated_hours: float = 20.0

    def ticks(self) -> int:
        return int((time.monotonic() - self.started_mono) * 100) & 0xFFFFFFFF

    def stamp(self, wall: float) -> int:
        """TimeStamp of a wall-clock time: sysUpTime then, 0 when before the agent started."""
        if wall <= self.started:
            return 0
        return int((wall - self.started) * 100) & 0xFFFFFFFF


def gauge_fn(store: PointStore, ref: PointRef, spec: PointSpec) -> Callable[[], tuple[int, int] | None]:
    """A point's value as its register integer, or None while not available (never a stale number).

    ``gauge_codec`` on the point's reading; tests/test_snmp_fastpath.py checks it gives ``register_int``'s
    integers.
    """
    codec, get = gauge_codec(spec), store.get
    return lambda: codec(get(ref))


def gauge_codec(spec: PointSpec) -> Callable[[Reading | None], tuple[int, int] | None]:
    """A reading of family ``spec`` as its register integer, or None while not available: ``register_int``
    unrolled for the hot path (a cold walk encodes every value of the bank); one per family."""
    tag = ber.GAUGE32 if spec.dtype == "uint32" else ber.INTEGER
    lo, hi = value_range(spec.dtype)
    scale = spec.scale
    good_q = Quality.GOOD

    def codec(reading: Reading | None) -> tuple[int, int] | None:
        if reading is None or reading.quality is not good_q:
            return None
        v = reading.value
        if v is None or v != v or v in (_INF, -_INF):
            return None
        raw = int(round(v / scale))
        return tag, lo if raw < lo else hi if raw > hi else raw
    return codec


def counter_codec(reading: Reading | None) -> Value | None:
    """A counter point as a Counter32 (wrapping), or None while not available."""
    value = good(reading)
    return None if value is None else (ber.COUNTER32, int(value) & 0xFFFFFFFF)


def state_codec(spec: PointSpec) -> Callable[[Reading | None], Value]:
    """An enumerated point: always an INTEGER (notAvailable is one of the values)."""
    return lambda reading: (ber.INTEGER, register_int(spec, reading))


def vendor_section(data: AgentData) -> Section:
    sec = Section()
    objects = data.base + (1,)
    get = data.store.get
    codecs: dict[PointSpec, Callable[[Reading | None], Value | None]] = {}  # one per family
    for e in data.pointmap:
        spec = e.spec
        obj = objects + (e.oid[:3] if spec.scope in ("cell", "string") or spec.channels else e.oid[:2])
        index = e.oid[len(obj) - len(objects):]
        codec = codecs.get(spec)
        if codec is None:
            if spec.kind == "counter":
                codec = counter_codec
            elif spec.kind == "state" and spec.states:
                codec = state_codec(spec)
            else:
                codec = gauge_codec(spec)
            codecs[spec] = codec
        sec.point(obj, index, get, e.ref, codec)
    for e in data.pointmap.commands:  # writable names, not values: they read 0 (SET carries them out)
        obj = objects + (e.oid[:3] if e.spec.scope == "string" else e.oid[:2])
        sec.static(obj, e.oid[len(obj) - len(objects):], (ber.GAUGE32 if e.spec.dtype == "uint32" else ber.INTEGER, 0))
    return sec


def snmp_counter_fn(data: AgentData, name: str) -> ValueFn:
    """One of pysnmp's SNMP group counters, as a Counter32."""
    def fn() -> Value:
        return ber.COUNTER32, data.counters().get(name, 0) & 0xFFFFFFFF
    return fn


def system_section(data: AgentData) -> Section:
    sec = Section()
    sysc = data.system
    descr = sysc["description"] or f"bmsgw {__version__} battery monitoring gateway"
    sec.static(SYSTEM + (1,), (0,), (ber.OCTETS, text(descr)))
    sec.static(SYSTEM + (2,), (0,), (ber.OID, data.base))
    sec.add(SYSTEM + (3,), (0,), lambda: (ber.TIMETICKS, data.ticks()), volatile=True)
    sec.static(SYSTEM + (4,), (0,), (ber.OCTETS, text(sysc["contact"])))
    sec.static(SYSTEM + (5,), (0,), (ber.OCTETS, text(sysc["name"] or data.site_name)))
    sec.static(SYSTEM + (6,), (0,), (ber.OCTETS, text(sysc["location"])))
    sec.static(SYSTEM + (7,), (0,), (ber.INTEGER, 72))  # application + end-to-end
    sec.static(SYSTEM + (8,), (0,), (ber.TIMETICKS, 0))
    for i, (oid, what) in enumerate(_MODULES, start=1):
        sec.static(SYSTEM + (9, 1, 2), (i,), (ber.OID, oid or data.base))
        sec.static(SYSTEM + (9, 1, 3), (i,), (ber.OCTETS, text(what)))
        sec.static(SYSTEM + (9, 1, 4), (i,), (ber.TIMETICKS, 0))
    for col, name in ((1, "snmpInPkts"), (3, "snmpInBadVersions"), (4, "snmpInBadCommunityNames"),
                      (5, "snmpInBadCommunityUses"), (6, "snmpInASNParseErrs"), (31, "snmpSilentDrops"),
                      (32, "snmpProxyDrops")):
        sec.add(SNMP_GROUP + (col,), (0,), snmp_counter_fn(data, name), volatile=True)
    sec.static(SNMP_GROUP + (30,), (0,), (ber.INTEGER, 2))  # snmpEnableAuthenTraps: disabled
    sec.add(SNMP_ENGINE + (1,), (0,), lambda: (ber.OCTETS, data.engine().get("id", b"")), volatile=True)
    sec.add(SNMP_ENGINE + (2,), (0,), lambda: (ber.INTEGER, data.engine().get("boots", 1)), volatile=True)
    sec.add(SNMP_ENGINE + (3,), (0,), lambda: (ber.INTEGER, data.engine().get("time", 0)), volatile=True)
    sec.add(SNMP_ENGINE + (4,), (0,), lambda: (ber.INTEGER, data.engine().get("max_message_size", 65507)),
            volatile=True)
    return sec


@dataclass
class PhysicalRow:
    index: int
    descr: str
    contained_in: int
    klass: int  # chassis 3, container 5, sensor 8
    rel_pos: int
    name: str
    model: str = ""
    software: str = ""
    ref: PointRef | None = None
    spec: PointSpec | None = None


CHASSIS, BANK = 1, 2
STRING_BASE, SENSOR_BASE = 10, 100000


def physical_rows(data: AgentData) -> list[PhysicalRow]:
    """The entity tree: the gateway (chassis) holds the bank, the bank its strings, each its sensors.

    Indexes are stable: string ``s`` is 10+s, a sensor is 100000 + its point's Modbus address.
    """
    topo = data.topology
    rows = [PhysicalRow(CHASSIS, f"bmsgw {__version__} battery monitoring gateway", 0, 3, -1,
                        data.system["name"] or data.site_name, model="bmsgw", software=__version__),
            PhysicalRow(BANK, "Battery bank", CHASSIS, 5, 1, "Battery bank")]
    names = {}
    for pos, s in enumerate(topo.strings, start=1):
        bat = s.battery
        rows.append(PhysicalRow(STRING_BASE + s.id, f"Battery string {s.id}: {s.cells} x {bat.model}", BANK, 5,
                                pos + 1, s.name or f"String {s.id}", model=bat.model))
        names[s.id] = s.name or f"String {s.id}"
    wanted = set(data.entity_points)
    sensors = [e for e in data.pointmap if e.spec.id in wanted and e.spec.scope != "gateway"]
    siblings: dict[int, int] = {}
    for e in sorted(sensors, key=lambda e: e.address):
        spec, ref = e.spec, e.ref
        what = spec.name.replace("_", " ").replace(".", " ")
        if spec.scope == "cell":
            sid = require_position(ref.string, ref, "string")
            parent = STRING_BASE + sid
            name = f"{names[sid]} battery {ref.cell} {what}"
            descr = f"{spec.description}, string {sid} battery {ref.cell}"
        elif spec.scope == "string":
            sid = require_position(ref.string, ref, "string")
            parent = STRING_BASE + sid
            name = f"{names[sid]} {what}"
            descr = f"{spec.description}, string {sid}"
        else:
            parent = BANK
            name = spec.description if ref.channel is None else f"{spec.description} {ref.channel}"
            descr = spec.description
        siblings[parent] = siblings.get(parent, 0) + 1
        rel = siblings[parent] + (len(topo.strings) if parent == BANK else 0)
        rows.append(PhysicalRow(SENSOR_BASE + e.address, descr, parent, 8, rel, name, ref=ref, spec=spec))
    return rows


def sensor_kind(spec: PointSpec) -> tuple[int, str]:
    if spec.unit == "%" and "humid" in spec.id:
        return _PERCENT_RH
    return _SENSOR_TYPE.get(spec.unit, (1, spec.unit))


def entity_sections(data: AgentData) -> list[Section]:
    phys, sens = Section(), Section()
    store = data.store
    for row in physical_rows(data):
        idx = (row.index,)
        for col, value in ((2, (ber.OCTETS, text(row.descr))), (3, (ber.OID, ZERO_DOT_ZERO)),
                           (4, (ber.INTEGER, row.contained_in)), (5, (ber.INTEGER, row.klass)),
                           (6, (ber.INTEGER, row.rel_pos)), (7, (ber.OCTETS, text(row.name))),
                           (8, (ber.OCTETS, b"")), (9, (ber.OCTETS, b"")),
                           (10, (ber.OCTETS, text(row.software))), (11, (ber.OCTETS, b"")),
                           (12, (ber.OCTETS, b"")), (13, (ber.OCTETS, text(row.model))),
                           (14, (ber.OCTETS, b"")), (15, (ber.OCTETS, b"")),
                           (16, (ber.INTEGER, FALSE)), (17, (ber.OCTETS, bytes(8))), (18, (ber.OCTETS, b""))):
            phys.static(ENT_PHYSICAL_ENTRY + (col,), idx, value)
        spec = row.spec
        if row.ref is None or spec is None:  # not a sensor
            continue
        kind, units = sensor_kind(spec)
        precision = decimals(spec.scale) or 0
        rate = int(float(data.poll["slow_s" if spec.poll == "slow" else "fast_s"]) * 1000)
        sens.static(ENT_SENSOR_ENTRY + (1,), idx, (ber.INTEGER, kind))
        sens.static(ENT_SENSOR_ENTRY + (2,), idx, (ber.INTEGER, _SCALE_UNITS))
        sens.static(ENT_SENSOR_ENTRY + (3,), idx, (ber.INTEGER, precision))

        def sensor_value(ref: PointRef = row.ref, factor: int = 10 ** precision) -> Value:
            v = good(store.get(ref))
            if v is None:
                return ber.INTEGER, 0
            return ber.INTEGER, max(-1000000000, min(1000000000, round(v * factor)))

        def sensor_status(ref: PointRef = row.ref) -> Value:
            return ber.INTEGER, 1 if good(store.get(ref)) is not None else 2

        def changed_at(ref: PointRef = row.ref) -> Value:
            reading = store.get(ref)
            return ber.TIMETICKS, 0 if reading is None else data.stamp(reading.ts)

        sens.add(ENT_SENSOR_ENTRY + (4,), idx, sensor_value, dep=row.ref)
        sens.add(ENT_SENSOR_ENTRY + (5,), idx, sensor_status, dep=row.ref)
        sens.static(ENT_SENSOR_ENTRY + (6,), idx, (ber.OCTETS, text(units)))
        sens.add(ENT_SENSOR_ENTRY + (7,), idx, changed_at, dep=row.ref)
        sens.static(ENT_SENSOR_ENTRY + (8,), idx, (ber.GAUGE32, rate))
    phys.static(ENT_LAST_CHANGE, (0,), (ber.TIMETICKS, 0))
    return [phys, sens]


def alarm_prefix(base: tuple[int, ...]) -> tuple[int, ...]:
    return base + (1, ALARM_GROUP)
