"""The RTU transport over a raw pseudo-terminal: the inter-frame silence (a request waits for it, is not sent
when its caller gives up during it, and waits a whole silence again after anything that arrives meanwhile), and
batches of transactions handed to the bus's thread at once."""
from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
import tty

import pytest

from gateway.modbus.rtu import NoReply, read_request, with_crc
from gateway.modbus.transport import RtuTransport
from gateway.topology import BusConfig
from tests.support import descriptors_above_select

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


def serve(master: int, answers: dict[int, int], seen: list[bytes], stop: threading.Event,
          heard: threading.Event | None = None) -> threading.Thread:
    """A slave side answering each read request from a unit in ``answers`` with that value; silent to others;
    ``heard`` is set at the first request."""
    heard = heard or threading.Event()
    def run():
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            request = os.read(master, 64)
            seen.append(request)
            heard.set()
            if request[0] in answers:
                value = answers[request[0]]
                os.write(master, with_crc(bytes([request[0], 4, 2, value >> 8, value & 0xFF])))
    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_batch_goes_out_in_order_and_a_silent_device_ends_it_for_the_caller_to_go_on(pty_pair):
    """One exchange with the bus's thread: a device that does not answer is not asked its other questions, and
    the exchange ends there, so the caller hears of it at once and sends the rest again; each group is stamped
    when its turn came."""
    from gateway.modbus.rtu import NoReply

    master, slave = pty_pair
    seen: list[bytes] = []
    stop = threading.Event()
    peer = serve(master, {5: 42, 7: 7}, seen, stop)
    groups = [[read_request(5, 4, 0, 1), read_request(5, 4, 1, 1)],
              [read_request(6, 4, 0, 1), read_request(6, 4, 1, 1)],
              [read_request(7, 4, 0, 1)]]

    async def go():
        tr = RtuTransport(BusConfig("b", os.ttyname(slave), baud=115200, timeout_ms=60))
        tr.open()
        try:
            t0 = time.monotonic()
            first = await tr.exchange(groups)
            rest = await tr.exchange(groups[len(first):])
            return t0, first, rest, tr.counters
        finally:
            tr.close()

    try:
        t0, first, rest, counters = asyncio.run(go())
    finally:
        stop.set()
        peer.join()
    assert [r[0] for r in seen] == [5, 5, 6, 7], "unit 6's second request was never sent"
    assert len(first) == 2, "the silent device ended the exchange"
    five, six = first
    (seven,) = rest
    assert five.outcomes == [[42], [42]] and seven.outcomes == [[7]]
    assert len(six.outcomes) == 1 and isinstance(six.outcomes[0], NoReply)
    assert t0 <= five.at < six.at < seven.at and seven.at - six.at >= 0.06, "stamped when each group's turn came"
    assert counters.requests == 4 and counters.timeouts == 1


