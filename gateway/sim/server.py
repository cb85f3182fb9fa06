"""Modbus RTU slaves on pseudo-terminals: the simulated bank behind the real serial path.

One thread serves every bus: it reads request frames from each pty's master side and answers for every
device the config puts on that bus, encoding the model's values with each device's own profile (so any profile can be
simulated).  With ``wire_time`` on, a reply leaves no earlier than the physical bus would allow.  Faults
can be injected per bus or per device at any time.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
import os
import select
import struct
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from ..libc import set_timer_slack
from ..modbus import codecs
from ..modbus.rtu import (
    DEVICE_FAILURE,
    ILLEGAL_ADDRESS,
    ILLEGAL_FUNCTION,
    ILLEGAL_VALUE,
    READ_HOLDING,
    READ_INPUT,
    WRITE_MULTIPLE,
    WRITE_SINGLE,
    crc_ok,
    with_crc,
)
from ..pointmap import device_refs
from ..profiles import DeviceProfile
from ..topology import BusConfig, DeviceConfig, Topology
from .model import BankModel, SensorErrors

log = logging.getLogger(__name__)

FAULTS = ("none", "no_answer", "crc_error", "garbage", "slow")


@dataclass(slots=True)
class SimDevice:
    config: DeviceConfig
    profile: DeviceProfile
    address: int
    # (table, register address) -> (RegisterSpec, PointRef, word index within the value)
    registers: dict[tuple[str, int], tuple] = field(default_factory=dict)
    span: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (lowest, highest) mapped address
    fault: str = "none"
    slow_ms: float = 0.0
    serial: int = 0


class SimBus:
    """One simulated RS485 bus: a pseudo-terminal and the devices on it.  Served by the simulator's thread."""

    def __init__(self, sim: Simulator, bus: BusConfig, devices: list[SimDevice]) -> None:
        self.sim = sim
        self.bus = bus
        self.devices = {d.address: d for d in devices}
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.unplugged = False
        self.requests = 0
        self.turnaround = 0.002
        self.buf = bytearray()
        self.last_rx = 0.0
        self.busy_until = 0.0  # the wire is taken by a transaction until then
        self.dead = False

    def on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError:
            self.dead = True
            return
        if not data:  # the far end is gone
            self.dead = True
            return
        now = time.monotonic()
        if now - self.last_rx > 0.1:
            self.buf.clear()  # a silence ends any partial frame
        self.last_rx = now
        buf = self.buf
        buf += data
        while True:
            need = _request_length(buf)
            if need is None or len(buf) < need:
                break
            frame = bytes(buf[:need])
            del buf[:need]
            if not crc_ok(frame):
                buf.clear()
                break
            self._answer(frame, now)

    def _answer(self, frame: bytes, received: float) -> None:
        self.requests += 1
        if self.unplugged:
            return
        dev = self.devices.get(frame[0])
        if dev is None or dev.fault == "no_answer":
            return
        try:
            reply = self.sim.reply(dev, frame)
        except Exception:  # a simulator bug must not take the whole bus down: answer "device failure"
            log.exception("simulator: %s failed to answer %s", dev.config.label, frame.hex())
            reply = _exception(frame[0], frame[1], DEVICE_FAILURE)
        if reply is None:
            return
        if dev.fault == "crc_error":
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        elif dev.fault == "garbage":
            reply = bytes(self.sim.garbage_rng.randrange(256) for _ in range(len(reply)))
        due = received
        if self.sim.wire_time:
            # the request's characters, the silence that ends it, the turnaround, the reply's characters:
            # counted from when the request arrived (never before the wire is free), so the simulator's own
            # work is not added on top
            ct = self.bus.char_time
            due = max(received, self.busy_until) + (len(frame) + len(reply)) * ct + self.bus.silence + self.turnaround
            self.busy_until = due
        if dev.fault == "slow":
            due += dev.slow_ms / 1000.0  # a slow slave keeps only itself waiting; the bus serves the others
        self.sim.schedule(due, self, reply)

    def write(self, frame: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, frame)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def _request_length(buf: bytearray) -> int | None:
    if len(buf) < 2:
        return None
    function = buf[1]
    if function in (READ_HOLDING, READ_INPUT, WRITE_SINGLE):
        return 8
    if function == WRITE_MULTIPLE:
        return 9 + buf[6] if len(buf) >= 7 else None
    return 4  # unknown function: address, function, CRC (answered with an exception)


