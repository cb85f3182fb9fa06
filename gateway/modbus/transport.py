"""Modbus RTU master over a serial port: pyserial opens and configures it, a thread of the bus's own drives it.

One transport per bus, one transaction at a time.  Before each request it keeps the inter-frame silence the
RTU spec requires; replies are framed by the length the request implies, so no inter-character timer is
needed; anything left over from a late or garbled reply is discarded before the next request.

Why a thread: a bus makes a transaction every few milliseconds, and in the event loop each one cost a silence
timer, a reply wake-up and the task switches between them: over half of the gateway's CPU on the default bank.
The bus's thread waits with blocking calls that run no Python (clock_nanosleep for the silence, poll for the
reply), and the event loop hands it a batch of transactions at once (``exchange``: a poll cycle's devices a
few at a time) and wakes once for the batch's results.  The thread owns every read and write of the port;
the event loop only submits batches and takes results.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import serial
import serial.rs485

from ..errors import GatewayError
from ..libc import set_timer_slack
from ..topology import BusConfig
from .rtu import (
    EXCEPTION_LENGTH,
    READ_HOLDING,
    READ_INPUT,
    FrameError,
    ModbusError,
    NoReply,
    PortUnavailable,
    crc_ok,
    expected_length,
    frame_wire_time,
    parse_reply,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BusCounters:
    requests: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    wire_time: float = 0.0  # physical minimum of the transactions sent (for the scan-efficiency figure)
    stray_replies: int = 0  # late replies of other units dropped while waiting
    reply_time: float = 0.0  # request sent -> reply's last byte, summed over answered transactions

    def faults(self) -> tuple[int, int, int, int]:
        """The transaction counters that tell a bus's health (requests and their failures)."""
        return self.requests, self.timeouts, self.crc_errors, self.exceptions

    def set_faults(self, faults: tuple[int, int, int, int]) -> None:
        self.requests, self.timeouts, self.crc_errors, self.exceptions = faults

    def count(self, error: ModbusError) -> None:
        if error.kind == "timeout":
            self.timeouts += 1
        elif error.kind == "exception":
            self.exceptions += 1
        else:
            self.crc_errors += 1


MAX_LATENESS = 2.0  # s: the longest a late reply is waited for before the next request to its slave
PRECISE_S = 0.002  # waits shorter than this are slept exactly (clock_nanosleep); longer ones poll the port
MAX_PLANS = 4096  # read requests whose reply length is kept (a bus has a few hundred)
MAX_IDLE_BYTES = 1024  # what arrives between transactions is only looked at for a late reply: keep a bounded tail


class PortError(GatewayError):
    """The serial port cannot be opened or configured as the bus config asks; the message says why."""


Outcome = list[int] | ModbusError  # a request's registers ([] for a write), or why it failed


class GroupResult(NamedTuple):
    """One group of an ``exchange`` (one device's requests): when its turn came, and what each request got."""

    ts: float  # time.time() when its first request was about to go out
    at: float  # time.monotonic() at the same moment
    outcomes: list[Outcome]  # in order; shorter than the group when a timeout ended it (or the port closed)


@dataclass(slots=True, eq=False)
class _Job:
    groups: list[list[bytes]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[GroupResult]]
    results: list[GroupResult] = field(default_factory=list)
    cancelled: bool = False  # its caller gave up: nothing more of it is sent
    counted: bool = True  # False: its transactions leave the health counters as they were (see exchange)


class _Closing(Exception):
    """close() was called: the bus thread stops where it is."""


class _Cancelled(Exception):
    """The job's caller gave up during the silence before a request: the request is not sent."""


