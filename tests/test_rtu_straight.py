"""The RTU transport's straight way (the usual transaction with the least Python after each wake-up) against its
careful way: the same requests to a scripted slave on a pseudo-terminal must get the same outcomes and the same
bus counters either way, through replies that come whole, in pieces, as exceptions, garbled, behind another
unit's late reply, with a byte too many, or not at all."""
from __future__ import annotations

import asyncio
import os
import threading
import time
import tty

from gateway.modbus.rtu import READ_INPUT, ExceptionResponse, FrameError, NoReply, read_request, with_crc
from gateway.modbus.transport import RtuTransport
from gateway.topology import BusConfig


def reply(unit: int, *words: int, function: int = READ_INPUT) -> bytes:
    body = bytes([unit, function, 2 * len(words)]) + b"".join(w.to_bytes(2, "big") for w in words)
    return with_crc(body)


# what the slave sends back to each request, in order: (pieces written one after another, pause between them)
SCRIPT: list[tuple[int, list[bytes]]] = [
    (1, [reply(1, 2101, 251)]),                                  # whole, at once
    (2, [reply(2, 2102, 252)[:3], reply(2, 2102, 252)[3:]]),     # in two pieces
    (3, [with_crc(bytes([3, READ_INPUT | 0x80, 2]))]),           # an exception
    (4, [reply(4, 2104, 254)[:-1] + b"\x00"]),                   # a garbled CRC
    (5, [reply(9, 7, 7) + reply(5, 2105, 255)]),                 # another unit's late reply in front
    (5, [reply(9, 8, 8), reply(5, 2115, 265)]),                  # ... and on its own, then ours
    (6, [reply(6, 2106, 256) + b"\xff"]),                        # a byte too many
    (1, [reply(1, 2111, 261)]),                                  # (after that byte: the careful way)
    (7, [reply(7, 2107, 257, function=3)]),                      # the wrong function
    (2, [reply(2, 2112, 262)]),
    (8, []),                                                     # no reply
    (1, [reply(1, 2121, 271)]),
]


def run_script(straight: bool) -> tuple[list, dict, int]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)

    def peer():
        for _, pieces in SCRIPT:
            os.read(master, 64)  # the request
            for n, piece in enumerate(pieces):
                if n:
                    time.sleep(0.002)  # the wire pausing inside a reply
                os.write(master, piece)

    careful = 0

    async def go():
        nonlocal careful
        tr = RtuTransport(BusConfig("b", os.ttyname(slave), baud=115200, timeout_ms=1000))  # (a loaded machine)
        tr.straight = straight
        carefully = tr._transact_carefully

        def counted(request, job):
            nonlocal careful
            careful += 1
            return carefully(request, job)

        tr._transact_carefully = counted  # type: ignore[method-assign]
        tr.open()
        outcomes = []
        try:
            for unit, _ in SCRIPT:
                try:
                    outcomes.append(await tr.transact(read_request(unit, READ_INPUT, 0, 2)))
                except (ExceptionResponse, FrameError, NoReply) as err:
                    outcomes.append((type(err).__name__, str(err)))
        finally:
            tr.close()
        c = tr.counters
        return outcomes, {"requests": c.requests, "timeouts": c.timeouts, "crc_errors": c.crc_errors,
                          "exceptions": c.exceptions, "bytes_out": c.bytes_out, "bytes_in": c.bytes_in,
                          "stray_replies": c.stray_replies, "wire_time": round(c.wire_time, 9)}

    t = threading.Thread(target=peer)
    t.start()
    try:
        outcomes, counters = asyncio.run(go())
    finally:
        t.join(timeout=10)
        os.close(master)
        os.close(slave)
    return outcomes, counters, careful


def test_the_straight_way_gets_what_the_careful_way_gets():
    outcomes, counters, careful = run_script(straight=True)
    assert outcomes == [
        [2101, 251], [2102, 252], ("ExceptionResponse", "exception code 0x02"), ("FrameError", "CRC mismatch"),
        [2105, 255], [2115, 265], [2106, 256], [2111, 261], ("FrameError", "reply function 3, expected 4"), [2112, 262],
        ("NoReply", "no reply"), [2121, 271]]
    assert counters["stray_replies"] == 2 and counters["timeouts"] == 1 and counters["exceptions"] == 1
    assert counters["crc_errors"] == 2  # the garbled CRC and the wrong function
    # only the request after the stray byte, and the one after the silent slave (its reply may still come), go
    # the careful way
    assert careful == 2
    assert run_script(straight=False) == (outcomes, counters, len(SCRIPT))