class Simulator:
    """The simulated bank for every bus of ``topology`` whose port is ``sim`` (or all buses)."""

    def __init__(self, topology: Topology, profiles: dict[str, DeviceProfile], seed: int = 1,
                 wire_time: bool = True, time_scale: float = 1.0, weak_cells: int = 3,
                 discharge_every_s: float = 0.0, discharge_duration_s: float = 1800.0,
                 buses: list[str] | None = None, model: BankModel | None = None,
                 encode_hook: Callable | None = None, ohmic_test_interval_s: float = 86400.0,
                 errors: SensorErrors | None = None, scenarios: list[dict] | None = None) -> None:
        import random

        self.topology = topology
        self.profiles = profiles
        self.wire_time = wire_time
        self.time_scale = time_scale
        self.encode_hook = encode_hook  # (profile, register, value) -> words | None, for vendor quirks
        self.garbage_rng = random.Random(seed + 7)
        self.model = model or BankModel(
            [(s.id, s.cells, s.battery.capacity_ah, s.battery.cells_per_unit) for s in topology.strings],
            seed=seed, weak_cells=weak_cells, discharge_every_s=discharge_every_s,
            discharge_duration_s=discharge_duration_s, ohmic_test_interval_s=ohmic_test_interval_s, errors=errors)
        for sc in scenarios or []:
            args = {k: v for k, v in sc.items() if k not in ("after_s", "kind")}
            self.model.schedule_scenario(self.model.t + float(sc["after_s"]), sc["kind"], **args)
        self._wall0 = time.time()
        self._sim0 = self.model.t
        names = buses if buses is not None else [b.name for b in topology.buses if b.port == "sim"]
        self.buses: dict[str, SimBus] = {}
        self._due: list[tuple[float, int, SimBus, bytes]] = []  # replies waiting for their time, a heap
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for bus in topology.buses:
            if bus.name not in names:
                continue
            devs = [self._sim_device(d, i) for i, d in enumerate(topology.devices) if d.bus == bus.name]
            self.buses[bus.name] = SimBus(self, bus, devs)

    def _sim_device(self, dev: DeviceConfig, serial: int) -> SimDevice:
        prof = self.profiles[dev.profile]
        sd = SimDevice(dev, prof, dev.address, serial=100000 + serial)
        vid = 0  # one id per value, so a read encodes each value once however many words it spans
        for reg in prof.registers:
            for k, ref in enumerate(device_refs(prof, reg, dev, self.topology)):
                address = reg.address + (k * reg.per_cell_stride if reg.per_cell_stride else 0)
                vid += 1
                for w in range(reg.count):
                    key = (reg.table, address + w)
                    # several bit fields may share a register: keep them all
                    prev = sd.registers.get(key)
                    entry = (reg, ref, w, vid)
                    sd.registers[key] = (prev + (entry,)) if prev else (entry,)
        ident = prof.identity
        if ident is not None:
            for w in range(ident.count):
                sd.registers[(ident.table, ident.address + w)] = (("identity", w),)
        for table in ("input", "holding"):
            addrs = [a for (t, a) in sd.registers if t == table]
            if addrs:
                sd.span[table] = (min(addrs), max(addrs))
        return sd

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> Simulator:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._serve, name="simulator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        for b in self.buses.values():
            b.close()

    def schedule(self, due: float, bus: SimBus, frame: bytes) -> None:
        """Send ``frame`` on ``bus`` at ``due`` (time.monotonic)."""
        self._seq += 1
        heapq.heappush(self._due, (due, self._seq, bus, frame))

    def _serve(self) -> None:
        """One thread serves every bus: read requests as they come, send replies when they are due."""
        set_timer_slack()  # wake on time for the wire-time pacing
        due = self._due
        while not self._stop.is_set():
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, bus, frame = heapq.heappop(due)
                bus.write(frame)
            timeout = 0.1 if not due else max(0.0, due[0][0] - time.monotonic())
            live = {b.master: b for b in self.buses.values() if not b.dead}
            try:
                ready = _wait_readable(list(live), timeout)
            except (OSError, ValueError):
                live = {fd: b for fd, b in live.items() if _fd_ok(fd)}
                if not live:
                    return
                continue
            for fd in ready:
                live[fd].on_readable()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def ports(self) -> dict[str, str]:
        return {name: b.path for name, b in self.buses.items()}

    def now(self) -> float:
        return self._sim0 + (time.time() - self._wall0) * self.time_scale

    # -- faults ----------------------------------------------------------------------------------------------
    def set_fault(self, bus: str, address: int | None, fault: str, slow_ms: float = 0.0) -> None:
        """``address`` None: the whole bus (``unplugged`` or ``none``); else one device."""
        if fault not in FAULTS + ("unplugged",):
            raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)} or unplugged")
        sb = self.buses[bus]
        if address is None:
            sb.unplugged = fault == "unplugged"
            if fault in ("none", "unplugged"):
                return
            for d in sb.devices.values():
                d.fault, d.slow_ms = fault, slow_ms
            return
        dev = sb.devices[address]
        dev.fault, dev.slow_ms = fault, slow_ms

    def readdress(self, bus: str, old: int, new: int) -> None:
        """A sensor replaced by one set to another address."""
        sb = self.buses[bus]
        dev = sb.devices.pop(old)
        dev.address = new
        sb.devices[new] = dev

    # -- answering -------------------------------------------------------------------------------------------
    def reply(self, dev: SimDevice, frame: bytes) -> bytes | None:
        unit, function = frame[0], frame[1]
        if function in (READ_HOLDING, READ_INPUT):
            address, count = struct.unpack_from(">HH", frame, 2)
            if not 1 <= count <= 125:
                return _exception(unit, function, ILLEGAL_VALUE)
            table = "holding" if function == READ_HOLDING else "input"
            words = self.read(dev, table, address, count)
            if words is None:
                return _exception(unit, function, ILLEGAL_ADDRESS)
            return with_crc(struct.pack(">BBB", unit, function, 2 * count) + struct.pack(f">{count}H", *words))
        if function == WRITE_SINGLE:
            address, value = struct.unpack_from(">HH", frame, 2)
            if not self.write(dev, address, [value]):
                return _exception(unit, function, ILLEGAL_ADDRESS)
            return frame
        if function == WRITE_MULTIPLE:
            address, count = struct.unpack_from(">HH", frame, 2)
            values = list(struct.unpack_from(f">{count}H", frame, 7))
            if not self.write(dev, address, values):
                return _exception(unit, function, ILLEGAL_ADDRESS)
            return with_crc(frame[:6])
        return _exception(unit, function, ILLEGAL_FUNCTION)

    def read(self, dev: SimDevice, table: str, address: int, count: int) -> list[int] | None:
        span = dev.span.get(table)
        if span is None or address < span[0] or address + count - 1 > span[1]:
            return None
        regs = dev.registers
        if not any((table, a) in regs for a in range(address, address + count)):
            return None  # nothing of this device there (reading through gaps between values is fine)
        model = self.model
        model.advance_to(self.now())
        values: dict = {}
        words = []
        with model.lock:
            for a in range(address, address + count):
                entries = dev.registers.get((table, a))
                if not entries:
                    words.append(0)
                    continue
                word = 0
                for entry in entries:
                    if entry[0] == "identity":
                        word |= self._identity_word(dev, entry[1])
                        continue
                    reg, ref, w, vid = entry
                    encoded = values.get(vid)
                    if encoded is None:
                        encoded = values[vid] = self._encode(dev, reg, ref)
                    word |= encoded[w]
                words.append(word)
        return words

    def _encode(self, dev: SimDevice, reg, ref) -> list[int]:
        model = self.model
        key = (ref.point, ref.string, ref.cell, ref.channel)
        if model.overrides and key in model.overrides:
            v = model.overrides[key]
            if v is None:  # the sensor says "not available"
                if reg.not_available is not None:
                    return codecs.words_from_raw(reg.not_available, "uint32" if reg.count == 2 else "uint16",
                                                 reg.word_order)
                return [0xFFFF] * reg.count
        elif ref.point in model.KNOWN_POINTS:
            v = model.measure(*key)
        else:
            # a family the physics does not know (a third-party sensor): the middle of its measuring range
            v = (reg.valid_range[0] + reg.valid_range[1]) / 2.0 if reg.valid_range else 0.0
        if self.encode_hook is not None:
            words = self.encode_hook(dev.profile, reg, v)
            if words is not None:
                return list(words)
        return codecs.encode(v, reg)

    def _identity_word(self, dev: SimDevice, w: int) -> int:
        ident = dev.profile.identity
        if ident is None:  # identity entries exist only for a profile with an identity block
            return 0
        if w == ident.model_offset:
            return ident.model_code
        if ident.vendor_offset is not None and ident.vendor_code is not None and w == ident.vendor_offset:
            return ident.vendor_code
        if ident.firmware_offset is not None and w == ident.firmware_offset:
            return 0x0103
        if ident.serial_offset is not None and w in (ident.serial_offset, ident.serial_offset + 1):
            return (dev.serial >> 16) & 0xFFFF if w == ident.serial_offset else dev.serial & 0xFFFF
        return 0

    def write(self, dev: SimDevice, address: int, values: list[int]) -> bool:
        for k, raw in enumerate(values):
            entries = dev.registers.get(("holding", address + k))
            if not entries:
                return False
            for entry in entries:
                if entry[0] == "identity" or not entry[0].writable:
                    return False
                reg, ref = entry[0], entry[1]
                value = codecs.decode([raw], reg)
                if value is None:  # the register's not-available code is no value to act on
                    return False
                self.model.write(ref.point, value, ref.channel, ref.string, ref.cell)
        return True


