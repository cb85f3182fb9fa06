"""Asynchronous Modbus RTU master over a serial port (pyserial opens and configures it; asyncio reads it).

One transport per bus, one transaction at a time.  Before each request it keeps the inter-frame silence the
RTU spec requires; replies are framed by the length the request implies, so no inter-character timer is
needed; anything left over from a late or garbled reply is discarded before the next request.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import serial
import serial.rs485

from ..errors import GatewayError
from ..topology import BusConfig
from .rtu import (
    READ_HOLDING,
    READ_INPUT,
    ExceptionResponse,
    FrameError,
    ModbusError,
    NoReply,
    PortUnavailable,
    crc_ok,
    frame_wire_time,
    parse_reply,
    reply_length,
)
from .timer import PreciseSleeper

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

    def count(self, error: ModbusError) -> None:
        if error.kind == "timeout":
            self.timeouts += 1
        elif error.kind == "exception":
            self.exceptions += 1
        else:
            self.crc_errors += 1


MAX_LATENESS = 2.0  # s: the longest a late reply is waited for before the next request to its slave


class PortError(GatewayError):
    """The serial port cannot be opened or configured as the bus config asks; the message says why."""


class RtuTransport:
    def __init__(self, bus: BusConfig, port: str | None = None, turnaround: float = 0.002) -> None:
        self.bus = bus
        self.port = port or bus.port
        self.counters = BusCounters()
        self.turnaround = turnaround
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._need = 0
        self._request = b""
        self._idle_since = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._sleeper = PreciseSleeper()
        # A slave that answers after its timeout: its late reply must not be taken for the answer to the next
        # request to it (Modbus RTU has no transaction id).  Per unit: when its requests that timed out went
        # out (their replies may still come), and how late its late replies came (from the strays dropped).
        self._outstanding: dict[int, deque[float]] = {}
        self._lateness: dict[int, float] = {}

    # -- port ------------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open and configure the port; raises PortError with what went wrong and what to do about it."""
        bus = self.bus
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
        self._serial = ser
        self._fd = ser.fileno()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._idle_since = time.monotonic()
        log.debug("opened %s for bus %s at %s baud", self.port, bus.name, bus.baud)

    def close(self) -> None:
        self._sleeper.close()
        if self._serial is not None:
            try:
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.remove_reader(self._fd)
            finally:
                self._serial.close()
                self._serial = None
                self._fd = -1

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    # -- I/O -------------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._port_lost(str(exc))
            return
        if not data:  # end of file on a serial device: it hung up
            self._port_lost("hung up")
            return
        self._buf += data
        self._idle_since = time.monotonic()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            buf = self._buf
            while len(buf) >= 2:
                if buf[0] != self._request[0] and self._drop_stray():
                    continue
                self._need = reply_length(self._request, buf)
                if len(buf) >= self._need:
                    waiter.set_result(None)
                break

    def _drop_stray(self) -> bool:
        """A late reply of another unit (a slow slave answering after its timeout) may sit in front of the
        reply we wait for: when the buffer starts with a whole, valid frame of another unit, drop it."""
        buf = self._buf
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
            # (bounded: a waiting bus serves nobody; a slave later than that is lost, not slow)
            self._lateness[unit] = min(max(self._lateness.get(unit, 0.0), arrived - waiting.popleft()), MAX_LATENESS)

    def late_from(self, unit: int) -> bool:
        """Did ``unit`` answer after its timeout lately (and not in time since)?  Tells a slave that is too slow
        for the bus's ``timeout_ms`` from one that is silent."""
        return unit in self._lateness

    def _port_lost(self, why: str) -> None:
        """The adapter was unplugged: fail the waiting request and close the port (a dead descriptor would
        otherwise wake the loop for ever); the engine reopens it, and says so, when it comes back."""
        log.error("bus %s: %s failed: %s", self.bus.name, self.port, why)
        waiter = self._waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(PortUnavailable(f"port error: {why}"))

    async def transact(self, request: bytes) -> list[int]:
        """Send one request and return the registers of its reply (raises ModbusError subclasses)."""
        async with self._lock:
            return await self._transact(request)

    async def _transact(self, request: bytes) -> list[int]:
        if self._serial is None:
            raise PortUnavailable("port is not open")
        bus = self.bus
        unit = request[0]
        not_before = self._idle_since + bus.silence
        waiting = self._outstanding.get(unit)
        drain: deque[float] | None = None  # the late slave's outstanding requests, forgotten once waited for
        if waiting:
            gone = time.monotonic() - self._lateness.get(unit, MAX_LATENESS) - bus.timeout_ms / 1000.0
            while waiting and waiting[0] < gone:
                waiting.popleft()  # its reply would have come by now: none will
            if waiting and unit in self._lateness:  # a known-late slave: let its late replies come, and go
                # (and half a timeout more: a slave's lateness varies a little, and so does our clock reading)
                not_before = max(not_before, waiting[-1] + self._lateness[unit] + bus.timeout_ms / 2000.0)
                drain = waiting
        await self._sleeper.sleep_until(not_before)
        loop = self._loop
        if self._serial is None or loop is None:
            raise PortUnavailable("port is not open")
        buf = self._buf
        if buf:  # whatever arrived since the last reply belongs to nobody; a whole frame is someone's late reply
            if any(len(buf) >= n and crc_ok(bytes(buf[:n])) for n in _frame_lengths(buf)):
                self._note_late(buf[0], self._idle_since)
            buf.clear()
            await self._sleeper.sleep_until(self._idle_since + bus.silence)
        if drain is not None:
            drain.clear()  # their late replies had their time: they came and were dropped, or never will
        self._request = request
        self._need = reply_length(request, b"")
        waiter = loop.create_future()
        self._waiter = waiter
        counters = self.counters
        counters.requests += 1
        counters.bytes_out += len(request)
        counters.wire_time += frame_wire_time(len(request), self._need, bus.char_time, bus.silence, self.turnaround)
        try:
            os.write(self._fd, request)
            sent = time.monotonic()
        except OSError as exc:
            self._waiter = None
            err = PortUnavailable(f"write failed: {exc}")
            counters.count(err)
            self._port_lost(f"write failed: {exc}")
            raise err from None
        timeout = bus.timeout_ms / 1000.0 + len(request) * bus.char_time
        handle = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except ModbusError as err:
            self._idle_since = time.monotonic()
            if self._buf:  # something came back, but not a whole reply: a framing fault, not silence
                err = FrameError(f"incomplete reply ({len(self._buf)} of {self._need} bytes)")
            elif err.kind == "timeout":
                self._outstanding.setdefault(unit, deque()).append(sent)
            counters.count(err)
            raise err from None
        except BaseException:  # cancelled: the bus was quiet at least since now
            self._idle_since = time.monotonic()
            raise
        finally:
            handle.cancel()
            self._waiter = None
        counters.reply_time += self._idle_since - sent
        # on success the silence is counted from the reply's last byte (stamped by _on_readable)
        reply = bytes(self._buf[: self._need])
        counters.bytes_in += len(self._buf)
        del self._buf[: self._need]
        try:
            words = parse_reply(request, reply)
        except (FrameError, ExceptionResponse) as err:
            counters.count(err)
            raise
        waiting = self._outstanding.get(unit)
        if waiting:
            # this may be the late reply to an earlier request that timed out (no transaction id tells): taken
            # as that, so the next request to this slave waits for the late reply to this one
            self._lateness[unit] = min(max(self._lateness.get(unit, 0.0), self._idle_since - waiting.popleft()),
                                       MAX_LATENESS)
            waiting.append(sent)
        else:
            self._lateness.pop(unit, None)  # answered in time
        return words


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
        return (5,)
    if buf[1] in (READ_HOLDING, READ_INPUT):
        return (5 + buf[2],)
    return (8,)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(NoReply("no reply"))
