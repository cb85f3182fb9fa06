"""The polling engine: one asyncio task per RS485 bus (its port driven by the transport's thread, a batch of
devices at a time), block reads planned per device, stale marking.

Drivers (profiles and plugins) never do I/O; the engine owns every byte on the wire.  A device that stops
answering first gets its points marked STALE, then after ``stale_after_cycles`` failed cycles COMM_FAIL with
a communication-loss event; it is then tried only every ``lost_retry_s``, after the devices that answer and
within the bus's idle time or a small share of a busy bus's time, so it cannot slow its healthy neighbours,
and it recovers by itself when it answers again, its slow values too (its first read after a failure is a
full one).  While it is lost, the engine also looks for it at the
addresses nobody is polled at (a sensor replaced by one set to another address).  See ``_poll_bus``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import core_defaults
from .discovery import Discovery, DiscoveryReport
from .modbus import codecs
from .modbus.planner import Block, plan
from .modbus.rtu import (
    ExceptionResponse,
    ModbusError,
    PortUnavailable,
    expected_length,
    frame_wire_time,
    read_request,
    write_multiple_request,
    write_single_request,
)
from .modbus.transport import GroupResult, Outcome, PortError, RtuTransport
from .pointmap import device_refs
from .points import PointRef, PointStore, Quality, Reading
from .profiles import DeviceProfile, RegisterSpec
from .topology import BusConfig, DeviceConfig, Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommEvent:
    device: DeviceConfig
    lost: bool  # True: stopped answering; False: answers again
    ts: float
    reason: str
    refs: tuple[PointRef, ...]
    address: int = 0  # where it answered last (differs from ``device.address`` when it was found elsewhere)

    @property
    def moved(self) -> bool:
        """It answers again, at another address than the configured one (a readdressed or replaced sensor)."""
        return not self.lost and bool(self.address) and self.address != self.device.address


@dataclass(slots=True)
class DeviceState:
    device: DeviceConfig
    profile: DeviceProfile
    blocks: list[Block]  # a full cycle (fast and slow registers planned together)
    requests: list[bytes]
    refs: tuple[PointRef, ...]
    comm_ref: PointRef | None
    fast_blocks: list[Block] = field(default_factory=list)  # a fast-only cycle
    fast_requests: list[bytes] = field(default_factory=list)
    write_refs: tuple[PointRef, ...] = ()  # write-only registers' points (``poll: never``): never read
    # (block, request) pairs of a full and of a fast-only cycle, made when the address is set (every cycle's reads)
    full_reads: tuple[tuple[Block, bytes], ...] = ()
    fast_reads: tuple[tuple[Block, bytes], ...] = ()
    address: int = 0  # where it answers now (the configured address unless discovery adopted another)
    failures: int = 0
    lost: bool = False
    next_try: float = 0.0
    last_ok: float = 0.0
    last_error: str = ""
    # a failure marked its slow values (read every slow_s) stale too: its next read is a full one, so they are
    # current again as soon as it answers, not up to slow_s later
    slow_stale: bool = False

    def readdress(self, address: int) -> None:
        """Poll this device at ``address`` from now on (discovery adopted it there, or it is back)."""
        self.address = address
        self.requests = [read_request(address, b.function, b.start, b.count) for b in self.blocks]
        self.fast_requests = [read_request(address, b.function, b.start, b.count) for b in self.fast_blocks]
        self.full_reads = tuple(zip(self.blocks, self.requests, strict=True))
        self.fast_reads = tuple(zip(self.fast_blocks, self.fast_requests, strict=True))


@dataclass(slots=True)
class BusState:
    bus: BusConfig
    port: str
    devices: list[DeviceState]
    transport: RtuTransport | None = None
    cycles: int = 0
    last_duration: float = 0.0
    next_slow: float = 0.0
    task: asyncio.Task | None = None
    # the schedule (bus loop only): cycle k is due at the first cycle's start + k * fast_s
    busy_s: float = 0.0  # time spent in poll cycles, all of them
    missed: int = 0  # slots of the schedule in which no cycle started (the bus was still busy, or the loop blocked)
    late: int = 0  # cycles that started more than LATE_FRACTION of the interval after their slot began
    overruns: int = 0  # cycles that took longer than the interval
    last_lag: float = 0.0  # how long after its slot the last cycle started
    max_lag: float = 0.0
    missed_logged: int = 0  # missed cycles already told in the log (at most one warning per MISSED_LOG_S)
    missed_log_at: float = float("-inf")
    errors: list[str] = field(default_factory=list)
    open_error: str = ""  # why the port is not open ("" when it is)
    discovery: dict | None = None  # the last discovery report for this bus
    sweep_duration: float = 0.0  # the last cycle's time to read the devices that answered the cycle before
    last_attempts: int = 0  # devices tried in the last cycle
    silent: bool = False  # devices were tried in the last cycle and none answered
    probe_credit: float = 0.0  # seconds the bus may still spend on devices that do not answer
    search_ids: list[int] = field(default_factory=list)  # addresses still to try in this search sweep
    search_found: dict[int, str | None] = field(default_factory=dict)  # unconfigured ones that answered
    search_next: float = 0.0  # when the next search sweep may start (time.monotonic)
    # readings of this cycle not in the store yet: published together (see Engine.PUBLISH_S)
    unpublished: list = field(default_factory=list)
    unpublished_since: float = 0.0  # when the oldest of them was read (time.monotonic)
    wire_times: dict[bytes, float] = field(default_factory=dict)  # request -> its transaction's wire time

    def may_probe(self, until: float | None) -> bool:
        """May the bus spend a timeout on a device that may not answer?  Yes when the bus would idle that long
        before its next cycle anyway, else only within the share of its time granted to such tries."""
        if until is not None and time.monotonic() + self.bus.timeout_ms / 1000.0 <= until:
            return True
        return self.probe_credit > 0

    def charge(self, t0: float, until: float | None) -> None:
        """Count a try's time against the probe share, unless the bus had that time to spare."""
        end = time.monotonic()
        if until is None or end > until:
            self.probe_credit -= end - t0


