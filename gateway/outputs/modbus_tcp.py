"""Modbus TCP face: the point map as input registers (FC4), mirrored in holding registers (FC3).

A lean asyncio MBAP server, not pymodbus's: the pymodbus 3.16.1 TCP server answers only the first of several
requests that arrive in one TCP segment (its transport clears the receive buffer on every send), and it
costs about 5x the CPU per request of a plain asyncio protocol (see bench/modbus_tcp.py).  pymodbus is used
where it helps: the exception and device-information constants and the FC43/14 response encoder.

The register image (one word per protocol address, both tables) is encoded from the point store through
the point map: fully once at start, then only the points a store batch changed, lazily on the first request
after that batch.  A read is a bounds check and a slice of the image.  The rules (what a gap answers, when
exception 02 comes, unit ids, writes) are documented in the README's "Modbus TCP" section.
"""
from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
import struct
import threading
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from pymodbus.constants import DeviceInformation, ExcCodes
from pymodbus.pdu.mei_message import ReadDeviceInformationResponse

from .. import __version__
from ..config import address_allowed, parse_listen, parse_networks
from ..engine import WriteError
from ..errors import ConfigError, GatewayError
from ..hookspecs import ModbusWriteHandler, hookimpl
from ..modbus.codecs import northbound_words, raw_from_words
from ..pointmap import (
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
from ..points import PointRef, PointStore, Quality
from ..topology import MAX_CELLS

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger(__name__)

SECTION = "modbus_tcp"
READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE, MEI = 0x03, 0x04, 0x06, 0x10, 0x2B
MEI_DEVICE_ID = 0x0E
MAX_READ, MAX_WRITE = 125, 123
MAX_MBAP_LENGTH = 254  # unit id + PDU (at most 253 bytes)
GAP_FILL = 0xFFFF  # registers inside a served range that no point occupies
CONFORMITY = 0x82  # regular identification, stream and individual access
MAX_BACKLOG = 64 * 1024  # bytes of pipelined requests held while a write is pending, then reading pauses
MAX_OUTPUT = 64 * 1024  # answers written per batch before checking whether the client still reads them

_HEADER = struct.Struct(">HHHB")
_READ_REQ = struct.Struct(">HH")
_READ_RESP = struct.Struct(">HHHBBB")
_EXC = struct.Struct(">HHHBBB")

_ADDR = r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?"
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "listen": {"type": "string", "default": "127.0.0.1:5020",
                   "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
                   "description": "host:port to listen on ([v6-address]:port for IPv6; port 0 = any free port)"},
        "unit_ids": {"type": "array", "minItems": 1, "maxItems": 256, "uniqueItems": True,
                     "items": {"type": "integer", "minimum": 0, "maximum": 255}, "default": [0, 1, 255],
                     "description": "unit ids answered; they all address the same register map"},
        "unknown_unit": {"enum": ["exception", "ignore"], "default": "exception",
                         "description": "a request for another unit id: exception 0x0B, or no answer at all"},
        "max_connections": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 32,
                            "description": "open connections at most; when all are taken, a new client replaces "
                                           "the connection that has sent no complete request for the longest, "
                                           "if that is over request_timeout_s, else it is refused"},
        "idle_timeout_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 300,
                           "description": "close a connection that sent no complete request for this long (0 = never)"},
        "request_timeout_s": {"type": "number", "minimum": 0, "maximum": 3600, "default": 10,
                              "description": "close a connection whose request has not arrived whole this long "
                                             "after its first byte (a slow or broken client; 0 = never)"},
        "allow_from": {"type": "array", "items": {"type": "string", "pattern": f"^{_ADDR}$"}, "default": [],
                       "description": "client addresses or networks that may connect; empty = any"},
        "identity": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "FC43/14 device identification objects",
            "properties": {
                "vendor_name": {"type": "string", "maxLength": 64, "default": "bmsgw"},
                "product_code": {"type": "string", "maxLength": 32, "default": "BMSGW"},
                "vendor_url": {"type": "string", "maxLength": 64, "default": ""},
                "product_name": {"type": "string", "maxLength": 64, "default": "Battery monitoring gateway"},
                "model_name": {"type": "string", "maxLength": 32, "default": "bmsgw"},
            },
        },
        "writes": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False,
                            "description": "accept FC6/FC16 to the writable registers (README: Modbus TCP)"},
                "allow_from": {"type": "array", "items": {"type": "string", "pattern": f"^{_ADDR}$"},
                               "default": [], "description": "client addresses or networks that may write"},
            },
        },
    },
}


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
        self._starts = [s for s, _ in self.ranges]
        self._ends = [e for _, e in self.ranges]

    def covers(self, address: int, count: int) -> bool:
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and address + count <= self._ends[i]


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
        self._slots: dict[PointRef, tuple[int, str, float, struct.Struct]] = {}
        packers = {1: struct.Struct(">H"), 2: struct.Struct(">HH")}
        for e in pointmap:
            self._slots[e.ref] = (2 * e.address, e.spec.dtype, e.spec.scale, packers[e.spec.width])
        self._dirty: set[PointRef] = set()
        self._lock = threading.Lock()
        self.generation = -1  # the store generation the image was last brought up to
        self.encodes = 0  # points encoded so far (for tests and status)
        self._subscribed = False

    def start(self) -> None:
        if not self._subscribed:
            self.store.subscribe(self._on_batch)
            self._subscribed = True
        with self._lock:
            self._dirty = set(self._slots)
        self.refresh()

    def stop(self) -> None:
        if self._subscribed:
            self.store.unsubscribe(self._on_batch)
            self._subscribed = False

    def _on_batch(self, batch) -> None:
        with self._lock:
            self._dirty.update(ref for ref, _ in batch)

    @property
    def stale(self) -> bool:
        return bool(self._dirty)

    def refresh(self) -> None:
        generation = self.store.generation
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        slots, get, words, good = self._slots, self.store.get, self.words, Quality.GOOD
        for ref in dirty:
            slot = slots.get(ref)
            if slot is None:
                continue
            offset, dtype, scale, packer = slot
            reading = get(ref)
            value = reading.value if reading is not None and reading.quality is good else None
            packer.pack_into(words, offset, *northbound_words(value, dtype, scale))
        self.encodes += len(dirty)
        self.generation = generation

    def set_words(self, address: int, values: list[int]) -> None:
        struct.pack_into(f">{len(values)}H", self.words, 2 * address, *values)

    def read(self, address: int, count: int) -> list[int]:
        """Words as a client would see them (for tests and tools; the server slices ``words`` directly)."""
        if self._dirty:
            self.refresh()
        return list(struct.unpack_from(f">{count}H", self.words, 2 * address))


