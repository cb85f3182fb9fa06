"""The RTU transport's inter-frame silence: a request waits for it, is not sent when its caller gives up during
it, and waits a whole silence again after anything that arrives meanwhile (over a raw pseudo-terminal)."""
from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import tty

import pytest

from gateway.modbus.rtu import read_request, with_crc
from gateway.modbus.transport import RtuTransport
from gateway.topology import BusConfig

SILENCE_MS = 50.0  # long enough to act in the middle of it, and to tell a whole one from a part


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    yield master, slave
    os.close(master)
    os.close(slave)


def transport(slave: int) -> RtuTransport:
    return RtuTransport(BusConfig("b", os.ttyname(slave), baud=115200, timeout_ms=500, silence_ms=SILENCE_MS))


def answer(master: int, into: dict, noise_after: float | None = None) -> threading.Thread:
    """A slave answering one read of one register with 42; with ``noise_after``, a stray byte that long after
    it starts (in the silence before the request)."""
    def run():
        if noise_after is not None:
            time.sleep(noise_after)
            os.write(master, b"\xff")
            into["noise"] = time.monotonic()
        ready, _, _ = select.select([master], [], [], 5)
        if not ready:
            return
        request = os.read(master, 64)
        into["request"] = (time.monotonic(), request)
        os.write(master, with_crc(bytes([request[0], 4, 2, 0x00, 0x2A])))
    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_request_given_up_during_the_silence_is_never_sent(pty_pair):
    master, slave = pty_pair
    seen: dict = {}

    async def go():
        tr = transport(slave)
        tr.open()  # the silence starts now
        try:
            task = asyncio.create_task(tr.transact(read_request(5, 4, 0, 1)))
            await asyncio.sleep(SILENCE_MS / 4000)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(2 * SILENCE_MS / 1000)
            seen["sent"] = select.select([master], [], [], 0)[0]
            peer = answer(master, seen)
            words = await tr.transact(read_request(6, 4, 0, 1))
            await asyncio.to_thread(peer.join)
            return words, tr.counters
        finally:
            tr.close()

    words, counters = asyncio.run(go())
    assert not seen["sent"], "nothing went out for the cancelled request"
    assert words == [42] and seen["request"][1][0] == 6
    assert counters.requests == 1 and counters.timeouts == 0


def test_a_byte_during_the_silence_restarts_it(pty_pair):
    master, slave = pty_pair
    seen: dict = {}

    async def go():
        tr = transport(slave)
        tr.open()
        peer = answer(master, seen, noise_after=SILENCE_MS / 2000)
        try:
            words = await tr.transact(read_request(5, 4, 0, 1))
        finally:
            tr.close()
        await asyncio.to_thread(peer.join)
        return words

    words = asyncio.run(go())
    assert words == [42]
    sent_at, request = seen["request"]
    assert request[0] == 5
    assert sent_at - seen["noise"] >= SILENCE_MS / 1000, "a whole silence after the stray byte"


def test_a_port_lost_during_the_silence_fails_the_request_at_once():
    """An adapter unplugged while a request waits out the silence: the request fails with PortUnavailable
    (the engine then says so and reopens the port later), it does not wait for ever holding the bus."""
    from gateway.modbus.transport import PortUnavailable

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)

    async def go():
        tr = transport(slave)
        tr.open()
        try:
            task = asyncio.create_task(tr.transact(read_request(5, 4, 0, 1)))
            await asyncio.sleep(SILENCE_MS / 4000)
            os.close(master)  # the other end goes: the port hangs up
            with pytest.raises(PortUnavailable):
                await asyncio.wait_for(task, 5)
        finally:
            tr.close()

    try:
        asyncio.run(go())
    finally:
        os.close(slave)