@dataclass(slots=True)
class _Reads:
    """One device's reads in one cycle, tried once and then up to ``tries_left`` more times."""

    ds: DeviceState
    todo: list[tuple[Block, bytes]]  # not read yet (or failed and worth another try)
    tries_left: int
    ts: float  # when it was read (time.time(); the transport stamps it when the device's turn comes)
    at: float  # the same moment on time.monotonic()
    full: bool  # its slow registers too
    batch: list = field(default_factory=list)
    refused: list[Block] = field(default_factory=list)  # answered with an exception
    error: str = ""
    timed_out: bool = False
    answered: bool = False  # something came back from it (values or an exception) in the last try


class _Cycle:
    """One poll cycle of a bus: its tries, the reads waiting for a retry, and how many devices in a row have
    not answered (the bus may have fallen silent)."""

    def __init__(self, engine: Engine, bs: BusState) -> None:
        self.engine = engine
        self.bs = bs
        self.transport = bs.transport
        self.pending: list[_Reads] = []
        self.tried = self.answered = self.run = 0

    async def attempt(self, reads: _Reads) -> None:
        """One device's reads (a suspect, a retry): the bus's waiting readings go once they are due."""
        await self.attempt_many([reads])
        self.engine._publish_due(self.bs)

    async def attempt_many(self, batch: list[_Reads]) -> None:
        """Try these devices' reads once, in order (one batch for the bus's thread); what failed waits for a
        retry (not from a slave that answered late more than once)."""
        await self.engine._attempt(self.transport, batch)
        transport = self.transport
        for reads in batch:
            self.tried += 1
            self.answered += reads.answered
            self.run = 0 if reads.answered else self.run + 1
            late = reads.timed_out and transport is not None and transport.keeps_answering_late(reads.ds.address)
            if reads.todo and reads.tries_left > 0 and not late:  # a slave late again and again would be late again
                reads.tries_left -= 1
                self.pending.append(reads)
            else:
                self.engine._finish(reads)


class DeviceWriteError(Exception):
    """A write to a device that was not carried out (the bus is not open, the device did not answer)."""


LATE_FRACTION = 0.1  # a cycle that starts later than this share of the interval after its slot is late
MISSED_LOG_S = 600.0  # a bus that keeps missing cycles (too many devices for fast_s) is told once per 10 min


