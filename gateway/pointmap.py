"""The point map: one stable address, OID, metric name and JSON path for every point.

Every northbound face reads the point store through this map.  Addresses come from a formula over the
family's catalog slot and the point's place in the topology (see profiles/points.yaml and docs/register-map.md), so
adding a string, a cell or a new sensor type never moves a point that exists.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import GatewayError
from .points import PointRef, PointSpec
from .profiles import DeviceProfile, RegisterSpec
from .topology import MAX_CELLS, DeviceConfig, Topology

CELL_BASE, STRING_BASE, BANK_BASE, GATEWAY_BASE, COMMAND_BASE = 10000, 3000, 1000, 0, 9000
CELL_SLOT_SIZE, STRING_SIZE, CHANNEL_SLOT_SIZE, COMMAND_SLOT_SIZE = 1024, 500, 16, 100
SLOT_LIMIT = {"cell": 54, "string": 250, "bank": 125, "gateway": 62}
# Command families (kind: command) have slots of their own, 0..9: holding registers 9000 + slot*100 + index
# (the string, or the channel, counted from 0), read 0 and never in the input table.
COMMAND_SLOT_LIMIT = 10
# Slots kept free for third-party families (profiles/points.yaml): the core and its faces never take them.
THIRD_PARTY_SLOTS = {"cell": "40-53", "string": "150-249", "bank": "100-124", "gateway": "40-61"}
# OID suffixes below the MIB's objects node: (table, entry, column, index...) or (group, column, 0).
OID_GATEWAY, OID_BUS_TABLE, OID_BANK, OID_BANK_CHANNEL_TABLE, OID_STRING_TABLE, OID_CELL_TABLE = 1, 2, 3, 4, 5, 6
OID_COMMANDS, OID_STRING_COMMAND_TABLE = 8, 9  # 7 is the MIB's own alarm group

_UNIT_SUFFIX = {"V": ("volts", 1.0), "A": ("amperes", 1.0), "C": ("celsius", 1.0), "ohm": ("ohms", 1.0),
                "%": ("ratio", 0.01), "s": ("seconds", 1.0), "Ah": ("ampere_hours", 1.0),
                "unix_s": ("timestamp_seconds", 1.0), "S": ("siemens", 1.0), "W": ("watts", 1.0),
                "Hz": ("hertz", 1.0)}


class CatalogError(GatewayError):
    pass


class Catalog:
    """All known point families; refuses two families that would share an address."""

    def __init__(self, specs: Iterable[PointSpec] = ()) -> None:
        self._specs: dict[str, PointSpec] = {}
        self._origin: dict[str, str] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: PointSpec, origin: str = "catalog") -> None:
        old = self._specs.get(spec.id)
        if old is not None:
            if old == spec:
                return
            raise CatalogError(f"point family {spec.id} is already defined differently by {self._origin[spec.id]}")
        if spec.kind == "command":
            if spec.scope == "cell":
                raise CatalogError(f"{spec.id}: a command is a gateway, bank or string command (name the battery "
                                   "in the value written)")
            if not spec.writable:
                raise CatalogError(f"{spec.id}: a command family must be writable")
        limit = COMMAND_SLOT_LIMIT if spec.kind == "command" else SLOT_LIMIT[spec.scope]
        span = range(spec.slot, spec.slot + (spec.width if spec.scope == "cell" else 1))
        if span.stop > limit:
            raise CatalogError(f"{spec.id}: slot {spec.slot} is outside 0..{limit - 1} for "
                               + ("commands" if spec.kind == "command" else f"scope {spec.scope}")
                               + (" (a 32-bit cell family takes two slots)" if spec.width == 2 else ""))
        for other in self._specs.values():
            if (other.kind == "command") != (spec.kind == "command"):
                continue  # commands have a slot space of their own
            if spec.kind != "command" and other.scope != spec.scope:
                continue
            other_span = range(other.slot, other.slot + (other.width if other.scope == "cell" else 1))
            if set(span) & set(other_span):
                raise CatalogError(f"{spec.id} slot {spec.slot} overlaps {other.id} (slot {other.slot}, "
                                   f"from {self._origin[other.id]}); free slots for your families: "
                                   f"{THIRD_PARTY_SLOTS[spec.scope]}")
            if other.id.startswith(spec.id + ".") or spec.id.startswith(other.id + "."):
                raise CatalogError(f"{spec.id} and {other.id}: one id may not be a prefix of another")
        self._specs[spec.id] = spec
        self._origin[spec.id] = origin

    def __getitem__(self, pid: str) -> PointSpec:
        return self._specs[pid]

    def get(self, pid: str) -> PointSpec | None:
        return self._specs.get(pid)

    def __contains__(self, pid: str) -> bool:
        return pid in self._specs

    def __iter__(self) -> Iterator[PointSpec]:
        return iter(self._specs.values())


def require_position(value: int | None, owner: object, key: str) -> int:
    """A 1-based position the scope needs; a ref or device without it is a bug where it was made."""
    if value is None:
        raise ValueError(f"{owner}: a {key} number is needed for this scope")
    return value


def register_address(spec: PointSpec, ref: PointRef) -> int:
    """The 0-based Modbus register address of a point: the formula in profiles/points.yaml."""
    if spec.kind == "command":
        index = (ref.string or ref.channel or 1) - 1
        return COMMAND_BASE + spec.slot * COMMAND_SLOT_SIZE + index * spec.width
    if spec.scope == "cell":
        string, cell = require_position(ref.string, ref, "string"), require_position(ref.cell, ref, "cell")
        index = (string - 1) * MAX_CELLS + (cell - 1)
        return CELL_BASE + spec.slot * CELL_SLOT_SIZE + index * spec.width
    if spec.scope == "string":
        return STRING_BASE + (require_position(ref.string, ref, "string") - 1) * STRING_SIZE + spec.slot * 2
    base = BANK_BASE if spec.scope == "bank" else GATEWAY_BASE
    return base + spec.slot * CHANNEL_SLOT_SIZE + ((ref.channel or 1) - 1) * 2


def oid_suffix(spec: PointSpec, ref: PointRef) -> tuple[int, ...]:
    """OID below the MIB's objects node; table columns start at 2 (cell table: 3) after the index columns."""
    if spec.kind == "command":
        if spec.scope == "string":
            return (OID_STRING_COMMAND_TABLE, 1, spec.slot + 2, require_position(ref.string, ref, "string"))
        return (OID_COMMANDS, spec.slot + 1, ref.channel or 0)
    if spec.scope == "cell":
        return (OID_CELL_TABLE, 1, spec.slot + 3,
                require_position(ref.string, ref, "string"), require_position(ref.cell, ref, "cell"))
    if spec.scope == "string":
        return (OID_STRING_TABLE, 1, spec.slot + 2, require_position(ref.string, ref, "string"))
    if spec.scope == "bank":
        if spec.channels:
            return (OID_BANK_CHANNEL_TABLE, 1, spec.slot + 2, require_position(ref.channel, ref, "channel"))
        return (OID_BANK, spec.slot + 1, 0)
    if spec.channels:
        return (OID_BUS_TABLE, 1, spec.slot + 2, require_position(ref.channel, ref, "channel"))
    return (OID_GATEWAY, spec.slot + 1, 0)


