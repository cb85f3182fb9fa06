"""Modbus TCP face: the point map as input registers (FC4), mirrored in holding registers (FC3).

A lean asyncio MBAP server, not pymodbus's: the pymodbus 3.16.1 TCP server answers only the first of several
requests that arrive in one TCP segment (its transport clears the receive buffer on every send), and it
costs about 5x the CPU per request of a plain asyncio protocol (see bench/modbus_tcp.py).  pymodbus is used
where it helps: the FC43/14 response encoder, imported by the first device-identification request (pymodbus
takes about 1 MB of the controller's memory); the exception and device-information codes are the spec's
numbers, the same as pymodbus's (tests/test_modbus_tcp.py beside this file checks them against it).

The register image (one word per protocol address, both tables) is encoded from the point store through
the point map: fully once at start, then only the points a store batch changed, lazily on the first request
after that batch.  A read is a bounds check and a slice of the image.  The rules (what a gap answers, when
exception 02 comes, unit ids, writes) are documented in README.md beside this file.
"""
from __future__ import annotations

import asyncio
import bisect
import enum
import logging
import struct
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ... import __version__
from ...commands import NotWritable, Principal, WriteDenied, WriteError, WriteFailed, WriteRejected
from ...config import address_allowed, listen_address, parse_networks
from ...modbus.codecs import northbound_words, raw_from_words
from ...net.limits import limits_from_section
from ...net.server import BoundedConnection, BoundedServer, LogLimiter
from ...pointmap import (
    BANK_BASE,
    CELL_BASE,
    CELL_SLOT_SIZE,
    CHANNEL_SLOT_SIZE,
    GATEWAY_BASE,
    STRING_BASE,
    STRING_SIZE,
    MappedPoint,
    PointMap,
    require_position,
)
from ...points import PointStore, Quality
from ...service import ReloadResult, Service
from ...topology import MAX_CELLS
from .schema import DEFAULT_LIMITS, LEGACY_LIMIT_KEYS, MAX_MBAP_LENGTH, SECTION

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config

log = logging.getLogger(__name__)


class ExcCodes(enum.IntEnum):
    """The Modbus exception codes answered (MODBUS Application Protocol 1.1b3, section 7)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_ADDRESS = 0x02
    ILLEGAL_VALUE = 0x03
    DEVICE_FAILURE = 0x04
    GATEWAY_NO_RESPONSE = 0x0B


class DeviceInformation(enum.IntEnum):
    """Read Device ID codes of FC43/14 (section 6.21)."""

    BASIC = 0x01
    REGULAR = 0x02
    EXTENDED = 0x03
    SPECIFIC = 0x04

READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE, MEI = 0x03, 0x04, 0x06, 0x10, 0x2B
MEI_DEVICE_ID = 0x0E
MAX_READ, MAX_WRITE = 125, 123
GAP_FILL = 0xFFFF  # registers inside a served range that no point occupies
CONFORMITY = 0x82  # regular identification, stream and individual access
MAX_BACKLOG = 64 * 1024  # bytes of pipelined requests held while a write is pending, then reading pauses
MAX_OUTPUT = 64 * 1024  # answers written per batch before checking whether the client still reads them

_HEADER = struct.Struct(">HHHB")
_READ_REQ = struct.Struct(">HH")
_READ_FRAME = struct.Struct(">HHHBBHH")  # a whole read request: MBAP header, function, address, count
_READ_RESP = struct.Struct(">HHHBBB")
_EXC = struct.Struct(">HHHBBB")

# -- the register image ----------------------------------------------------------------------------------------
def served_ranges(pointmap: PointMap) -> list[tuple[int, int]]:
    """The address ranges ``[start, end)`` the map serves, merged.

    A range is the block of the point map's layout a point sits in: a bank or gateway family's 16-register
    slot, a string's 500-register block, or a cell family's 256-battery slice of one string (512 registers
    for a 32-bit family).  Inside a range, registers no point occupies read ``GAP_FILL``; outside every range
    a read is refused with exception 02.
    """
    blocks = set()
    for e in pointmap:
        spec, ref = e.spec, e.ref
        if spec.scope == "cell":
            size = MAX_CELLS * spec.width
            start = CELL_BASE + spec.slot * CELL_SLOT_SIZE + (require_position(ref.string, ref, "string") - 1) * size
        elif spec.scope == "string":
            size = STRING_SIZE
            start = STRING_BASE + (require_position(ref.string, ref, "string") - 1) * STRING_SIZE
        else:
            size = CHANNEL_SLOT_SIZE
            start = (BANK_BASE if spec.scope == "bank" else GATEWAY_BASE) + spec.slot * CHANNEL_SLOT_SIZE
        blocks.add((start, start + size))
    return merge_ranges(blocks)


def merge_ranges(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


class RangeSet:
    """Membership of a whole ``[address, address+count)`` span in a set of merged ranges, by bisection."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = merge_ranges(ranges)
        self.starts = [s for s, _ in self.ranges]
        self.ends = [e for _, e in self.ranges]

    def covers(self, address: int, count: int) -> bool:
        i = bisect.bisect_right(self.starts, address) - 1
        return i >= 0 and address + count <= self.ends[i]


