"""Modbus RTU frames: CRC-16, request builders and response parsing.

Written here rather than taken from pymodbus's client because the engine needs what that client does not
do: keep the 3.5-character inter-frame silence, frame replies by the length the request implies, and cost
little CPU per transaction (the controller is 15-25x slower than a PC; see ../shared/LIBRARIES.md).
"""
from __future__ import annotations

import functools
import struct

READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE = 3, 4, 6, 16
FUNCTION_FOR_TABLE = {"holding": READ_HOLDING, "input": READ_INPUT}
MAX_READ = 125
MAX_WRITE = 123
EXCEPTION_LENGTH = 5  # unit, function | 0x80, code, CRC

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE = 1, 2, 3, 4
GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_FAILED = 0x0A, 0x0B


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _make_table()


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


def crc_ok(frame: bytes) -> bool:
    # the CRC of a frame with its own CRC appended (low byte first) is 0: one pass, no slice
    return len(frame) >= 4 and crc16(frame) == 0


class ModbusError(Exception):
    """A failed transaction; ``kind`` is the counter it counts against."""

    kind = "error"


class NoReply(ModbusError):
    """The device did not answer within the bus's timeout."""
    kind = "timeout"


class PortUnavailable(NoReply):
    """The serial port is not open, or failed while sending: no reply can come.  Handled as silence on the bus
    (the device's other reads are not tried, the bus counts it with the timeouts) until the port is back."""


class FrameError(ModbusError):
    """CRC mismatch, wrong unit/function, wrong length, or garbage."""

    kind = "crc"


class ExceptionResponse(ModbusError):
    kind = "exception"

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception code {code:#04x}")


def read_request(unit: int, function: int, address: int, count: int) -> bytes:
    if not 1 <= count <= MAX_READ:
        raise ValueError(f"register count {count} outside 1..{MAX_READ}")
    return with_crc(struct.pack(">BBHH", unit, function, address, count))


def write_single_request(unit: int, address: int, value: int) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, WRITE_SINGLE, address, value & 0xFFFF))


def write_multiple_request(unit: int, address: int, values: list[int]) -> bytes:
    if not 1 <= len(values) <= MAX_WRITE:
        raise ValueError(f"register count {len(values)} outside 1..{MAX_WRITE}")
    body = struct.pack(">BBHHB", unit, WRITE_MULTIPLE, address, len(values), 2 * len(values))
    return with_crc(body + struct.pack(f">{len(values)}H", *values))


def expected_length(request: bytes) -> int:
    """Length of a normal reply to ``request`` (an exception reply is 5 bytes)."""
    function = request[1]
    if function in (READ_HOLDING, READ_INPUT):
        return 5 + 2 * ((request[4] << 8) | request[5])
    return 8  # write single / write multiple echo 6 bytes + CRC


def reply_length(request: bytes, head: bytes | bytearray) -> int:
    """Length of the reply given its first two bytes (exception replies are shorter)."""
    if len(head) >= 2 and head[1] & 0x80:
        return EXCEPTION_LENGTH
    return expected_length(request)


def parse_reply(request: bytes, reply: bytes) -> list[int]:
    """Registers of a read reply (or [] for a write); raises FrameError / ExceptionResponse."""
    if len(reply) < 4 or crc16(reply):  # (crc_ok, without the call: once per transaction)
        raise FrameError("CRC mismatch")
    if reply[0] != request[0]:
        raise FrameError(f"reply from unit {reply[0]}, expected {request[0]}")
    function = reply[1]
    if function == request[1] | 0x80:
        raise ExceptionResponse(reply[2])
    if function != request[1]:
        raise FrameError(f"reply function {function}, expected {request[1]}")
    if function in (READ_HOLDING, READ_INPUT):
        nbytes = reply[2]
        if nbytes != len(reply) - 5 or nbytes != 2 * ((request[4] << 8) | request[5]):
            raise FrameError("byte count does not match the request")
        return list(_words_struct(nbytes // 2).unpack_from(reply, 3))
    if reply[:6] != request[:6]:
        raise FrameError("write echo does not match the request")
    return []


@functools.lru_cache(maxsize=MAX_READ)
def _words_struct(count: int) -> struct.Struct:
    """The big-endian register words of a read reply (compiled once per count: one parse per transaction)."""
    return struct.Struct(f">{count}H")


def frame_wire_time(request_len: int, reply_len: int, char_time: float, silence: float, turnaround: float) -> float:
    """The physical minimum for one transaction: both frames, a silence after each, the slave's turnaround."""
    return (request_len + reply_len) * char_time + 2 * silence + turnaround