def test_a_batch_given_up_sends_nothing_more(pty_pair):
    master, slave = pty_pair
    seen: list[bytes] = []
    stop = threading.Event()
    heard = threading.Event()
    peer = serve(master, {20: 1}, seen, stop, heard)  # units 1-10 do not answer: each request takes its timeout

    async def go():
        tr = RtuTransport(BusConfig("b", os.ttyname(slave), baud=115200, timeout_ms=100))
        tr.open()
        try:
            task = asyncio.create_task(tr.exchange([[read_request(u, 4, 0, 1)] for u in range(1, 11)]))
            assert await asyncio.to_thread(heard.wait, 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # queued behind the batch: had the batch gone on, units 2-10 would be asked first
            return await tr.transact(read_request(20, 4, 0, 1))
        finally:
            tr.close()

    try:
        words = asyncio.run(go())
    finally:
        stop.set()
        peer.join()
    assert [r[0] for r in seen] == [1, 20], "the request under way finished, no other of the batch went out"
    assert words == [1], "and the bus serves the next caller"


def test_a_line_that_never_falls_quiet_still_gets_its_request_and_an_answer_for_the_caller(pty_pair):
    """Noise every 20 ms on a bus whose silence is 50 ms: the request goes out after a bounded wait and the
    caller hears what went wrong; it is not held for ever (which would freeze the bus and every write)."""
    from gateway.modbus.rtu import ModbusError

    master, slave = pty_pair
    stop = threading.Event()
    sent: list[bytes] = []

    def noise():
        while not stop.wait(0.02):
            os.write(master, b"\xff")
            ready, _, _ = select.select([master], [], [], 0)
            if ready:
                sent.append(os.read(master, 64))

    t = threading.Thread(target=noise)
    t.start()

    async def go():
        tr = transport(slave)
        tr.open()
        try:
            with pytest.raises(ModbusError):
                await asyncio.wait_for(tr.transact(read_request(5, 4, 0, 1)), 5)
        finally:
            tr.close()

    try:
        asyncio.run(go())
    finally:
        stop.set()
        t.join()
    assert sent and sent[0].startswith(read_request(5, 4, 0, 1)), "the request went out"


def fill_output(slave: int) -> int:
    """Fill the line's output buffer, as an adapter stalled by flow control leaves it; returns the bytes put."""
    filler = os.open(os.ttyname(slave), os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    put = 0
    try:
        while True:
            before = put
            for chunk in (4096, 256, 16, 1):  # to the last byte: a request of 8 must not fit
                with contextlib.suppress(BlockingIOError):
                    while True:
                        put += os.write(filler, b"\0" * chunk)
            if put == before:  # nothing more went: the kernel has moved all it can towards the unread far end
                return put
            time.sleep(0.01)  # (the kernel moves a pseudo-terminal's buffer on in the background)
    finally:
        os.close(filler)


def test_a_full_output_buffer_holds_the_request_until_there_is_room(pty_pair):
    """A full output buffer (the write would block) is not a lost port: the request goes once there is room."""
    master, slave = pty_pair
    queued = fill_output(slave)
    seen: dict = {}

    async def go():
        tr = transport(slave)
        tr.open()

        def stalled_adapter():  # moves the line again once the transport has tried to send
            deadline = time.monotonic() + 5
            while tr.counters.requests == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            got = b""
            while len(got) < queued + 8 and select.select([master], [], [], 5)[0]:
                got += os.read(master, 65536)
            seen["request"] = got[queued:]
            os.write(master, with_crc(bytes([5, 4, 2, 0x00, 0x2A])))

        peer = threading.Thread(target=stalled_adapter)
        peer.start()
        try:
            words = await tr.transact(read_request(5, 4, 0, 1))
            return words, tr.counters, tr.is_open
        finally:
            tr.close()
            await asyncio.to_thread(peer.join)

    words, counters, still_open = asyncio.run(go())
    assert words == [42] and seen["request"] == read_request(5, 4, 0, 1)
    assert still_open and counters.requests == 1 and counters.timeouts == counters.crc_errors == 0


@pytest.mark.parametrize("above_select", [False, True], ids=["port", "port above 1023"])
def test_a_request_that_cannot_go_out_within_the_timeout_fails_as_unanswered_and_the_port_stays(pty_pair,
                                                                                                 above_select):
    """(A port whose descriptor is above 1023 waits for room all the same: select() refused it, the bus thread
    failed and the port was taken for lost.)"""
    master, slave = pty_pair
    fill_output(slave)

    async def go():
        tr = transport(slave)
        with descriptors_above_select() if above_select else contextlib.nullcontext():
            tr.open()
        try:
            assert (tr._fd > 1023) == above_select
            with pytest.raises(NoReply, match="request not sent: the port's output stayed full for 500 ms"):
                await tr.transact(read_request(5, 4, 0, 1))
            return tr.counters, tr.is_open
        finally:
            tr.close()

    counters, still_open = asyncio.run(go())
    assert still_open and counters.requests == 1 and counters.timeouts == 1