class RegisterImage:
    """Every served register as big-endian words in one bytearray, kept current from the point store.

    ``refresh()`` encodes the points changed since the last refresh; readers call it (cheaply) before
    slicing, so an idle store costs nothing and a busy one is encoded once per batch, not per request.
    The store may be written from any thread; the listener only records which points changed.
    """

    def __init__(self, pointmap: PointMap, store: PointStore) -> None:
        self.pointmap = pointmap
        self.store = store
        self.words = bytearray(b"\xff\xff" * 65536)  # GAP_FILL everywhere
        # where and how a point is encoded comes from the point map's entry (no table of its own per point)
        self._packers = {1: struct.Struct(">H"), 2: struct.Struct(">HH")}
        self._lock = threading.Lock()  # readers on several connections may refresh at once
        self.generation = -1  # the store generation the image was last brought up to (-1: never)
        self.encodes = 0  # points encoded so far (for tests and status)

    @property
    def stale(self) -> bool:
        return self.store.generation != self.generation

    def refresh(self) -> None:
        """Encode the points written since the last refresh (the store's change feed); everything the first
        time, or when the feed no longer reaches back that far."""
        with self._lock:
            generation, changed = self.store.changes_since(self.generation)
            entries = self.pointmap.by_ref
            refs = entries.keys() if changed is None else changed
            get, words, good, packers = self.store.get, self.words, Quality.GOOD, self._packers
            n = 0
            for ref in refs:
                e = entries.get(ref)
                if e is None:
                    continue
                spec = e.spec
                reading = get(ref)
                value = reading.value if reading is not None and reading.quality is good else None
                packers[spec.width].pack_into(words, 2 * e.address, *northbound_words(value, spec.dtype, spec.scale))
                n += 1
            self.encodes += n
            self.generation = generation

    def set_words(self, address: int, values: list[int]) -> None:
        struct.pack_into(f">{len(values)}H", self.words, 2 * address, *values)

    def read(self, address: int, count: int) -> list[int]:
        """Words as a client would see them (for tests and tools; the server slices ``words`` directly)."""
        if self.store.generation != self.generation:
            self.refresh()
        return list(struct.unpack_from(f">{count}H", self.words, 2 * address))


