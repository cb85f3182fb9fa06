"""Fuzzing the Modbus TCP face over real sockets: the gateway's own server on 127.0.0.1, the simulator behind it.

Each case is one connection carrying a generated session: requests with any function code, address and
quantity (huge ones too), writes to the real writable registers, MBAP headers with wrong lengths or protocol
ids, garbage, and frames cut in pieces.  The client then half-closes and reads to the end.  Whatever it sent,
the server answers with well-formed frames only (exactly one per request, in order, when the session is
made of well-formed requests) and closes; it never hangs.  Then: slow-loris clients are timed out while
others are served, a client that never reads its answers costs bounded memory, and after all that the
server still answers a plain read with the right value.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from hypothesis import given, strategies as st

from gateway.points import PointRef
from tests.fuzz.cases import fuzz_settings, ran
from tests.fuzz.netcheck import Footprint, assert_bounded, in_pieces, not_reading, recv_until_closed, tcp_session
from tests.support import GatewayThread, free_port, small_bank, write_config

UNITS = (0, 1, 255)
REQUEST_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 12


def mbap(tid: int, unit: int, pdu: bytes, proto: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, proto, len(pdu) + 1 if length is None else length, unit) + pdu


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-modbus")
    port = free_port()
    over = {"modbus_tcp": {"listen": f"127.0.0.1:{port}",
                           "limits": {"request_timeout_s": REQUEST_TIMEOUT_S, "idle_timeout_s": 30,
                                      "max_connections": MAX_CONNECTIONS},
                           "writes": {"enabled": True, "allow_from": ["127.0.0.1"]}},
            "web": {"enabled": False}, "snmp": {"enabled": False}, "prometheus": {"enabled": False}}
    with GatewayThread(write_config(tmp, over, base=small_bank(1, 4))) as gt:
        service = gt.gateway.service('modbus_tcp')
        yield gt, service, port, Footprint.now()


def interesting_addresses(service) -> list[int]:
    out = {0, 1, 65534, 65535}
    for start, end in service.input_ranges.ranges + service.holding_ranges.ranges:
        out.update((start - 1, start, start + 1, end - 125, end - 1, end))
    for t in service.targets:
        out.update((t.start - 1, t.start, t.end - 1, t.end))
    return sorted(a for a in out if 0 <= a <= 65535)


# -- what a session is made of -------------------------------------------------------------------------------
quantities = st.one_of(st.sampled_from([0, 1, 2, 123, 124, 125, 126, 127, 2000, 0x7FFF, 0xFFFF]),
                       st.integers(0, 0xFFFF))
words = st.integers(0, 0xFFFF)


def pdus(addresses):
    addr = st.one_of(st.sampled_from(addresses), st.integers(0, 0xFFFF))
    read = st.builds(lambda fc, a, n: struct.pack(">BHH", fc, a, n), st.sampled_from([3, 4]), addr, quantities)
    single = st.builds(lambda a, v: struct.pack(">BHH", 6, a, v), addr,
                       st.sampled_from([0, 1, 2, 0xFF00, 0xFFFF]) | words)

    @st.composite
    def multiple(draw):
        values = draw(st.lists(words, max_size=126))
        count = draw(st.one_of(st.just(len(values)), quantities))
        nbytes = draw(st.one_of(st.just(2 * len(values) & 0xFF), st.integers(0, 255)))
        return struct.pack(f">BHHB{len(values)}H", 16, draw(addr), count, nbytes, *values)

    mei = st.builds(lambda sub, code, obj, extra: bytes([0x2B, sub, code, obj]) + extra,
                    st.sampled_from([0x0E, 0x0D, 0x00, 0xFF]), st.integers(0, 5), st.integers(0, 255),
                    st.sampled_from([b"", b"\x00"]))
    other = st.builds(lambda fc, rest: bytes([fc]) + rest, st.integers(0, 255), st.binary(max_size=24))
    whole = st.one_of(read, read, single, multiple(), mei, other)
    cut = st.builds(lambda p, n: p[:max(1, n)], whole, st.integers(1, 6))
    return st.one_of(whole, whole, whole, cut)


@st.composite
def sessions(draw, addresses):
    """[(kind, bytes, request)]: kind 'frame' (a request the server must answer), 'bad' (breaks the stream),
    'split' (a frame sent in pieces)."""
    items = []
    tid = draw(st.integers(0, 0xFFF0))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["frame"] * 6 + ["split"] * 2 + ["garbage", "header"]))
        if kind in ("frame", "split"):
            tid = (tid + 1) & 0xFFFF
            unit = draw(st.sampled_from(UNITS + (7,)))
            pdu = draw(pdus(addresses))
            items.append((kind, mbap(tid, unit, pdu), (tid, unit, pdu)))
        elif kind == "garbage":
            items.append(("bad", draw(st.binary(min_size=1, max_size=40)), None))
        else:  # a header that lies: wrong protocol id, a length of 0, 1 or more than any Modbus frame
            proto = draw(st.sampled_from([0, 1, 0xFFFF]))
            length = draw(st.sampled_from([0, 1, 255, 256, 0xFFFF]) if proto == 0 else st.integers(0, 0xFFFF))
            items.append(("bad", mbap(1, 1, draw(st.binary(max_size=12)), proto=proto, length=length), None))
    return items


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 9, f"a truncated answer: {data[pos:]!r}"
        tid, proto, length, unit = struct.unpack_from(">HHHB", data, pos)
        assert proto == 0 and 3 <= length <= 254, (proto, length)
        assert pos + 6 + length <= len(data), "an answer shorter than its MBAP length"
        out.append((tid, unit, data[pos + 7:pos + 6 + length]))
        pos += 6 + length
    return out


def check_answer(request, answer) -> None:
    tid, unit, pdu = request
    a_tid, a_unit, reply = answer
    assert (a_tid, a_unit) == (tid, unit)
    fc = pdu[0]
    assert reply[0] in (fc, fc | 0x80), (pdu.hex(), reply.hex())
    if reply[0] & 0x80:
        assert len(reply) == 2 and reply[1] in (1, 2, 3, 4, 0x0B), reply.hex()
        return
    if fc in (3, 4):
        count = struct.unpack_from(">H", pdu, 3)[0]
        assert 1 <= count <= 125 and reply[1] == 2 * count and len(reply) == 2 + 2 * count
    elif fc == 6:
        assert reply == pdu
    elif fc == 16:
        assert reply == pdu[:5]


@given(data=st.data())
@fuzz_settings(150)
def test_any_session_is_answered_with_whole_frames_and_closed(served, data):
    gt, service, port, *_ = served
    session = data.draw(sessions(interesting_addresses(service)), label="session")
    ran("modbus_tcp.sessions")
    broken = any(kind == "bad" for kind, _, _ in session)
    chunks = [chunk for kind, raw, _ in session for chunk in (in_pieces(raw, 3, 0.001) if kind == "split"
                                                               else [(raw, 0.0)])]
    received, cut_short = tcp_session(port, chunks)
    if cut_short:  # the server closed on a bad frame
        assert broken, "the server closed a connection that sent only well-formed requests"
    answers = frames_of(received)
    requests = [req for kind, _, req in session if req is not None]
    if not broken:
        assert len(answers) == len(requests), f"{len(requests)} requests, {len(answers)} answers"
        for request, answer in zip(requests, answers, strict=True):
            check_answer(request, answer)
    else:
        assert len(answers) <= len(requests)
        tids = {req[0] for req in requests}
        assert all(tid in tids for tid, _, _ in answers)


# -- slow clients ------------------------------------------------------------------------------------------
def read_cell_voltage(sock: socket.socket, tid: int) -> int:
    sock.sendall(mbap(tid, 1, struct.pack(">BHH", 4, 10000, 1)))
    head = b""
    while len(head) < 11:
        chunk = sock.recv(11 - len(head))
        assert chunk, "closed by the server"
        head += chunk
    assert struct.unpack_from(">H", head)[0] == tid and head[7] == 4, head.hex()
    return struct.unpack_from(">H", head, 9)[0]


def test_slow_loris_clients_are_timed_out_and_others_served(served):
    """Twice as many clients as there are connection slots, each sending a request one byte at a time:
    the server closes them (request_timeout_s) and a polling master is served all along."""
    gt, service, port, *_ = served
    before = dict(service.counters)
    master = socket.create_connection(("127.0.0.1", port), timeout=10)
    # a master that has been answered is never dropped for a newcomer; one that connected and said nothing yet
    # may be (the slow clients below would take its place): it polls once before they come
    read_cell_voltage(master, 0xFFFF)
    frame = mbap(1, 1, struct.pack(">BHH", 4, 10000, 1))
    loris, closed_after = [], []
    lock = threading.Lock()

    def trickle():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            return
        with lock:
            loris.append(s)
        t0 = time.monotonic()
        try:
            for i in range(60):  # 12 s at most: far past request_timeout_s
                s.sendall(frame[i % len(frame):i % len(frame) + 1])
                time.sleep(0.2)
        except OSError:
            pass
        else:
            s.settimeout(5)
            try:
                while s.recv(100):
                    pass
            except OSError:
                pass
        with lock:
            closed_after.append(time.monotonic() - t0)
        s.close()

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(2 * MAX_CONNECTIONS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        served_polls = 0
        while any(t.is_alive() for t in threads):
            assert time.monotonic() < deadline, "slow clients still connected after 30 s"
            read_cell_voltage(master, served_polls & 0xFFFF)  # the master keeps being answered
            served_polls += 1
            time.sleep(0.1)
        # a new client gets in once the slow ones are gone
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            read_cell_voltage(fresh, 7)
    finally:
        master.close()
    assert len(closed_after) == len(threads)
    assert max(closed_after) < 12, f"a slow client was served for {max(closed_after):.1f} s"
    timed_out = service.counters["timed_out"] - before["timed_out"]
    assert timed_out >= MAX_CONNECTIONS - 1, service.counters  # every slot but the master's held a slow client
    assert served_polls >= 5


def test_silent_connections_in_every_slot_make_room_for_a_new_client(served):
    """Every slot held by a connection that never sent a byte (idle_timeout_s is far off): once they have been
    silent for request_timeout_s, a new client replaces the one silent longest instead of being refused."""
    gt, service, port, *_ = served
    gt.wait_for(lambda: len(service.connections) == 0, timeout=30, what="earlier connections to close")
    evicted = service.counters["evicted"]
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        gt.wait_for(lambda: len(service.connections) == MAX_CONNECTIONS, what="every slot to be taken")
        time.sleep(REQUEST_TIMEOUT_S + 0.2)  # the rule under test is about time: let them be silent that long
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            read_cell_voltage(fresh, 3)
        assert service.counters["evicted"] == evicted + 1
        assert sum(recv_until_closed(s, 10) == b"" for s in silent[:1]) == 1  # the oldest one was closed
    finally:
        for s in silent:
            s.close()


def test_a_client_that_never_reads_its_answers_costs_bounded_memory(served):
    """Pipelined 125-register reads (12 bytes in, 259 out) from a client that does not read: the server stops
    reading it instead of queueing megabytes of answers; when it reads again, every request is answered."""
    gt, service, port, *_ = served
    request = mbap(9, 1, struct.pack(">BHH", 3, 10000, 125))
    sent = 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    batch = request * 2000
    stuck_since = None
    while True:  # send until the server has stopped reading us for a while
        try:
            sent += sock.send(batch[(sent * 1) % len(request):][:len(batch)])
            stuck_since = None
        except BlockingIOError:
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > 1.0:
                break
            time.sleep(0.02)
        assert sent < 200 * 1024 * 1024, "the server read 200 MB of requests without pausing"
    conn = not_reading(service.connections)
    assert conn is not None, "no connection has its reads paused"
    assert_bounded(conn)
    # now read: every whole request sent is answered
    sock.setblocking(True)
    sock.settimeout(10)
    whole = sent // len(request)
    expected = whole * (len(request) - 12 + 259)
    got = 0
    sock.shutdown(socket.SHUT_WR)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    sock.close()
    assert got == expected, f"{whole} requests, {got} bytes of answers (expected {expected})"


def test_after_the_fuzzing_the_server_answers_and_holds_nothing(served):
    gt, service, port, footprint = served
    ref = PointRef("cell.voltage", 1, 1)
    spec = gt.gateway.catalog["cell.voltage"]

    def agrees() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            got = read_cell_voltage(s, 1234)
        value = gt.gateway.store.value(ref)
        return value is not None and got == round(value / spec.scale)

    gt.wait_for(agrees, timeout=30, what="a read to give the store's cell voltage")
    gt.wait_for(lambda: len(service.connections) == 0, timeout=30, what="every fuzz connection to be closed")
    footprint.assert_nothing_held(fd_slack=20)