def metric_name(spec: PointSpec) -> tuple[str, float]:
    """Prometheus name and the factor from the stored value to the metric's base unit."""
    suffix, factor = _UNIT_SUFFIX.get(spec.unit, ("", 1.0))
    if spec.metric:
        return spec.metric, factor
    name = "bms_" + spec.id.replace(".", "_")
    if suffix and not name.endswith("_" + suffix):
        name += "_" + suffix
    if spec.kind == "counter":
        name += "_total"
    return name, factor


def json_path(spec: PointSpec, ref: PointRef) -> str:
    name = spec.name.replace(".", "/")
    if spec.kind == "command":
        head = f"/strings/{ref.string}" if spec.scope == "string" else ""
        return f"{head}/commands/{name}" + (f"/{ref.channel}" if ref.channel is not None else "")
    if spec.scope == "cell":
        return f"/strings/{ref.string}/cells/{ref.cell}/{name}"
    if spec.scope == "string":
        return f"/strings/{ref.string}/{name}"
    head = f"/{spec.scope}/{name}"
    return head + (f"/{ref.channel}" if ref.channel is not None else "")


def metric_labels(spec: PointSpec, ref: PointRef) -> tuple[tuple[str, str], ...]:
    labels = []
    if ref.string is not None:
        labels.append(("string", str(ref.string)))
    if ref.cell is not None:
        labels.append(("cell", str(ref.cell)))
    if ref.channel is not None:
        labels.append(("bus" if spec.scope == "gateway" else "channel", str(ref.channel)))
    return tuple(labels)


@dataclass(frozen=True, slots=True)
class MappedPoint:
    ref: PointRef
    spec: PointSpec
    address: int
    oid: tuple[int, ...]
    metric: str
    metric_factor: float
    labels: tuple[tuple[str, str], ...]
    json_path: str