# -- writes ----------------------------------------------------------------------------------------------------
class WriteRefused(Exception):
    """A write the server answers with an exception code (logged by the caller)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class WriteTarget:
    """A writable holding register (two for a 32-bit value): a command or a writable point of the map."""

    start: int
    end: int
    entry: MappedPoint


# -- configuration helpers -------------------------------------------------------------------------------------

# -- the server ------------------------------------------------------------------------------------------------
def exception_frame(tid: int, unit: int, function: int, code: int) -> bytes:
    return _EXC.pack(tid, 0, 3, unit, (function | 0x80) & 0xFF, code)


class ModbusTcpService(Service):
    """The Modbus TCP server: the point map as registers, commands as writable holding registers."""

    name = SECTION
    sections = (SECTION, "site")
    face = True

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        self.gateway = gateway
        src = str(gateway.config.path)
        host, port = listen_address(cfg["listen"], f"{SECTION}.listen", src)
        self._settings(cfg, gateway.config)
        self.image = RegisterImage(gateway.pointmap, gateway.store)
        self.input_ranges = RangeSet(served_ranges(gateway.pointmap))
        self.targets: list[WriteTarget] = []
        self._target_starts: list[int] = []
        self._collect_write_targets()
        self.counters = {"requests": 0, "exceptions": 0, "writes": 0, "refused_writes": 0, "protocol_errors": 0}
        self.refusals = LogLimiter(log, "modbus tcp")
        # admission, eviction and deadlines: the policy every network face shares (gateway.net.server)
        self.server = BoundedServer(SECTION, lambda server: _Connection(self), host=host, port=port,
                                    limits=self.limits, allow_from=self.allow_from, src=src, counters=self.counters)

    def _settings(self, cfg: dict, config: Config) -> None:
        """Everything of the section but the listen address (which needs a new socket): taken at start and
        at a reload, between two requests (the event loop runs one thing at a time)."""
        src = str(config.path)
        self.cfg = cfg
        self.units = frozenset(cfg["unit_ids"])
        self.ignore_unknown_unit = cfg["unknown_unit"] == "ignore"
        self.limits = limits_from_section(cfg, DEFAULT_LIMITS, SECTION, src, legacy=LEGACY_LIMIT_KEYS)
        self.allow_from = parse_networks(cfg["allow_from"], src, f"{SECTION}.allow_from")
        self.writes_enabled = bool(cfg["writes"]["enabled"])
        self.write_allow = parse_networks(cfg["writes"]["allow_from"], src, f"{SECTION}.writes.allow_from")
        self.write_role = cfg["writes"]["role"]
        ident = cfg["identity"]
        self.identity: dict[int, bytes] = {
            0x00: ident["vendor_name"].encode(), 0x01: ident["product_code"].encode(),
            0x02: __version__.encode(), 0x03: ident["vendor_url"].encode(),
            0x04: ident["product_name"].encode(), 0x05: ident["model_name"].encode(),
            0x06: str(config.section("site")["name"]).encode()[:64],
        }

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def connections(self) -> set[BoundedConnection]:
        return self.server.connections

    # -- life cycle --------------------------------------------------------------------------------------------
    def _collect_write_targets(self) -> None:
        """The writable registers: every command of the map (9000 + slot*100 ...) and every writable point
        (the I/O module's relay).  Whether a write is carried out is decided by ``Gateway.write``."""
        pm = self.gateway.pointmap
        targets = [WriteTarget(e.address, e.address + e.spec.width, e)
                   for e in (*pm.commands, *(e for e in pm if e.spec.writable))]
        targets.sort(key=lambda t: t.start)
        self.targets = targets
        self._target_starts = [t.start for t in targets]
        commands = [(t.start, t.end) for t in targets if t.entry.spec.kind == "command"]
        for start, end in commands:
            self.image.set_words(start, [0] * (end - start))  # command registers read 0
        self.holding_ranges = RangeSet(self.input_ranges.ranges + commands)

    async def start(self) -> None:
        self.image.refresh()
        await self.server.start()  # BindError (a StartError) names the address and the reason
        if self.writes_enabled:
            if not self.write_allow:
                log.warning("modbus tcp: writes are enabled but writes.allow_from is empty: every write is refused")
            log.info("modbus tcp: writes enabled for %s (%s role) to %d registers",
                     ", ".join(map(str, self.write_allow)) or "nobody", self.write_role, len(self.targets))

    async def stop(self) -> None:
        await self.server.stop()

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Every setting applies at once: unit ids, identity, limits, allow-lists and writes from the next
        request; clients no longer in ``allow_from`` are disconnected; a new listen address is bound first and
        the old one kept when that fails."""
        result = ReloadResult()
        cfg = config.section(SECTION)
        self._settings(cfg, config)
        closed = self.server.apply(self.limits, self.allow_from)
        if closed:
            result.notes.append(f"{SECTION}: {closed} client connection(s) no longer in allow_from (or over the "
                                "new limits) closed")
        host, port = listen_address(cfg["listen"], f"{SECTION}.listen", str(config.path))
        await self.server.follow_listen(host, port, result, lambda: self.endpoints()[0])
        return result

    def endpoints(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"modbus-tcp://{host}:{self.port}"]

    def status(self) -> dict:
        return {**self.server.status(), **self.counters, "listen": self.endpoints()[0],
                "writes_enabled": self.writes_enabled, "image_generation": self.image.generation}

    # -- requests ----------------------------------------------------------------------------------------------
    def read_answer(self, frame: bytes | bytearray, pos: int = 0) -> bytes | None:
        """The answer to the whole 12-byte request at ``frame[pos:]`` when it is a read that the image answers
        (unit served, count and range valid); None for anything else, which ``handle`` then answers (or
        refuses) in full.  The common request, spelt out without the general path's slices and calls."""
        tid, _, _, unit, function, address, count = _READ_FRAME.unpack_from(frame, pos)
        if function == READ_INPUT:
            ranges = self.input_ranges
        elif function == READ_HOLDING:
            ranges = self.holding_ranges
        else:
            return None
        if not 1 <= count <= MAX_READ or unit not in self.units:
            return None
        i = bisect.bisect_right(ranges.starts, address) - 1
        if i < 0 or address + count > ranges.ends[i]:
            return None
        self.counters["requests"] += 1
        image = self.image
        if image.generation != image.store.generation:
            image.refresh()
        n = 2 * count
        return _READ_RESP.pack(tid, 0, n + 3, unit, function, n) + image.words[2 * address:2 * address + n]

    def handle(self, tid: int, unit: int, pdu: bytes, client: str):
        """The response frame for one request, None for no answer, or an awaitable of the frame (writes)."""
        self.counters["requests"] += 1
        function = pdu[0]
        if unit not in self.units:
            if self.ignore_unknown_unit:
                return None
            return self._exception(tid, unit, function, ExcCodes.GATEWAY_NO_RESPONSE)
        if function in (READ_INPUT, READ_HOLDING):
            if len(pdu) != 5:
                return self._exception(tid, unit, function, ExcCodes.ILLEGAL_VALUE)
            address, count = _READ_REQ.unpack_from(pdu, 1)
            if not 1 <= count <= MAX_READ:
                return self._exception(tid, unit, function, ExcCodes.ILLEGAL_VALUE)
            ranges = self.input_ranges if function == READ_INPUT else self.holding_ranges
            if not ranges.covers(address, count):
                return self._exception(tid, unit, function, ExcCodes.ILLEGAL_ADDRESS)
            image = self.image
            if image.generation != image.store.generation:
                image.refresh()
            n = 2 * count
            return _READ_RESP.pack(tid, 0, n + 3, unit, function, n) + image.words[2 * address:2 * address + n]
        if function in (WRITE_SINGLE, WRITE_MULTIPLE):
            return self._write(tid, unit, function, pdu, client)
        if function == MEI:
            return self._device_identification(tid, unit, pdu)
        return self._exception(tid, unit, function, ExcCodes.ILLEGAL_FUNCTION)

    def _exception(self, tid: int, unit: int, function: int, code: int) -> bytes:
        self.counters["exceptions"] += 1
        return exception_frame(tid, unit, function, code)

    def _device_identification(self, tid: int, unit: int, pdu: bytes) -> bytes:
        if len(pdu) < 2 or pdu[1] != MEI_DEVICE_ID:
            return self._exception(tid, unit, MEI, ExcCodes.ILLEGAL_FUNCTION)
        if len(pdu) != 4:
            return self._exception(tid, unit, MEI, ExcCodes.ILLEGAL_VALUE)
        read_code, object_id = pdu[2], pdu[3]
        if read_code == DeviceInformation.SPECIFIC:
            if object_id not in self.identity:
                return self._exception(tid, unit, MEI, ExcCodes.ILLEGAL_ADDRESS)
            info = {object_id: self.identity[object_id]}
        elif read_code in (DeviceInformation.BASIC, DeviceInformation.REGULAR, DeviceInformation.EXTENDED):
            last = 0x02 if read_code == DeviceInformation.BASIC else 0xFF
            if object_id not in self.identity or object_id > last:
                object_id = 0  # the spec: an unknown starting object restarts the stream at the first one
            info = {k: v for k, v in self.identity.items() if object_id <= k <= last}
        else:
            return self._exception(tid, unit, MEI, ExcCodes.ILLEGAL_VALUE)
        from pymodbus.pdu.mei_message import ReadDeviceInformationResponse

        response = ReadDeviceInformationResponse(read_code=read_code, information=info)
        response.conformity = CONFORMITY
        body = bytes([MEI]) + response.encode()
        return _HEADER.pack(tid, 0, len(body) + 1, unit) + body

    def _write(self, tid: int, unit: int, function: int, pdu: bytes, client: str):
        if function == WRITE_SINGLE:
            if len(pdu) != 5:
                return self._exception(tid, unit, function, ExcCodes.ILLEGAL_VALUE)
            address, value = _READ_REQ.unpack_from(pdu, 1)
            count, values = 1, [value]
            echo = pdu
        else:
            if len(pdu) < 6:
                return self._exception(tid, unit, function, ExcCodes.ILLEGAL_VALUE)
            address, count = _READ_REQ.unpack_from(pdu, 1)
            if not 1 <= count <= MAX_WRITE or pdu[5] != 2 * count or len(pdu) != 6 + 2 * count:
                return self._exception(tid, unit, function, ExcCodes.ILLEGAL_VALUE)
            values = list(struct.unpack_from(f">{count}H", pdu, 6))
            echo = pdu[:5]
        try:
            plan = self._plan_write(address, count, client)
        except WriteRefused as exc:
            self.counters["refused_writes"] += 1
            self.refusals.warning("modbus tcp: write refused (exception %02X): client %s unit %d function %d "
                                  "address %d count %d: %s", exc.code, client, unit, function, address, count, exc)
            return self._exception(tid, unit, function, exc.code)
        return self._run_write(tid, unit, function, address, values, plan, client, echo)

    def _plan_write(self, address: int, count: int, client: str) -> list[WriteTarget]:
        if not self.writes_enabled:
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, "writes are disabled (modbus_tcp.writes.enabled)")
        if not address_allowed(client, self.write_allow):
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, "client not in modbus_tcp.writes.allow_from")
        end = address + count
        plan, pos = [], address
        i = bisect.bisect_right(self._target_starts, address) - 1
        i = max(i, 0)
        while pos < end:
            while i < len(self.targets) and self.targets[i].end <= pos:
                i += 1
            if i >= len(self.targets) or self.targets[i].start != pos or self.targets[i].end > end:
                raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, f"register {pos} is not a writable register "
                                   "(or a 32-bit value written in part)")
            plan.append(self.targets[i])
            pos = self.targets[i].end
        return plan

    async def _run_write(self, tid, unit, function, address, values, plan, client, echo) -> bytes:
        """Each target of the request through ``Gateway.write``, in address order; the first refusal answers."""
        by = Principal("modbus", self.write_role, "modbus", client)
        for target in plan:
            words = values[target.start - address:target.end - address]
            spec, ref = target.entry.spec, target.entry.ref
            value = raw_from_words(words, spec.dtype, "big") * spec.scale
            try:
                await self.gateway.write(ref, value, by)
            except (NotWritable, WriteDenied) as exc:
                return self._refused(tid, unit, function, ExcCodes.ILLEGAL_ADDRESS, client, ref, words, exc)
            except WriteRejected as exc:
                return self._refused(tid, unit, function, ExcCodes.ILLEGAL_VALUE, client, ref, words, exc)
            except WriteFailed as exc:
                return self._refused(tid, unit, function, ExcCodes.GATEWAY_NO_RESPONSE, client, ref, words, exc)
            except WriteError as exc:
                return self._refused(tid, unit, function, ExcCodes.DEVICE_FAILURE, client, ref, words, exc)
            self.counters["writes"] += 1
        return _HEADER.pack(tid, 0, len(echo) + 1, unit) + echo

    def _refused(self, tid, unit, function, code, client, name, words, exc) -> bytes:
        self.counters["refused_writes"] += 1
        self.refusals.warning("modbus tcp: write of %s to %s by %s failed (exception %02X): %s",
                              words, name, client, code, exc)
        return self._exception(tid, unit, function, code)