class RtuTransport:
    def __init__(self, bus: BusConfig, port: str | None = None, turnaround: float = 0.002) -> None:
        self.bus = bus
        self.port = port or bus.port
        self.counters = BusCounters()
        self.turnaround = turnaround
        # the bus's timing, read on every transaction (BusConfig computes them)
        self._silence = bus.silence
        self._char_time = bus.char_time
        self._timeout_s = bus.timeout_ms / 1000.0
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._buf = bytearray()
        self._idle_since = 0.0
        self._jobs: deque[_Job] = deque()
        self._urgent: deque[_Job] = deque()  # single requests (a write, a scan): between a batch's devices
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._poller: select.poll | None = None
        self._plans: dict[bytes, tuple[int, float]] = {}  # request -> (reply length, wire time); see _plan
        self._closing = False
        self.straight = True  # the usual transaction the straight way (see _transact)
        self._io_lock = threading.Lock()  # closing the port: the loop's close() or the thread on a lost port
        # A slave that answers after its timeout: its late reply must not be taken for the answer to the next
        # request to it (Modbus RTU has no transaction id).  Per unit: when its requests that timed out went
        # out (their replies may still come), and how late its late replies came (from the strays dropped).
        # Written by the bus thread only.
        self._outstanding: dict[int, deque[float]] = {}
        self._lateness: dict[int, float] = {}
        self._late_in_a_row: dict[int, int] = {}  # late replies since its last reply in time (keys: as above)

    # -- port ------------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open and configure the port and start the bus's thread; raises PortError with what went wrong and
        what to do about it."""
        bus = self.bus
        self._join()  # a thread that ended with a lost port has let go of it
        ser = serial.Serial()
        ser.port = self.port
        ser.baudrate = bus.baud
        ser.parity = bus.parity
        ser.stopbits = bus.stopbits
        ser.bytesize = bus.bytesize
        ser.timeout = 0
        ser.write_timeout = 0
        # an advisory lock (flock): a second program on the same bus (a `bmsgw dump` while the gateway polls)
        # would garble both's frames; it is told the port is busy instead
        ser.exclusive = True
        try:
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortError(f"bus {bus.name}: cannot open {self.port}: {_open_problem(exc)}") from None
        if bus.rs485:
            # The kernel drives the transceiver's direction pin (TIOCSRS485): exact timing, no user-space RTS.
            try:
                ser.rs485_mode = serial.rs485.RS485Settings(rts_level_for_tx=True, rts_level_for_rx=False)
            except (ValueError, OSError, NotImplementedError) as exc:
                ser.close()
                raise PortError(
                    f"bus {bus.name}: {self.port} does not support the kernel's RS485 mode ({exc}); set "
                    f"`rs485: false` for this bus when the adapter switches direction by itself") from None
        try:
            self._fd = ser.fileno()
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            self._poller = poller
            self._buf.clear()
            self._idle_since = time.monotonic()
            self._closing = False
            self._serial = ser
            self._thread = threading.Thread(target=self._run, name=f"bus-{bus.name}", daemon=True)
            self._thread.start()
        except (OSError, RuntimeError) as exc:  # out of descriptors or threads: let go of the port (its lock)
            self._serial = ser
            self._release()
            raise PortError(f"bus {bus.name}: cannot drive {self.port}: {exc}") from None
        log.debug("opened %s for bus %s at %s baud", self.port, bus.name, bus.baud)

    def close(self) -> None:
        """Stop the bus's thread (at once: it is woken from any wait) and close the port."""
        self._closing = True
        with self._io_lock:
            self._wake()
        self._join()
        self._release()

    def _join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)  # it wakes within a few ms; the bound is against a hung driver call
        self._thread = None

    def _release(self) -> None:
        """Close the port and the wake-up pipe (once, by whoever comes first: close() or a lost port)."""
        with self._io_lock:
            ser, self._serial = self._serial, None
            try:
                if ser is not None:
                    ser.close()
            except (OSError, serial.SerialException) as exc:
                log.warning("bus %s: closing %s: %s", self.bus.name, self.port, exc)
            finally:
                self._fd = -1
                for fd in (self._wake_r, self._wake_w):
                    if fd >= 0:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                self._wake_r = self._wake_w = -1
                self._poller = None
                # what was still queued will never be done: its callers hear the port is gone (under the lock:
                # exchange() queues nothing once the port is closed)
                for queue in (self._urgent, self._jobs):
                    while queue:
                        self._post(queue.popleft())

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def late_from(self, unit: int) -> bool:
        """Did ``unit`` answer after its timeout lately (and not in time since)?  Tells a slave that is too slow
        for the bus's ``timeout_ms`` from one that is silent."""
        return unit in self._lateness

    def keeps_answering_late(self, unit: int) -> bool:
        """Did ``unit`` answer late more than once since its last reply in time?  A retry of such a slave would
        be late again; a slave late once (busy with a measurement of its own) is worth asking again."""
        return self._late_in_a_row.get(unit, 0) > 1

    def _late(self, unit: int, lateness: float) -> None:
        """A reply of ``unit`` came ``lateness`` seconds after the request it answers."""
        # (bounded: a waiting bus serves nobody; a slave later than that is lost, not slow)
        self._lateness[unit] = min(max(self._lateness.get(unit, 0.0), lateness), MAX_LATENESS)
        self._late_in_a_row[unit] = self._late_in_a_row.get(unit, 0) + 1

    def _in_time(self, unit: int) -> None:
        if self._lateness.pop(unit, None) is not None:
            del self._late_in_a_row[unit]

    # -- the event loop's side -------------------------------------------------------------------------------
    async def exchange(self, groups: list[list[bytes]], urgent: bool = False,
                       counted: bool = True) -> list[GroupResult]:
        """Send the requests of ``groups`` in order, one transaction at a time, and return what each got.

        A group is one device's requests: a timeout ends it (the device is silent; its other requests would
        time out too), and the batch with it, so the caller hears of a silent device at once and sends the
        rest again; any other failure ends neither.  Fewer results than groups: a timeout ended the batch, or
        the port closed.  Cancelled, it sends nothing more (a request waiting out its silence is not sent).
        ``urgent``: goes before the queued batches, between two devices of the one under way.  ``counted``
        False: its requests and their failures are not counted (a scan's silence from ids nobody uses is not a
        communication fault); undone in the bus's thread, transaction by transaction, so what other callers
        send meanwhile is counted as usual (bytes and wire time are counted either way: the line was busy)."""
        loop = asyncio.get_running_loop()
        job = _Job(groups, loop, loop.create_future(), counted=counted)
        with self._io_lock:
            if self._serial is None:
                raise PortUnavailable("port is not open")
            (self._urgent if urgent else self._jobs).append(job)
            self._wake()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            with self._io_lock:
                self._wake()  # out of a long wait (a late slave's replies) for a caller that has gone
            raise

    async def transact(self, request: bytes, counted: bool = True) -> list[int]:
        """Send one request and return the registers of its reply (raises ModbusError subclasses); ``counted``:
        as in ``exchange``."""
        results = await self.exchange([[request]], urgent=True, counted=counted)
        if not results or not results[0].outcomes:
            raise PortUnavailable("port is not open")
        outcome = results[0].outcomes[0]
        if isinstance(outcome, ModbusError):
            raise outcome
        return outcome

    def _wake(self) -> None:
        """(Holding ``_io_lock``: the pipe is closed, and its number may be reused, under it.)"""
        with contextlib.suppress(OSError):  # the pipe is full (it is awake anyway) or closed (it has ended)
            os.write(self._wake_w, b"\0")

    @staticmethod
    def _post(job: _Job) -> None:
        """Hand a job's results to its event loop (from the bus thread)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            job.loop.call_soon_threadsafe(_settle, job)

    # -- the bus thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        set_timer_slack()  # the silence is slept in this thread
        job: _Job | None = None
        lost = False
        try:
            while True:
                job = self._next_job()
                self._do(job)
                self._post(job)
                job = None
        except _Closing:
            pass
        except PortUnavailable:
            lost = True
        except Exception:
            log.exception("bus %s: the bus thread failed", self.bus.name)
            lost = True
        finally:
            if lost:  # closed first, so the engine finds the port closed with the failed job's results
                self._release()
            if job is not None:
                self._post(job)

    def _next_job(self) -> _Job:
        """The next job; meanwhile the port is watched, so a late reply is stamped when it arrives."""
        while True:
            if self._closing:
                raise _Closing
            if self._urgent:
                return self._urgent.popleft()
            if self._jobs:
                return self._jobs.popleft()
            self._poll_read(None)
            if len(self._buf) > MAX_IDLE_BYTES:
                del self._buf[:-MAX_IDLE_BYTES]

    def _do(self, job: _Job) -> None:
        new = tuple.__new__  # (a GroupResult built as the tuple it is: no Python __new__ per device)
        for n, group in enumerate(job.groups):
            if job.cancelled:
                return
            while n and self._urgent:  # a write waits for one device's transactions, not a whole batch's
                urgent = self._urgent.popleft()
                try:
                    self._do(urgent)
                finally:
                    self._post(urgent)
            outcomes: list[Outcome] = []
            job.results.append(new(GroupResult, (time.time(), time.monotonic(), outcomes)))
            for request in group:
                faults = None if job.counted else self.counters.faults()
                try:
                    outcomes.append(self._transact(request, job))
                except _Cancelled:
                    return
                except PortUnavailable as err:
                    outcomes.append(err)
                    raise
                except ModbusError as err:
                    outcomes.append(err)
                    if err.kind == "timeout":
                        return  # (see exchange)
                finally:
                    if faults is not None:
                        self.counters.set_faults(faults)

    def _poll_read(self, timeout_ms: float | None) -> bool:
        """Wait up to ``timeout_ms`` (None: for ever) for bytes on the port or a wake-up; take what came.
        True when bytes came (stamped: the bus was busy until now)."""
        poller = self._poller
        if poller is None or self._closing:
            raise _Closing
        got = False
        for fd, _ in poller.poll(timeout_ms):
            if fd == self._wake_r:
                self._take_wake_up()
                continue
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise self._port_lost(str(exc)) from None
            if not data:  # end of file on a serial device: it hung up
                raise self._port_lost("hung up")
            self._buf += data
            self._idle_since = time.monotonic()
            got = True
        return got

    def _take_wake_up(self) -> None:
        """The wake-up pipe was written (a job queued, a caller gone, close()): empty it; stop when closing."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self._wake_r, 512)
        if self._closing:
            raise _Closing

    def _port_lost(self, why: str) -> PortUnavailable:
        """The adapter was unplugged: the request fails, the thread ends and closes the port (a dead descriptor
        would otherwise wake it for ever); the engine reopens it, and says so, when it comes back."""
        log.error("bus %s: %s failed: %s", self.bus.name, self.port, why)
        return PortUnavailable(f"port error: {why}")

    def _wait_quiet(self, not_before: float, job: _Job) -> None:
        """Wait until ``not_before``, and a whole silence after anything that arrives meanwhile (dropped, and
        noted when it is a late reply).  (The bus thread runs each transaction's Python right after a wake-up,
        with cold caches: every call and branch here costs several times what it costs in a loop.)"""
        now = start = time.monotonic()
        give_up = 0.0  # when the line is found busy: the time after which the request goes anyway
        buf = self._buf
        while True:
            if job.cancelled:
                raise _Cancelled
            wait = not_before - now
            if wait >= PRECISE_S:
                self._poll_read(wait * 1000.0 - 1.0)  # wakes early: the rest is slept exactly
            else:
                if wait > 0:
                    time.sleep(wait)
                if not self._poll_read(0) and not buf:
                    break
            if buf:
                if not give_up:
                    # a line that never falls quiet (noise, a talking device, a second master) would hold the
                    # request for ever: after this long it goes anyway, and what comes back says what is wrong
                    give_up = max(not_before, start) + max(self._timeout_s, 10 * self._silence)
                if time.monotonic() >= give_up:
                    buf.clear()
                    break
                self._drop_leftovers()
                not_before = min(max(not_before, self._idle_since + self._silence), give_up)
            now = time.monotonic()
        if job.cancelled:
            raise _Cancelled

    def _drop_leftovers(self) -> None:
        """Whatever arrived outside a transaction belongs to nobody; a whole frame is someone's late reply."""
        buf = self._buf
        if any(len(buf) >= n and crc_ok(bytes(buf[:n])) for n in _frame_lengths(buf)):
            self._note_late(buf[0], self._idle_since)
        buf.clear()

    def _drop_stray(self, request: bytes) -> bool:
        """A late reply of another unit (a slow slave answering after its timeout) may sit in front of the
        reply we wait for: when the buffer starts with a whole, valid frame of another unit, drop it."""
        buf = self._buf
        if buf[0] == request[0]:
            return False
        for length in _frame_lengths(buf):
            if len(buf) >= length and crc_ok(bytes(buf[:length])):
                self._note_late(buf[0], time.monotonic())
                del buf[:length]
                return True
        return False

    def _note_late(self, unit: int, arrived: float) -> None:
        log.debug("bus %s: dropped a late reply from unit %d", self.bus.name, unit)
        self.counters.stray_replies += 1
        waiting = self._outstanding.get(unit)
        if waiting:  # the reply to its oldest request that timed out
            self._late(unit, arrived - waiting.popleft())
            if not waiting:
                del self._outstanding[unit]

    def _plan(self, request: bytes) -> tuple[int, float]:
        """A request's normal reply length and wire time, worked out once: a poll cycle sends the same read
        requests again (writes, whose values vary, would only fill the table)."""
        expected = expected_length(request)
        plan = expected, frame_wire_time(len(request), expected, self._char_time, self._silence, self.turnaround)
        if request[1] in (READ_HOLDING, READ_INPUT) and len(self._plans) < MAX_PLANS:
            self._plans[request] = plan
        return plan

    def _transact(self, request: bytes, job: _Job) -> list[int]:
        """One transaction, in the bus thread (raises ModbusError subclasses, _Cancelled, _Closing).

        The usual one (no slave answering late, nothing arrived since the last reply, the line quiet through the
        silence, the whole reply in one read) goes the straight way below: the same system calls as the careful
        way, with less Python after each wake-up.  At the first sign of anything else it hands over to the
        careful way, at a point where nothing has been taken from the port yet (``straight`` False: always the
        careful way; tests/test_rtu_straight.py checks that both get the same)."""
        poller = self._poller
        if not self.straight or self._outstanding or self._buf or job.cancelled or poller is None or self._closing:
            return self._transact_carefully(request, job)
        wait = self._idle_since + self._silence - time.monotonic()
        if wait >= PRECISE_S:
            return self._transact_carefully(request, job)
        if wait > 0:
            time.sleep(wait)
        events = poller.poll(0)
        # a byte came during the silence (a wake-up alone, for the job just queued, is taken and is no reason)
        if events and (len(events) > 1 or events[0][0] != self._wake_r or self._poll_read(0)) or job.cancelled:
            return self._transact_carefully(request, job)
        expected, sent = self._send(request)
        timeout = self._timeout_s + len(request) * self._char_time
        events = poller.poll(timeout * 1000.0)
        fd = self._fd
        if len(events) == 1 and events[0][0] == fd:
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, InterruptedError):
                data = b""
            except OSError as exc:
                err = self._port_lost(str(exc))
                self.counters.count(err)
                raise err from None
            if len(data) == expected and data[0] == request[0]:  # (not another unit's late reply)
                self._idle_since = now = time.monotonic()  # the silence is counted from the reply's last byte
                counters = self.counters
                counters.reply_time += now - sent
                counters.bytes_in += expected
                try:
                    words = parse_reply(request, data)
                except ModbusError as err:
                    counters.count(err)
                    raise
                if self._lateness:
                    self._in_time(request[0])
                return words
            if data:  # a part of the reply, or more than it: the careful way frames it
                self._buf += data
                self._idle_since = time.monotonic()
        return self._receive(request, expected, sent, sent + timeout)

    def _transact_carefully(self, request: bytes, job: _Job) -> list[int]:
        """``_transact`` when anything may be unusual: a late slave's reply to wait out, bytes on the line."""
        unit = request[0]
        timeout = self._timeout_s
        not_before = self._idle_since + self._silence
        waiting = self._outstanding.get(unit) if self._outstanding else None
        drain: deque[float] | None = None  # the late slave's outstanding requests, forgotten once waited for
        if waiting:
            gone = time.monotonic() - self._lateness.get(unit, MAX_LATENESS) - timeout
            while waiting and waiting[0] < gone:
                waiting.popleft()  # its reply would have come by now: none will
            if waiting and unit in self._lateness:  # a known-late slave: let its late replies come, and go
                # (and half a timeout more: a slave's lateness varies a little, and so does our clock reading)
                not_before = max(not_before, waiting[-1] + self._lateness[unit] + timeout / 2)
                drain = waiting
        self._wait_quiet(not_before, job)
        if drain is not None:
            drain.clear()  # their late replies had their time: they came and were dropped, or never will
        if waiting is not None and not waiting:
            self._outstanding.pop(unit, None)  # none left: the straight way is open again
        expected, sent = self._send(request)
        return self._receive(request, expected, sent, sent + timeout + len(request) * self._char_time)

    def _send(self, request: bytes) -> tuple[int, float]:
        """Write the request (counted); its normal reply's length, and when it went."""
        expected, wire_time = self._plans.get(request) or self._plan(request)
        counters = self.counters
        counters.requests += 1
        counters.bytes_out += len(request)
        counters.wire_time += wire_time
        try:
            written = os.write(self._fd, request)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            raise self._write_failed(exc) from None
        if written < len(request):
            self._write_rest(request, written)
        return expected, time.monotonic()

    def _write_failed(self, exc: OSError) -> PortUnavailable:
        err = PortUnavailable(f"write failed: {exc}")
        self.counters.count(err)
        self._port_lost(f"write failed: {exc}")
        return err

    def _write_rest(self, request: bytes, written: int) -> None:
        """The port's output buffer is full (an adapter stalled by flow control, or a slow one): the rest of the
        request goes as room is made, within the bus's timeout; after that it fails like an unanswered one (its
        device is tried again), where it once was taken for a lost port."""
        deadline = time.monotonic() + self._timeout_s
        while written < len(request):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                err = NoReply(f"request not sent: the port's output stayed full for {self.bus.timeout_ms} ms")
                self.counters.count(err)
                raise err
            writable = select.poll()  # (poll, not select: the port's descriptor may be above 1023)
            writable.register(self._wake_r, select.POLLIN)
            writable.register(self._fd, select.POLLOUT)
            if any(fd == self._wake_r for fd, _ in writable.poll(remaining * 1000.0)):
                self._take_wake_up()
            try:
                written += os.write(self._fd, request[written:])
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise self._write_failed(exc) from None

    def _receive(self, request: bytes, expected: int, sent: float, deadline: float) -> list[int]:
        """Wait until ``deadline`` for the whole reply to ``request`` (what came of it may be in the buffer)."""
        unit = request[0]
        need = expected
        counters = self.counters
        buf = self._buf
        while True:
            if buf and buf[0] != unit:  # another unit's late reply in front of ours?
                while len(buf) >= 2 and self._drop_stray(request):
                    pass
            got = len(buf)
            if got >= 2:
                need = EXCEPTION_LENGTH if buf[1] & 0x80 else expected
                if got >= need:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._poll_read(remaining * 1000.0)
            except PortUnavailable as err:
                counters.count(err)
                raise
        if len(buf) < need:
            self._idle_since = time.monotonic()
            failure: ModbusError
            if buf:  # something came back, but not a whole reply: a framing fault, not silence
                failure = FrameError(f"incomplete reply ({len(buf)} of {need} bytes)")
            else:
                failure = NoReply("no reply")
                self._outstanding.setdefault(unit, deque()).append(sent)
            counters.count(failure)
            raise failure
        # the silence is counted from the reply's last byte (stamped by _poll_read)
        counters.reply_time += self._idle_since - sent
        reply = bytes(buf[:need])
        counters.bytes_in += len(buf)
        del buf[:need]
        try:
            words = parse_reply(request, reply)
        except ModbusError as err:
            counters.count(err)
            raise
        waiting = self._outstanding.get(unit) if self._outstanding else None
        if waiting:
            # this may be the late reply to an earlier request that timed out (no transaction id tells): taken
            # as that, so the next request to this slave waits for the late reply to this one
            self._late(unit, self._idle_since - waiting.popleft())
            waiting.append(sent)
        elif self._lateness:
            self._in_time(unit)
        return words


def _settle(job: _Job) -> None:
    if not job.future.done():
        job.future.set_result(job.results)


def _open_problem(exc: Exception) -> str:
    """Why a port did not open, in words that say what to do."""
    text = str(exc)
    errno_ = getattr(exc, "errno", None)
    if "exclusively lock" in text or errno_ == 16:
        return "the port is busy: another program has it open (a running bmsgw? stop it first)"
    if errno_ == 2 or "No such file" in text:
        return "no such device (is the adapter plugged in? `ls /dev/ttyS* /dev/ttyUSB*`)"
    if errno_ == 13 or "Permission denied" in text:
        return "permission denied (add the user to the dialout group)"
    return text


def _frame_lengths(buf: bytearray) -> tuple[int, ...]:
    """Lengths a reply starting at ``buf`` may have (exception, read, write echo)."""
    if len(buf) < 3:
        return ()
    if buf[1] & 0x80:
        return (EXCEPTION_LENGTH,)
    if buf[1] in (READ_HOLDING, READ_INPUT):
        return (5 + buf[2],)
    return (8,)