def _wait_readable(fds: list[int], timeout: float) -> list[int]:
    """Those of ``fds`` that can be read within ``timeout`` seconds.  select() waits to the microsecond (the
    replies' pacing needs it) but refuses a descriptor above 1023 (a gateway whose faces hold many connections
    may open its terminals there): then poll(), to the millisecond; a closed descriptor comes back as readable,
    and reading it says so."""
    if not fds or max(fds) < 1024:
        return select.select(fds, [], [], timeout)[0]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(timeout * 1000.0)]


def _fd_ok(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _exception(unit: int, function: int, code: int) -> bytes:
    return with_crc(bytes([unit, function | 0x80, code]))


def _model_settings(sim: dict) -> dict:
    """BankModel's arguments from the simulator section (its defaults filled in)."""
    return {key: sim[key] for key in ("seed", "weak_cells", "discharge_every_s", "discharge_duration_s",
                                      "ohmic_test_interval_s")} | {"errors": SensorErrors.from_config(sim)}


def model_from_config(config, scenarios: bool = True, **overrides) -> BankModel:
    """The simulated bank of a config (its strings, the simulator section's seed, errors and, unless
    ``scenarios`` is False, its scenarios), for simulated-time runs that need no serial ports
    (``gateway.simrun``); ``overrides``: BankModel's arguments (``t0``, ``age_years`` ...)."""
    sim = config.section("simulator")
    kwargs = {**_model_settings(sim), **overrides}
    model = BankModel([(s.id, s.cells, s.battery.capacity_ah, s.battery.cells_per_unit)
                       for s in config.topology.strings], **kwargs)
    for sc in sim["scenarios"] if scenarios else []:
        args = {k: v for k, v in sc.items() if k not in ("after_s", "kind")}
        model.schedule_scenario(model.t + float(sc["after_s"]), sc["kind"], **args)
    return model


def simulator_from_config(config, buses: list[str] | None = None, **overrides) -> Simulator:
    sim = config.section("simulator")
    kwargs = {**_model_settings(sim), "wire_time": sim["wire_time"], "time_scale": sim["time_scale"],
              "scenarios": sim["scenarios"], **overrides}
    return Simulator(config.topology, config.profiles, buses=buses, **kwargs)