class _Connection(BoundedConnection):
    """One client: frames MBAP requests out of the byte stream and answers every one, in order.  Admission,
    eviction and the idle / request / send deadlines are the bounded server's (``gateway.net.server``)."""

    def __init__(self, service: ModbusTcpService) -> None:
        super().__init__(service.server)
        self.service = service
        self.client = "?"
        self.buf = bytearray()
        self.pending: asyncio.Future | None = None
        self.eof = False

    def opened(self) -> None:
        self.client = self.peer
        log.debug("modbus tcp: connection from %s", self.client)

    # a pending write is left to finish when the connection goes: cancelling it mid-transaction would upset
    # the RS485 bus

    def eof_received(self):
        """The client will send no more (e.g. ``nc -N``): answer what it sent, then close."""
        self.eof = True
        if self.pending is None and not self.writing_paused:
            return None  # everything it sent is answered (a partial request never will be): close
        return True  # _process() closes once the pending write and the held-back requests are answered

    # -- flow control: a client that does not read its answers stops being read ----------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        self._update_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.pending is None and not self.closed and (len(self.buf) >= 7 or self.eof):
            self._process()  # requests held back while the client was not reading its answers
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        if self.closed:
            return
        if self.buf and self.pending is None and not self.writing_paused:  # part of a request awaits the rest
            self.request_started()
        self.set_reading_paused(self.writing_paused or (self.pending is not None and len(self.buf) > MAX_BACKLOG))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.buf and self.pending is None and len(data) >= 7:
            # fast path: the common case is exactly one whole request per segment
            tid, proto, length, unit = _HEADER.unpack_from(data)
            if proto == 0 and 2 <= length <= MAX_MBAP_LENGTH and len(data) == 6 + length:
                # request_complete(), spelt out: no request was arriving (buf is empty), so only the idle clock
                # restarts, and a first request proves the connection
                self.last_activity = self.loop.time()
                if not self.proven:
                    self.request_complete()
                if length == 6 and (response := self.service.read_answer(data)) is not None:
                    self.transport.write(response)
                    return
                response = self.service.handle(tid, unit, data[7:], self.client)
                if response is None:
                    return
                if isinstance(response, (bytes, bytearray)):
                    self.transport.write(response)
                    return
                self._await(response)
                return
        self.buf += data
        if self.pending is None:
            self._process()
        else:
            self._update_reading()

    def _process(self) -> None:
        out: list[bytes | bytearray] = []
        buf, pos, size = self.buf, 0, 0
        handle, read_answer = self.service.handle, self.service.read_answer
        while len(buf) - pos >= 7:
            if size >= MAX_OUTPUT:  # a client pipelining faster than it reads: let the transport say when
                self.transport.write(b"".join(out))
                out, size = [], 0
                if self.writing_paused or self.closed:
                    break  # resume_writing() goes on with the rest of buf
            tid, proto, length, unit = _HEADER.unpack_from(buf, pos)
            if proto != 0 or not 2 <= length <= MAX_MBAP_LENGTH:
                self.service.counters["protocol_errors"] += 1
                self.service.refusals.warning("modbus tcp: closing connection from %s: bad MBAP header "
                                              "(protocol id %d, length %d)", self.client, proto, length)
                if out:
                    self.transport.write(b"".join(out))
                self.buf.clear()
                self.close()
                return
            end = pos + 6 + length
            if end > len(buf):
                break
            self.request_complete()  # only whole requests count: a byte-a-minute client times out
            response = read_answer(buf, pos) if length == 6 else None
            if response is None:
                response = handle(tid, unit, bytes(buf[pos + 7:end]), self.client)
            pos = end
            if response is None:
                continue
            if isinstance(response, (bytes, bytearray)):
                out.append(response)
                size += len(response)
                continue
            if out:
                self.transport.write(b"".join(out))
                out = []
            del buf[:pos]
            self._await(response)
            return
        del buf[:pos]
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.eof and not self.closed and (not self.writing_paused or not buf):
            self.close()  # the client half-closed: everything it sent is answered (a partial request never will be)
            return
        self._update_reading()

    def _await(self, response: Awaitable[bytes]) -> None:
        self.answer_pending()  # a write on the bus: no idle or request deadline meanwhile
        self.pending = asyncio.ensure_future(self._finish(response))
        self._update_reading()

    async def _finish(self, response: Awaitable[bytes]) -> None:
        frame = await response
        self.pending = None
        if self.closed:
            return
        self.answer_sent()
        self.transport.write(frame)
        self._process()
