"""The bank as configured: buses, strings, and the devices that measure them."""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_STRINGS = 4
MAX_CELLS = 256
MAX_CHANNELS = 8
MAX_BUSES = 8


@dataclass(frozen=True, slots=True)
class BusConfig:
    name: str
    port: str  # a serial device, or "sim" for the built-in simulator's pseudo-terminal
    baud: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_ms: int = 200
    retries: int = 1
    rs485: bool = False  # ask the kernel's RS485 mode to drive the transceiver's direction pin
    silence_ms: float | None = None  # inter-frame silence; None = 3.5 characters (1.75 ms above 19200 baud)
    index: int = 1  # 1-based bus number (the `bus` label / channel of gateway.bus_* points)

    @property
    def char_time(self) -> float:
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baud

    @property
    def silence(self) -> float:
        if self.silence_ms is not None:
            return self.silence_ms / 1000.0
        return 3.5 * self.char_time if self.baud <= 19200 else 0.00175


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One sensor on a bus.  ``string``/``cell`` say what it measures (cell-scope devices have both)."""

    profile: str
    bus: str
    address: int
    string: int | None = None
    cell: int | None = None
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.bus}:{self.address}"

    @property
    def label(self) -> str:
        where = []
        if self.string is not None:
            where.append(f"string {self.string}")
        if self.cell is not None:
            where.append(f"cell {self.cell}")
        what = self.name or self.profile
        return f"{what} at {self.bus} address {self.address}" + (f" ({', '.join(where)})" if where else "")


@dataclass(frozen=True, slots=True)
class BatteryConfig:
    model: str = "12V VRLA"
    nominal_voltage: float = 12.0
    cells_per_unit: int = 6  # 2 V cells inside one unit: 1, 3 or 6
    capacity_ah: float = 100.0
    chemistry: str = "vrla"


@dataclass(frozen=True, slots=True)
class StringConfig:
    id: int
    cells: int
    name: str = ""
    battery: BatteryConfig = field(default_factory=BatteryConfig)


@dataclass(frozen=True, slots=True)
class Topology:
    buses: tuple[BusConfig, ...]
    strings: tuple[StringConfig, ...]
    devices: tuple[DeviceConfig, ...]

    def string(self, sid: int) -> StringConfig:
        for s in self.strings:
            if s.id == sid:
                return s
        raise KeyError(sid)

    def bus(self, name: str) -> BusConfig:
        for b in self.buses:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def cell_count(self) -> int:
        return sum(s.cells for s in self.strings)