class Engine:
    # devices that do not answer (lost ones tried again, the search for moved sensors) may take at most this
    # share of a busy bus's time; on a bus with idle time between cycles they use that time instead
    PROBE_SHARE = 0.05
    # on a bus that did not answer at all the cycle before, this many silent devices make it a silent cycle
    SILENT_PROBES = 3
    # A bus's readings go into the store together, at the end of each batch of about this much wire time (see
    # _batches) or once the oldest has waited this long: every store write wakes each listener (alarms, history,
    # web, analytics), and one write per device (hundreds per cycle) cost more than the readings themselves.
    # Anything else the engine writes about a device (its quality, its communication status) publishes the
    # waiting readings first, so the store sees the same sequence of values as with one write per device.  A
    # quarter of a second keeps a crossing's way to the alarms well inside their 1 s budget
    # (bench/alarm_latency.py) and still makes a few writes of a 120-sensor cycle (1-2 s at 115200 baud)
    # instead of 120.
    PUBLISH_S = 0.25

    def __init__(self, topology: Topology, profiles: dict[str, DeviceProfile], store: PointStore,
                 poll: dict, ports: dict[str, str] | None = None,
                 decode_hook: Callable | None = None,
                 comm_callback: Callable[[CommEvent], None] | None = None,
                 discovery: dict | None = None, canonical: Callable[[PointRef], PointRef] | None = None) -> None:
        """``canonical``: the PointRef object to store each point under (``PointMap.canonical``)."""
        self.topology = topology
        self.canonical = canonical or (lambda ref: ref)
        self.profiles = profiles
        self.store = store
        self.buses: dict[str, BusState] = {}
        self.apply_config(poll)
        self.decode_hook = decode_hook
        self.hook_failures: set[tuple[str, str, int]] = set()  # (model, table, address) whose decoder raised
        self.comm_callback = comm_callback
        # gateway.discovery, defaults filled: {on_start, ids, adopt, search, search_every_s}
        self.discovery = dict(discovery if discovery is not None else core_defaults("gateway")["discovery"])
        self.finder = Discovery(self)
        self.started = time.time()
        self.poll_cycles = 0
        ports = ports or {}
        for bus in topology.buses:
            devs = [self._device_state(d) for d in topology.devices if d.bus == bus.name]
            self.buses[bus.name] = BusState(bus, ports.get(bus.name, bus.port), devs)

    def apply_config(self, poll: dict) -> None:
        """Take the ``gateway.poll`` settings (at start, and from a config reload while running, called in the
        event loop): poll periods, cycles until a silent device is lost, how often a lost one is retried.
        A shorter slow period applies from now, not once the longer one has run out."""
        self.fast_s = float(poll["fast_s"])
        self.slow_s = float(poll["slow_s"])
        self.stale_after = int(poll["stale_after_cycles"])
        self.lost_retry_s = float(poll["lost_retry_s"])
        due = time.monotonic() + self.slow_s
        for bs in self.buses.values():
            bs.next_slow = min(bs.next_slow, due)

    # -- planning --------------------------------------------------------------------------------------------
    def _device_state(self, dev: DeviceConfig) -> DeviceState:
        prof = self.profiles[dev.profile]
        entries, refs, write_refs = [], [], []
        canonical = self.canonical
        for reg in prof.registers:
            for k, ref in enumerate(map(canonical, device_refs(prof, reg, dev, self.topology))):
                if reg.poll == "never":  # a command the device carries out (start an ohmic test): only written
                    write_refs.append(ref)
                    continue
                address = reg.address + (k * reg.per_cell_stride if reg.per_cell_stride else 0)
                entries.append((reg.table, address, reg.count, reg.poll, reg, ref))
                refs.append(ref)
        blocks = plan(entries, prof.max_block, prof.max_gap, merge_poll=True)
        fast_blocks = plan([e for e in entries if e[3] == "fast"], prof.max_block, prof.max_gap)
        comm_ref = None
        if prof.scope == "cell":
            comm_ref = canonical(PointRef("cell.comm_status", dev.string, dev.cell))
        elif prof.scope == "string":
            comm_ref = canonical(PointRef("string.comm_status", dev.string))
        ds = DeviceState(dev, prof, blocks, [], tuple(dict.fromkeys(refs)), comm_ref, fast_blocks,
                         write_refs=tuple(write_refs))
        ds.readdress(dev.address)
        return ds

    def plan_summary(self) -> dict[str, dict]:
        out = {}
        for name, bs in self.buses.items():
            out[name] = {"devices": len(bs.devices), "blocks": sum(len(d.blocks) for d in bs.devices),
                         "registers": sum(b.count for d in bs.devices for b in d.blocks)}
        return out

    # -- life cycle ------------------------------------------------------------------------------------------
    async def open(self) -> None:
        for bs in self.buses.values():
            self._open_bus(bs)

    def _open_bus(self, bs: BusState) -> RtuTransport | None:
        """The bus's open transport; None when the port cannot be opened (reported once, retried every cycle,
        never fatal)."""
        transport = bs.transport
        if transport is not None and transport.is_open:
            return transport
        if transport is None:
            transport = bs.transport = RtuTransport(bs.bus, bs.port)
        try:
            transport.open()
        except Exception as exc:
            msg = str(exc) if isinstance(exc, PortError) else f"bus {bs.bus.name}: cannot open {bs.port}: {exc}"
            if msg != bs.open_error:
                bs.errors.append(msg)
                del bs.errors[:-20]
                log.error("%s", msg)
            bs.open_error = msg
            return None
        if bs.open_error:
            log.info("bus %s: %s is open again", bs.bus.name, bs.port)
        bs.open_error = ""
        return transport

    async def start(self) -> None:
        await self.open()
        for bs in self.buses.values():
            bs.task = asyncio.create_task(self._bus_loop(bs), name=f"bus-{bs.bus.name}")

    async def stop(self) -> None:
        tasks = [bs.task for bs in self.buses.values() if bs.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bs in self.buses.values():
            self._publish_readings(bs)
            bs.task = None
            if bs.transport:
                bs.transport.close()

    async def poll_once(self, slow: bool = True) -> None:
        """One full scan of every bus, in parallel (fast and, by default, slow registers)."""
        await self.open()
        await asyncio.gather(*(self._poll_bus(bs, slow, force=True) for bs in self.buses.values()))

    async def _bus_loop(self, bs: BusState) -> None:
        if self.discovery["on_start"]:
            try:
                await self.finder.discover_bus(bs.bus.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("bus %s: discovery failed: %s", bs.bus.name, exc)
        due = time.monotonic()
        while True:
            start = time.monotonic()
            due = self._schedule(bs, start, due)
            self._open_bus(bs)
            slow_due = start >= bs.next_slow
            if slow_due:
                bs.next_slow = start + self.slow_s
            try:
                await self._poll_bus(bs, slow_due, until=due + self.fast_s)  # the next cycle's slot
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus %s: poll cycle failed", bs.bus.name)
            if time.monotonic() - start > self.fast_s:
                bs.overruns += 1
            due += self.fast_s  # a fixed rate: the wake-up delay of one cycle does not push back the next ones
            delay = due - time.monotonic()
            if not bs.last_attempts:  # nothing was due (every device lost, fast_s 0): do not spin
                delay = max(delay, 0.05)
            await asyncio.sleep(max(delay, 0.0))

    def _schedule(self, bs: BusState, start: float, due: float) -> float:
        """Account for a cycle starting at ``start`` whose slot began at ``due``; returns the slot it runs in.

        A slot that went by entirely with no cycle started in it (the previous cycle overran it, or the event
        loop was blocked) is missed: counted, and the schedule moves on rather than polling twice in a row."""
        lag = start - due
        bs.last_lag = max(lag, 0.0)
        bs.max_lag = max(bs.max_lag, bs.last_lag)
        if lag >= self.fast_s > 0:
            skipped = int(lag // self.fast_s)
            bs.missed += skipped
            due += skipped * self.fast_s
            lag -= skipped * self.fast_s
            if start - bs.missed_log_at >= MISSED_LOG_S:
                log.warning("bus %s: %d poll cycle(s) missed since the last warning (this one started %.2f s after "
                            "its slot): the bus is busy for longer than gateway.poll.fast_s (%g s), or the gateway "
                            "was blocked", bs.bus.name, bs.missed - bs.missed_logged, bs.last_lag, self.fast_s)
                bs.missed_logged, bs.missed_log_at = bs.missed, start
        if lag > LATE_FRACTION * self.fast_s:
            bs.late += 1
        return due

    async def discover(self, ids: str | None = None) -> dict[str, DiscoveryReport]:
        """Scan every bus for ``ids``; see ``Discovery.discover``."""
        return await self.finder.discover(ids)

    # -- polling ---------------------------------------------------------------------------------------------
    async def _poll_bus(self, bs: BusState, slow: bool, force: bool = False, until: float | None = None) -> None:
        """One cycle of a bus.

        1. The devices that answered last time, in address order, so the ones that do not cannot delay them.
        2. Once each, the devices whose last cycle failed (retries and all: one more try says if they still do).
        3. The retries of this cycle's failed reads, late enough that a slow slave's late reply has come and been
           dropped rather than taken for the retry's answer (the transport learns how late a slave is and waits
           that long before asking it again); none for a slave late more than once in a row, none when the bus fell
           silent (``SILENT_PROBES`` devices in a row did not answer).
        4. The lost devices due for another try, then a search for lost sensors at other addresses.  These may
           use the time the bus would idle anyway before ``until`` (the next cycle's start), else at most
           ``PROBE_SHARE`` of its time.  When one answers again the others are tried at once (a bus plugged in
           again); on a bus where none answers, ``SILENT_PROBES`` of them per cycle, in turn.

        A bus that fell silent the cycle before (unplugged) is checked first with ``SILENT_PROBES`` devices
        spread over it; when none of them answers either, the others count as failed without a try: it is
        declared lost in seconds, not in three cycles of a timeout per device.  ``force`` (``poll_once``):
        every lost device is tried too.
        """
        start = time.monotonic()
        cycle = _Cycle(self, bs)
        lost_before = [ds for ds in bs.devices if ds.lost]
        healthy = [ds for ds in bs.devices if not ds.failures and not ds.lost]
        suspects = [ds for ds in bs.devices if ds.failures and not ds.lost]
        if bs.silent and len(healthy) + len(suspects) > self.SILENT_PROBES:
            healthy, suspects = await self._check_silent_bus(cycle, healthy, suspects, slow)
        sweep = [reads for ds in healthy if (reads := self._reads(ds, slow, bs.bus.retries)) is not None]
        for batch in self._batches(bs, sweep):
            await cycle.attempt_many(batch)
            self._publish_readings(bs)  # (a batch is about PUBLISH_S of wire time: its readings go together)
        bs.sweep_duration = time.monotonic() - start
        for ds in suspects:
            reads = self._reads(ds, slow, 0)
            if reads is not None:
                await cycle.attempt(reads)
        await self._retry(cycle)
        bs.silent = cycle.run >= self.SILENT_PROBES
        busy = time.monotonic() - start
        alive = any(not d.lost for d in bs.devices)
        await self._try_lost(cycle, bs, lost_before, slow, alive, force, until)
        if not force and alive:
            await self.finder.search(bs, until)
        self._end_cycle(bs, start, busy, cycle.tried)

    async def _check_silent_bus(self, cycle: _Cycle, healthy: list[DeviceState], suspects: list[DeviceState],
                                slow: bool) -> tuple[list[DeviceState], list[DeviceState]]:
        """The bus was silent last cycle: try ``SILENT_PROBES`` devices spread over it; when none answers, the
        others fail without a try.  Returns the healthy and suspect devices still to poll."""
        every, k = healthy + suspects, self.SILENT_PROBES
        check = [every[round(i * (len(every) - 1) / (k - 1))] for i in range(k)]
        for ds in check:
            reads = self._reads(ds, slow, 0)
            if reads is not None:
                await cycle.attempt(reads)
        if cycle.answered:
            return [ds for ds in healthy if ds not in check], [ds for ds in suspects if ds not in check]
        for ds in every:  # still silent: the others would time out one by one
            if ds in check:
                continue
            reads = self._reads(ds, slow, 0)
            if reads is not None:
                reads.error = "no device on the bus answers (silent or garbled bus)"
                self._finish(reads)
        return [], []

    async def _retry(self, cycle: _Cycle) -> None:
        """This cycle's failed reads again, in rounds, unless the bus fell silent meanwhile."""
        while cycle.pending:
            batch = cycle.pending[:]
            cycle.pending.clear()
            for reads in batch:
                if cycle.run >= self.SILENT_PROBES:  # the bus fell silent: retries would time out one by one
                    self._finish(reads)
                    continue
                await cycle.attempt(reads)

    async def _try_lost(self, cycle: _Cycle, bs: BusState, lost_before: list[DeviceState], slow: bool,
                        alive: bool, force: bool, until: float | None) -> None:
        """The lost devices due for another try, within the probe budget (all of them when one comes back)."""
        now = time.monotonic()
        comeback = False
        probes = 0
        for ds in sorted(lost_before, key=lambda d: d.next_try):
            if not (force or comeback):
                if ds.next_try > now:
                    break
                if alive and not bs.may_probe(until):
                    break
                if not alive and probes >= self.SILENT_PROBES:
                    break
            reads = self._reads(ds, slow, 0)
            if reads is None:
                continue
            t0 = time.monotonic()
            cycle.tried += 1
            await self._attempt(cycle.transport, [reads])
            self._finish(reads)
            probes += 1
            if alive and not comeback:
                bs.charge(t0, until)
            comeback = not ds.lost  # it answers again: so may the others (a bus plugged in again)

    def _end_cycle(self, bs: BusState, start: float, busy: float, tried: int) -> None:
        self._publish_readings(bs)
        bs.probe_credit = min(bs.probe_credit + self.PROBE_SHARE * busy, bs.bus.timeout_ms / 1000.0)
        bs.cycles += 1
        self.poll_cycles += 1
        bs.last_attempts = tried
        bs.last_duration = time.monotonic() - start
        bs.busy_s += bs.last_duration
        if bs.cycles == 1:
            log.info("bus %s: first poll cycle took %.2f s; %d of %d devices answer", bs.bus.name, bs.last_duration,
                     sum(1 for d in bs.devices if d.failures == 0), len(bs.devices))
        self._publish_bus(bs)

    def _batches(self, bs: BusState, sweep: list[_Reads]) -> list[list[_Reads]]:
        """``sweep`` in batches for the bus's thread of about ``PUBLISH_S`` of wire time each: one event loop
        wake-up per batch instead of several per transaction, and its readings, published at its end, reach the
        store within about ``PUBLISH_S`` of being read.  (Half that per batch, published every other one, took
        3-4 % more of the gateway's CPU in hand-offs between the loop and the bus threads, for alarms 60 ms
        sooner: bench/alarm_latency.py 178 -> 236 ms median, well inside its 1 s budget.)"""
        bus = bs.bus
        turnaround = bs.transport.turnaround if bs.transport is not None else 0.002
        budget = self.PUBLISH_S
        batches: list[list[_Reads]] = []
        batch: list[_Reads] = []
        spent = 0.0
        wire_times = bs.wire_times  # (the same requests every cycle: each worked out once)
        for reads in sweep:
            batch.append(reads)
            for _, request in reads.todo:
                wire = wire_times.get(request)
                if wire is None:
                    wire = wire_times[request] = frame_wire_time(len(request), expected_length(request),
                                                                 bus.char_time, bus.silence, turnaround)
                spent += wire
            if spent >= budget:
                batches.append(batch)
                batch, spent = [], 0.0
        if batch:
            batches.append(batch)
        return batches

    def _reads(self, ds: DeviceState, slow: bool, retries: int) -> _Reads | None:
        full = slow or ds.slow_stale
        todo = list(ds.full_reads if full else ds.fast_reads)
        if not todo:  # nothing of this device is due: no news about it either
            return None
        return _Reads(ds, todo, retries, time.time(), time.monotonic(), full)

    async def _attempt(self, transport: RtuTransport | None, batch: list[_Reads]) -> None:
        """One try at every read in each ``reads.todo`` of ``batch``, in one exchange with the bus's thread;
        what failed and may succeed when tried again stays there."""
        results: list[GroupResult] = []
        if transport is not None and transport.is_open:
            groups = [[request for _, request in reads.todo] for reads in batch]
            while len(results) < len(groups):  # a silent device ends an exchange: the rest go again
                got: list[GroupResult] = []
                with contextlib.suppress(PortUnavailable):  # it closed meanwhile: as below, nothing was tried
                    got = await transport.exchange(groups[len(results):])
                if not got:
                    break
                results.extend(got)
        for n, reads in enumerate(batch):
            if n < len(results):
                reads.ts, reads.at, outcomes = results[n]
            else:  # the port closed before its turn
                outcomes = []
            self._take(transport, reads, outcomes)

    def _take(self, transport: RtuTransport | None, reads: _Reads, outcomes: list[Outcome]) -> None:
        """What a device's reads got (``outcomes``, in order of ``reads.todo``; fewer when a timeout ended them
        or the port closed): decode the values, keep what failed and is worth another try."""
        todo = reads.todo
        if len(todo) == 1 and len(outcomes) == 1 and type(outcomes[0]) is list:  # the usual: one read, answered
            reads.timed_out, reads.answered = False, True
            self._decode_block(reads.ds, todo[0][0], outcomes[0], reads.ts, reads.batch)
            reads.todo = []
            return
        again: list[tuple[Block, bytes]] = []
        reads.timed_out = reads.answered = False
        for n, (block, request) in enumerate(todo):
            if n >= len(outcomes):  # not tried: the bus is not open (a timeout ends the loop below first)
                reads.error = "bus is not open"
                again.extend(todo[n:])
                break
            outcome = outcomes[n]
            if isinstance(outcome, ExceptionResponse):  # it answered: asking again would get the same answer
                reads.error = f"exception {outcome.code} reading {block.table} {block.start}+{block.count}"
                reads.refused.append(block)
                reads.answered = True
                continue
            if isinstance(outcome, ModbusError):
                reads.error = str(outcome) or outcome.kind
                if outcome.kind == "timeout":  # silent: do not spend a timeout on each of its other reads too
                    reads.timed_out = True
                    if transport is not None and transport.late_from(reads.ds.address):
                        reads.error = (f"replies too late (after the {transport.bus.timeout_ms} ms timeout: "
                                       f"raise timeout_ms of bus {transport.bus.name})")
                    again.extend(todo[n:])
                    break
                again.append((block, request))
                continue
            reads.answered = True
            self._decode_block(reads.ds, block, outcome, reads.ts, reads.batch)
        reads.todo = again

    def _finish(self, reads: _Reads) -> None:
        ds = reads.ds
        bs = self.buses.get(ds.device.bus)
        if (bs is not None and not reads.todo and not reads.refused and not ds.failures and not ds.lost
                and (ds.comm_ref is None or self.store.get(ds.comm_ref) is not None)):
            # the usual: a device in good standing read whole; what the general way below comes to, with less
            if reads.batch:
                if not bs.unpublished:
                    bs.unpublished_since = reads.at
                bs.unpublished.extend(reads.batch)
            ds.last_ok = reads.ts
            return
        if reads.batch:
            if bs is None:
                self.store.put_many(reads.batch)
            else:
                if not bs.unpublished:
                    bs.unpublished_since = reads.at
                bs.unpublished.extend(reads.batch)
        failed = reads.refused + [block for block, _ in reads.todo]
        ok = not failed
        if bs is not None and bs.unpublished and (
                not ok or ds.lost or (ds.comm_ref is not None and self.store.get(ds.comm_ref) is None)):
            self._publish_readings(bs)  # _account writes about this device: its readings go first
        if reads.batch or reads.refused:
            failed_refs = [item.ref for block in failed for item in block.items]
        else:  # not a word from it: none of its values is current, those read every slow_s neither
            failed_refs = list(ds.refs)
            ds.slow_stale = not ok and ds.full_reads != ds.fast_reads
        if ok and reads.full:
            ds.slow_stale = False
        self._account(ds, ok, reads.error, failed_refs, reads.ts)

    def _publish_due(self, bs: BusState) -> None:
        """After a device tried on its own (the sweep publishes after each of its batches): the bus's waiting
        readings go once the oldest has waited ``PUBLISH_S`` (one store write for them, not one per device
        finished after that moment)."""
        if bs.unpublished and time.monotonic() - bs.unpublished_since >= self.PUBLISH_S:
            self._publish_readings(bs)

    def _publish_readings(self, bs: BusState) -> None:
        """Put the bus's waiting readings into the store, in the order they were read."""
        if bs.unpublished:
            batch, bs.unpublished = bs.unpublished, []
            self.store.put_many(batch)

    def _decode_block(self, ds: DeviceState, block: Block, words: list[int], ts: float, batch: list) -> None:
        hook = self.decode_hook
        good, bad = Quality.GOOD, Quality.OUT_OF_RANGE
        append, new = batch.append, tuple.__new__  # (a Reading built as the tuple it is: no Python __new__)
        if hook is None:  # the usual case, a few hundred values a second: one tuple per item, no attribute reads
            for ref, decode, offset, low, high in block.checks():
                value = decode(words, offset)
                if value is None or value != value:  # not available
                    append((ref, new(Reading, (None, bad, ts))))
                else:
                    append((ref, new(Reading, (value, good if low <= value <= high else bad, ts))))
            return
        for item in block.items:
            reg: RegisterSpec = item.reg
            value = None
            if hook is not None:
                try:
                    value = hook(ds.profile, reg, words[item.offset: item.offset + reg.count])
                except Exception as exc:  # a plugin's fault: that value is not available, the bus goes on
                    self._hook_failed(ds, reg, exc)
                    batch.append((item.ref, Reading(None, bad, ts)))
                    continue
            if value is None:
                value = item.decode(words, item.offset)
            if value is None or value != value:  # not available (a plugin may say so with NaN)
                batch.append((item.ref, Reading(None, bad, ts)))
                continue
            rng = reg.valid_range
            quality = bad if rng is not None and not (rng[0] <= value <= rng[1]) else good
            batch.append((item.ref, Reading(value, quality, ts)))

    def _hook_failed(self, ds: DeviceState, reg: RegisterSpec, exc: Exception) -> None:
        """A plugin's decoder raised: said once per register of a profile (it would again every cycle)."""
        key = (ds.profile.model, reg.table, reg.address)
        if key not in self.hook_failures:
            self.hook_failures.add(key)
            log.error("a plugin's bmsgw_decode_register failed for %s %s register %d (%s): that value is reported "
                      "not available until the plugin is fixed", ds.profile.model, reg.table, reg.address, reg.point,
                      exc_info=exc)

    def _account(self, ds: DeviceState, ok: bool, error: str, failed_refs: list[PointRef], ts: float) -> None:
        if ok:
            ds.failures = 0
            ds.last_ok = ts
            if ds.lost:
                ds.lost = False
                where = f" at address {ds.address}" if ds.address != ds.device.address else ""
                log.info("%s answers again%s", ds.device.label, where)
                self._comm_event(ds, False, "answers again", ts)
            elif ds.comm_ref is not None and self.store.get(ds.comm_ref) is None:
                self.store.put(ds.comm_ref, 0.0, Quality.GOOD, ts)
            return
        ds.failures += 1
        ds.last_error = error
        store = self.store
        never_read = [r for r in (failed_refs or ds.refs) if store.get(r) is None]
        if never_read:  # no last value that could go stale: say at once that the device did not answer
            store.put_many([(r, Reading(None, Quality.COMM_FAIL, ts)) for r in never_read])
        if ds.failures >= self.stale_after:
            self.store.mark(ds.refs, Quality.COMM_FAIL)
            if not ds.lost:
                ds.lost = True
                log.warning("%s stopped answering: %s", ds.device.label, error)
                self._comm_event(ds, True, error, ts)
                bs = self.buses.get(ds.device.bus)
                if bs is not None and not bs.search_ids:
                    bs.search_next = 0.0  # a new loss: look for it (the first sweep may start at once)
            ds.next_try = time.monotonic() + self.lost_retry_s
        else:
            fresh = set(never_read)
            self.store.mark([r for r in (failed_refs or ds.refs) if r not in fresh], Quality.STALE)

    def _comm_event(self, ds: DeviceState, lost: bool, reason: str, ts: float) -> None:
        if ds.comm_ref is not None:
            self.store.put(ds.comm_ref, 1.0 if lost else 0.0, Quality.GOOD, ts)
        if self.comm_callback is not None:
            try:
                self.comm_callback(CommEvent(ds.device, lost, ts, reason, ds.refs, ds.address))
            except Exception:
                log.exception("communication event handler failed")

    def _publish_bus(self, bs: BusState) -> None:
        ts = time.time()
        ch = bs.bus.index
        c = bs.transport.counters if bs.transport else None
        items = [
            ("gateway.bus_poll_duration", bs.last_duration),
            ("gateway.bus_devices", float(len(bs.devices))),
            ("gateway.bus_devices_online", float(sum(1 for d in bs.devices if not d.lost and d.last_ok))),
            ("gateway.bus_cycles", float(bs.cycles)), ("gateway.bus_cycles_missed", float(bs.missed)),
            ("gateway.bus_cycles_late", float(bs.late)), ("gateway.bus_cycle_lag", bs.last_lag),
        ]
        if c is not None:
            items += [("gateway.bus_requests", float(c.requests)), ("gateway.bus_timeouts", float(c.timeouts)),
                      ("gateway.bus_crc_errors", float(c.crc_errors)), ("gateway.bus_exceptions", float(c.exceptions))]
        batch = [(PointRef(pid, channel=ch), Reading(v, Quality.GOOD, ts)) for pid, v in items]
        batch.append((PointRef("gateway.uptime"), Reading(ts - self.started, Quality.GOOD, ts)))
        batch.append((PointRef("gateway.poll_cycles"), Reading(float(self.poll_cycles), Quality.GOOD, ts)))
        self.store.put_many(batch)

    # -- status and writes -----------------------------------------------------------------------------------
    def device_states(self) -> list[DeviceState]:
        return [d for bs in self.buses.values() for d in bs.devices]

    def counters(self) -> dict[str, dict]:
        out = {}
        for name, bs in self.buses.items():
            c = bs.transport.counters if bs.transport else None
            out[name] = {
                "port": bs.port, "baud": bs.bus.baud, "cycles": bs.cycles,
                "last_cycle_s": round(bs.last_duration, 4), "busy_s": round(bs.busy_s, 3),
                "cycles_missed": bs.missed, "cycles_late": bs.late, "overruns": bs.overruns,
                "last_lag_s": round(bs.last_lag, 4), "max_lag_s": round(bs.max_lag, 4),
                "requests": c.requests if c else 0, "timeouts": c.timeouts if c else 0,
                "crc_errors": c.crc_errors if c else 0, "exceptions": c.exceptions if c else 0,
                "devices": len(bs.devices), "devices_lost": sum(1 for d in bs.devices if d.lost),
                "open": bool(bs.transport and bs.transport.is_open), "open_error": bs.open_error,
                "errors": list(bs.errors[-5:]),
                "sweep_s": round(bs.sweep_duration, 4), "late_replies": c.stray_replies if c else 0,
                "lost": [{"address": d.address, "device": d.device.label, "error": d.last_error}
                         for d in bs.devices if d.lost][:20],
                "moved": {str(d.device.address): d.address for d in bs.devices if d.address != d.device.address},
            }
            if bs.discovery is not None:
                out[name]["discovery"] = bs.discovery
        return out

    def writable(self, ref: PointRef) -> tuple[BusState, DeviceState, RegisterSpec] | None:
        for bs in self.buses.values():
            for ds in bs.devices:
                if ref not in ds.refs and ref not in ds.write_refs:
                    continue
                for reg in ds.profile.registers:
                    if reg.point == ref.point and reg.writable and (reg.channel is None or reg.channel == ref.channel):
                        return bs, ds, reg
        return None

    async def write_point(self, ref: PointRef, value: float) -> None:
        """Write a writable point to its device (e.g. the alarm relay) and publish the new value."""
        target = self.writable(ref)
        if target is None:
            raise DeviceWriteError(f"{ref} is not writable")
        bs, ds, reg = target
        if bs.transport is None or not bs.transport.is_open:
            raise DeviceWriteError(f"bus {bs.bus.name} is not open")
        words = codecs.encode(value, reg)
        if len(words) == 1:
            request = write_single_request(ds.address, reg.address, words[0])
        else:
            request = write_multiple_request(ds.address, reg.address, words)
        try:
            await bs.transport.transact(request)
        except ModbusError as exc:
            raise DeviceWriteError(f"writing {ref} to {ds.device.label} failed: {exc}") from exc
        if reg.poll != "never":  # a write-only register has no state to show
            self._publish_readings(bs)  # a value read before the write must not land after it
            self.store.put(ref, float(value), Quality.GOOD)

    def read_slow_soon(self, refs: list[PointRef]) -> None:
        """The next cycle of the buses holding ``refs`` reads the slow registers too (after an ohmic test
        started on demand, its results are wanted now, not at the next slow period)."""
        for bs in self.buses.values():
            if any(ref in ds.refs or ref in ds.write_refs for ds in bs.devices for ref in refs):
                bs.next_slow = 0.0