# -- writes ----------------------------------------------------------------------------------------------------
class WriteRefused(Exception):
    """A write the server answers with an exception code (logged by the caller)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def point_write_handler(gateway: Gateway, entry: MappedPoint) -> ModbusWriteHandler:
    """A writable point of the map (e.g. the I/O module's relay, ``io.do``): written to its device."""
    spec, ref = entry.spec, entry.ref
    states = {v for v, _ in spec.states}

    async def write(words: list[int], client: str) -> None:
        value = raw_from_words(words, spec.dtype, "big") * spec.scale
        if states and value not in states:
            raise ValueError(f"{value:g} is not one of {sorted(states)}")
        await gateway.engine.write_point(ref, value)

    return ModbusWriteHandler(address=entry.address, count=spec.width, name=str(ref),
                              description=spec.description, handler=write)


@dataclass(frozen=True, slots=True)
class WriteTarget:
    start: int
    end: int
    handler: ModbusWriteHandler
    point: bool  # a point of the map (engine write) rather than a command register


# -- configuration helpers -------------------------------------------------------------------------------------
def listen_address(text: str, src: str = "config") -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise ConfigError(src, f"{SECTION}.listen", str(exc)) from None


class _LogLimiter:
    """At most ``burst`` warnings per ``period`` seconds, then one line saying how many were suppressed."""

    def __init__(self, burst: int = 20, period: float = 60.0) -> None:
        self.burst, self.period = burst, period
        self.window_start, self.count, self.suppressed = 0.0, 0, 0

    def warning(self, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self.window_start >= self.period:
            if self.suppressed:
                log.warning("modbus tcp: %d more refused requests were not logged", self.suppressed)
            self.window_start, self.count, self.suppressed = now, 0, 0
        if self.count < self.burst:
            self.count += 1
            log.warning(msg, *args)
        else:
            self.suppressed += 1


# -- the server ------------------------------------------------------------------------------------------------
def exception_frame(tid: int, unit: int, function: int, code: int) -> bytes:
    return _EXC.pack(tid, 0, 3, unit, (function | 0x80) & 0xFF, code)


class ModbusTcpService:
    """The Modbus TCP server as a gateway service (``bmsgw run`` starts and stops it)."""

    name = "modbus-tcp"

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        src = str(gateway.config.path)
        self.gateway = gateway
        self.cfg = cfg
        self.host, self.port = listen_address(cfg["listen"], src)
        self.units = frozenset(cfg["unit_ids"])
        self.ignore_unknown_unit = cfg["unknown_unit"] == "ignore"
        self.max_connections = cfg["max_connections"]
        self.idle_timeout = float(cfg["idle_timeout_s"])
        self.request_timeout = float(cfg.get("request_timeout_s", 10))
        self.allow_from = parse_networks(cfg["allow_from"], src, f"{SECTION}.allow_from")
        self.writes_enabled = bool(cfg["writes"]["enabled"])
        self.write_allow = parse_networks(cfg["writes"]["allow_from"], src, f"{SECTION}.writes.allow_from")
        ident = cfg["identity"]
        self.identity: dict[int, bytes] = {
            0x00: ident["vendor_name"].encode(), 0x01: ident["product_code"].encode(),
            0x02: __version__.encode(), 0x03: ident["vendor_url"].encode(),
            0x04: ident["product_name"].encode(), 0x05: ident["model_name"].encode(),
            0x06: str(gateway.config.section("site").get("name", "")).encode()[:64],
        }
        self.image = RegisterImage(gateway.pointmap, gateway.store)
        self.input_ranges = RangeSet(served_ranges(gateway.pointmap))
        self.holding_ranges = self.input_ranges
        self.targets: list[WriteTarget] = []
        self._target_starts: list[int] = []
        self.connections: set[_Connection] = set()
        self.server: asyncio.base_events.Server | None = None
        self.counters = {"connections": 0, "refused_connections": 0, "requests": 0, "exceptions": 0,
                         "writes": 0, "refused_writes": 0, "protocol_errors": 0, "timed_out": 0, "evicted": 0}
        self.refusals = _LogLimiter()

    # -- life cycle --------------------------------------------------------------------------------------------
    def _collect_write_targets(self) -> None:
        engine = self.gateway.engine
        targets = [WriteTarget(e.address, e.address + e.spec.width, point_write_handler(self.gateway, e), True)
                   for e in self.gateway.pointmap if e.spec.writable and engine.writable(e.ref) is not None]
        for result in self.gateway.pm.hook.bmsgw_modbus_write_handlers(gateway=self.gateway):
            for h in result or []:
                if h.count < 1 or h.address < 0 or h.address + h.count > 65536:
                    raise GatewayError(f"modbus write handler {h.name}: registers {h.address}+{h.count} "
                                       "are outside 0..65535")
                if any(self.input_ranges.covers(a, 1) for a in range(h.address, h.address + h.count)):
                    raise GatewayError(f"modbus write handler {h.name}: address {h.address} lies inside the point map")
                targets.append(WriteTarget(h.address, h.address + h.count, h, False))
        targets.sort(key=lambda t: t.start)
        for a, b in pairwise(targets):
            if b.start < a.end:
                raise GatewayError(f"modbus write handlers {a.handler.name} and {b.handler.name} "
                                   f"share address {b.start}")
        self.targets = targets
        self._target_starts = [t.start for t in targets]
        commands = [(t.start, t.end) for t in targets if not t.point]
        for start, end in commands:
            self.image.set_words(start, [0] * (end - start))  # command registers read 0
        self.holding_ranges = RangeSet(self.input_ranges.ranges + commands)

    async def start(self) -> None:
        self._collect_write_targets()
        self.image.start()
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                   reuse_address=True, backlog=min(128, self.max_connections * 2))
        except OSError as exc:
            self.image.stop()
            raise ConfigError(str(self.gateway.config.path), f"{SECTION}.listen",
                              f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        sock = self.server.sockets[0].getsockname()
        self.port = sock[1]
        if self.writes_enabled:
            if not self.write_allow:
                log.warning("modbus tcp: writes are enabled but writes.allow_from is empty: every write is refused")
            log.info("modbus tcp: writes enabled for %s to %s", ", ".join(map(str, self.write_allow)) or "nobody",
                     ", ".join(f"{t.start} ({t.handler.name})" for t in self.targets) or "no register")

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                conn.close()
            await self.server.wait_closed()
            self.server = None
        self.image.stop()

    def endpoints(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"modbus-tcp://{host}:{self.port}"]

    def status(self) -> dict:
        return {**self.counters, "open_connections": len(self.connections), "listen": self.endpoints()[0],
                "writes_enabled": self.writes_enabled, "image_generation": self.image.generation}

    # -- connections -------------------------------------------------------------------------------------------
    def admit(self, conn: _Connection) -> bool:
        if self.allow_from and not address_allowed(conn.client, self.allow_from):
            self.counters["refused_connections"] += 1
            self.refusals.warning("modbus tcp: connection from %s refused: not in allow_from", conn.client)
            return False
        if len(self.connections) >= self.max_connections and not self._evict_one():
            self.counters["refused_connections"] += 1
            self.refusals.warning("modbus tcp: connection from %s refused: %d connections open (max_connections)",
                                  conn.client, len(self.connections))
            return False
        self.connections.add(conn)
        self.counters["connections"] += 1
        return True

    def _evict_one(self) -> bool:
        """All slots taken: close the connection that has sent no whole request for the longest, if that is
        over request_timeout_s (a silent or trickling client), to make room.  The Modbus TCP implementation
        guide suggests closing the oldest unused connection; busy masters are never the ones chosen."""
        if self.request_timeout <= 0 or not self.connections:
            return False
        victim = min(self.connections, key=lambda c: c.last_activity)
        if victim.pending is not None or victim.loop is None or \
                victim.loop.time() - victim.last_activity < self.request_timeout:
            return False
        self.counters["evicted"] += 1
        self.refusals.warning("modbus tcp: closing the connection from %s (no complete request for %.0f s) to make "
                              "room for a new client (max_connections)", victim.client,
                              victim.loop.time() - victim.last_activity)
        victim.close()
        self.connections.discard(victim)
        return True

    # -- requests ----------------------------------------------------------------------------------------------
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
            if image._dirty:
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
        for target in plan:
            words = values[target.start - address:target.end - address]
            name = target.handler.name
            try:
                result = target.handler.handler(words, client)
                if inspect.isawaitable(result):
                    await result
            except ValueError as exc:
                return self._refused(tid, unit, function, ExcCodes.ILLEGAL_VALUE, client, name, words, exc)
            except WriteError as exc:
                return self._refused(tid, unit, function, ExcCodes.GATEWAY_NO_RESPONSE, client, name, words, exc)
            except Exception as exc:  # a failing handler must not take the server down
                log.exception("modbus tcp: write handler %s failed", name)
                return self._refused(tid, unit, function, ExcCodes.DEVICE_FAILURE, client, name, words, exc)
            self.counters["writes"] += 1
            log.info("modbus tcp: client %s wrote %s at %d: %s", client, name, target.start, words)
        return _HEADER.pack(tid, 0, len(echo) + 1, unit) + echo

    def _refused(self, tid, unit, function, code, client, name, words, exc) -> bytes:
        self.counters["refused_writes"] += 1
        self.refusals.warning("modbus tcp: write of %s to %s by %s failed (exception %02X): %s",
                              words, name, client, code, exc)
        return self._exception(tid, unit, function, code)


class _Connection(asyncio.Protocol):
    """One client: frames MBAP requests out of the byte stream and answers every one, in order."""

    def __init__(self, service: ModbusTcpService) -> None:
        self.service = service
        self.transport: asyncio.Transport  # set by connection_made, which asyncio calls before any other callback
        self.loop = asyncio.get_running_loop()  # the server makes its protocols in the loop
        self.client = "?"
        self.buf = bytearray()
        self.pending: asyncio.Task | None = None
        self.last_activity = 0.0
        self.partial_since: float | None = None  # when the first byte of a still incomplete request came
        self.idle_handle: asyncio.TimerHandle | None = None
        self.check_at = 0.0  # when idle_handle fires
        self.reading_paused = False
        self.writing_paused = False
        self.eof = False
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "?"
        if not self.service.admit(self):
            self.closed = True
            transport.abort()
            return
        log.debug("modbus tcp: connection from %s", self.client)
        self.last_activity = self.loop.time()
        self._arm()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.service.connections.discard(self)
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        # a pending write is left to finish: cancelling it mid-transaction would upset the RS485 bus

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # -- timeouts: idle (no whole request for idle_timeout_s), slow (a request begun, not finished) ------------
    def _deadline(self) -> float | None:
        svc, out = self.service, []
        if svc.idle_timeout > 0:
            out.append(self.last_activity + svc.idle_timeout)
        if svc.request_timeout > 0 and self.partial_since is not None:
            out.append(self.partial_since + svc.request_timeout)
        return min(out) if out else None

    def _arm(self) -> None:
        """Make sure the timer fires by the nearest deadline (it re-arms itself when it finds none due)."""
        when = self._deadline()
        if when is None or self.closed or (self.idle_handle is not None and self.check_at <= when):
            return
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.check_at = when
        self.idle_handle = self.loop.call_at(when, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_handle = None
        if self.closed:
            return
        now, svc = self.loop.time(), self.service
        if self.pending is None:
            if svc.request_timeout > 0 and self.partial_since is not None and \
                    now - self.partial_since >= svc.request_timeout:
                svc.counters["timed_out"] += 1
                log.info("modbus tcp: closing the connection from %s: a request begun %.0f s ago is still "
                         "incomplete (request_timeout_s)", self.client, now - self.partial_since)
                self.close()
                return
            if svc.idle_timeout > 0 and now - self.last_activity >= svc.idle_timeout:
                log.info("modbus tcp: closing idle connection from %s", self.client)
                self.close()
                return
        when = self._deadline()
        if when is not None:
            self.check_at = max(when, now + 0.05)
            self.idle_handle = self.loop.call_at(self.check_at, self._idle_check)

    def eof_received(self):
        """The client will send no more (e.g. ``nc -N``): answer what it sent, then close."""
        self.eof = True
        if self.pending is None and not self.writing_paused:
            return None  # everything it sent is answered (a partial request never will be): close
        return True  # _process() closes once the pending write and the held-back requests are answered

    # -- flow control: a client that does not read its answers stops being read ----------------------------
    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.pending is None and not self.closed and (len(self.buf) >= 7 or self.eof):
            self._process()  # requests held back while the client was not reading its answers
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        want_pause = self.writing_paused or (self.pending is not None and len(self.buf) > MAX_BACKLOG)
        if self.closed:
            return
        if self.buf and self.pending is None and not self.writing_paused:  # part of a request awaits the rest
            if self.partial_since is None:
                self.partial_since = self.loop.time()
                self._arm()
        else:
            self.partial_since = None
        if self.closed or want_pause == self.reading_paused:
            return
        self.reading_paused = want_pause
        if want_pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.buf and self.pending is None and len(data) >= 7:
            # fast path: the common case is exactly one whole request per segment
            tid, proto, length, unit = _HEADER.unpack_from(data)
            if proto == 0 and 2 <= length <= MAX_MBAP_LENGTH and len(data) == 6 + length:
                self.last_activity = self.loop.time()
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
        handle = self.service.handle
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
            self.last_activity = self.loop.time()  # only whole requests count: a byte-a-minute client times out
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
            self.partial_since = None
            self._await(response)
            return
        del buf[:pos]
        if pos:
            self.partial_since = None  # a whole request came: the clock of the next partial one starts now
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.eof and not self.closed and (not self.writing_paused or not buf):
            self.close()  # the client half-closed: everything it sent is answered (a partial request never will be)
            return
        self._update_reading()

    def _await(self, response: Awaitable[bytes]) -> None:
        self.pending = asyncio.ensure_future(self._finish(response))
        self._update_reading()

    async def _finish(self, response: Awaitable[bytes]) -> None:
        frame = await response
        self.pending = None
        if self.closed:
            return
        self.transport.write(frame)
        self._process()


# -- hooks -----------------------------------------------------------------------------------------------------
_services: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {SECTION: CONFIG_SCHEMA}


@hookimpl
def bmsgw_services(gateway: Gateway) -> list:
    cfg = gateway.config.section(SECTION)
    if not cfg.get("enabled", True):
        return []
    service = ModbusTcpService(gateway, cfg)
    _services[gateway] = service
    return [service]


@hookimpl
def bmsgw_status(gateway: Gateway) -> dict[str, Any]:
    service = _services.get(gateway)
    return {SECTION: service.status()} if service is not None else {}