class PointMap:
    """Every point the configured bank has, with its northbound names; sorted by register address."""

    def __init__(self, catalog: Catalog, topology: Topology, profiles: dict[str, DeviceProfile],
                 buses: int | None = None) -> None:
        self.catalog = catalog
        self.topology = topology
        self._devices: dict[PointRef, DeviceConfig] = {}  # measured point -> the device that measures it
        for dev in topology.devices:
            prof = profiles[dev.profile]
            for reg in prof.registers:
                for ref in device_refs(prof, reg, dev, topology):
                    self._devices[ref] = dev
        refs = set(self._devices)
        refs.update(self._derived_refs(catalog, topology, buses if buses is not None else len(topology.buses)))
        entries = []
        # one metric name per family and one label tuple per position, shared by every point that has them
        # (a full bank has tens of thousands of points and a few hundred distinct names and label sets)
        names: dict[str, tuple[str, float]] = {}
        label_sets: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        for ref in refs:
            spec = catalog[ref.point]
            named = names.get(spec.id)
            if named is None:
                named = names[spec.id] = metric_name(spec)
            labels = metric_labels(spec, ref)
            labels = label_sets.setdefault(labels, labels)
            entries.append(MappedPoint(ref, spec, register_address(spec, ref), oid_suffix(spec, ref), named[0],
                                       named[1], labels, json_path(spec, ref)))
        entries.sort(key=lambda e: e.address)
        self.entries: tuple[MappedPoint, ...] = tuple(entries)
        self.by_ref: dict[PointRef, MappedPoint] = {e.ref: e for e in entries}
        self.by_address: dict[int, MappedPoint] = {e.address: e for e in entries}
        self.by_oid: dict[tuple[int, ...], MappedPoint] = {e.oid: e for e in entries}
        # Commands are writable names, not values: apart from the points every face reads and publishes.
        commands = []
        for ref in self._command_refs(catalog, topology):
            spec = catalog[ref.point]
            commands.append(MappedPoint(ref, spec, register_address(spec, ref), oid_suffix(spec, ref), "", 1.0,
                                        metric_labels(spec, ref), json_path(spec, ref)))
        commands.sort(key=lambda e: e.address)
        self.commands: tuple[MappedPoint, ...] = tuple(commands)
        self._commands_by_ref = {e.ref: e for e in commands}

    def get(self, ref: PointRef) -> MappedPoint | None:
        return self.by_ref.get(ref)

    def command(self, ref: PointRef) -> MappedPoint | None:
        return self._commands_by_ref.get(ref)

    @staticmethod
    def _command_refs(catalog: Catalog, topology: Topology) -> Iterator[PointRef]:
        for spec in catalog:
            if spec.kind != "command":
                continue
            if spec.scope == "string":
                for s in topology.strings:
                    yield PointRef(spec.id, s.id)
            elif spec.channels > 0:
                for ch in range(1, spec.channels + 1):
                    yield PointRef(spec.id, channel=ch)
            else:
                yield PointRef(spec.id)

    def device_of(self, ref: PointRef) -> DeviceConfig | None:
        """The configured device that measures ``ref`` (None for a derived point)."""
        return self._devices.get(ref)

    @staticmethod
    def _derived_refs(catalog: Catalog, topology: Topology, buses: int) -> Iterator[PointRef]:
        for spec in catalog:
            if spec.source != "derived" or spec.kind == "command":
                continue
            if spec.scope == "cell":
                for s in topology.strings:
                    for c in range(1, s.cells + 1):
                        yield PointRef(spec.id, s.id, c)
            elif spec.scope == "string":
                for s in topology.strings:
                    yield PointRef(spec.id, s.id)
            else:
                count = buses if spec.channels == -1 else spec.channels
                if count:
                    for ch in range(1, count + 1):
                        yield PointRef(spec.id, channel=ch)
                else:
                    yield PointRef(spec.id)

    def __iter__(self) -> Iterator[MappedPoint]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def refs(self, point: str | None = None, string: int | None = None) -> list[PointRef]:
        return [e.ref for e in self.entries
                if (point is None or e.ref.point == point) and (string is None or e.ref.string == string)]


def device_refs(prof: DeviceProfile, reg: RegisterSpec, dev: DeviceConfig, topology: Topology) -> Iterator[PointRef]:
    """The points one register of one device fills (a concentrator register fills one per cell)."""
    if reg.per_cell_stride:
        for c in range(1, topology.string(require_position(dev.string, dev.label, "string")).cells + 1):
            yield PointRef(reg.point, dev.string, c)
    elif prof.scope == "cell":
        yield PointRef(reg.point, dev.string, dev.cell)
    elif prof.scope == "string":
        yield PointRef(reg.point, dev.string)
    else:
        yield PointRef(reg.point, channel=reg.channel)

