"""Modbus RTU frames: the CRC and the reply checks the bus thread relies on (gateway/modbus/rtu.py)."""
from __future__ import annotations

import random

import pytest

from gateway.modbus.rtu import (
    ExceptionResponse,
    FrameError,
    crc_ok,
    parse_reply,
    read_request,
    with_crc,
)


def test_crc_matches_the_modbus_specification_example():
    # Modbus over Serial Line V1.02, 6.2.2: read 10 holding registers of slave 1 from 0 -> CRC low C5, high CD
    assert read_request(1, 3, 0, 10) == bytes.fromhex("01030000000AC5CD")
    assert crc_ok(bytes.fromhex("01030000000AC5CD"))


def test_any_single_bit_flipped_or_a_short_frame_fails_the_crc():
    rng = random.Random(7)
    for _ in range(300):
        frame = with_crc(bytes(rng.randrange(256) for _ in range(rng.randrange(2, 60))))
        assert crc_ok(frame)
        bit = rng.randrange(8 * len(frame))
        broken = bytearray(frame)
        broken[bit // 8] ^= 1 << (bit % 8)
        assert not crc_ok(bytes(broken))
    assert not crc_ok(b"\x01\x03\x00")


def test_parse_reply_returns_the_registers_and_rejects_what_is_not_the_answer():
    request = read_request(9, 4, 0, 2)
    reply = with_crc(bytes([9, 4, 4, 0x12, 0x34, 0xAB, 0xCD]))
    assert parse_reply(request, reply) == [0x1234, 0xABCD]
    garbled = bytearray(reply)
    garbled[4] ^= 0x10
    with pytest.raises(FrameError, match="CRC"):
        parse_reply(request, bytes(garbled))
    with pytest.raises(FrameError, match="CRC"):
        parse_reply(request, reply[:3])
    with pytest.raises(FrameError, match="unit"):
        parse_reply(request, with_crc(bytes([8, 4, 4, 0, 0, 0, 0])))
    with pytest.raises(FrameError, match="byte count"):
        parse_reply(request, with_crc(bytes([9, 4, 2, 0, 0])))
    with pytest.raises(ExceptionResponse) as refused:
        parse_reply(request, with_crc(bytes([9, 0x84, 2])))
    assert refused.value.code == 2
