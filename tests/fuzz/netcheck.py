"""What the network fuzzers share: reading a socket to its end with a deadline, errors logged anywhere, the
process's memory and file descriptors after the storm; for TCP faces a session per connection and a client that
never reads; for UDP faces mutated datagrams, an exchange followed by a probe, and a flood from many sockets."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st


def recv_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    """Everything until the server closes; a server that neither answers nor closes in time is a hang."""
    out, end = bytearray(), time.monotonic() + limit_s
    while True:
        left = end - time.monotonic()
        assert left > 0, f"the server neither answered nor closed within {limit_s} s (hang); got {bytes(out[:200])!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


class ErrorLog(logging.Handler):
    """Errors logged anywhere while a fuzzer runs: a face's thread, asyncio's 'Exception in callback', pysnmp."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def new_since(self, n: int) -> list[str]:
        return [r.getMessage() for r in self.records[n:]]

    def __enter__(self) -> ErrorLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- what every fuzzer checks at the end --------------------------------------------------------------------
@dataclass(frozen=True)
class Footprint:
    """The process's memory and file descriptors, taken before the storm and compared after it."""

    rss: float
    fds: int

    @classmethod
    def now(cls) -> Footprint:
        return cls(rss_mib(), open_fds())

    def assert_nothing_held(self, fd_slack: int, rss_slack_mib: float = 100) -> None:
        fds, rss = open_fds() - self.fds, rss_mib() - self.rss
        assert fds < fd_slack, f"{fds} more file descriptors open than before the fuzzing"
        assert rss < rss_slack_mib, f"RSS grew {rss:.0f} MiB during the fuzzing"


# -- TCP faces: one session per connection, and a client that never reads ----------------------------------
def tcp_session(port: int, chunks: Sequence[tuple[bytes, float]], limit_s: float = 15) -> tuple[bytes, bool]:
    """One connection to 127.0.0.1:``port`` sending ``chunks`` (bytes, then a pause in seconds) with Nagle off,
    half-closed, read to its end.  Returns what the server sent and whether sending failed (the server closed
    before the client was done: broken pipe, reset, not connected)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cut_short = False
        try:
            for data, pause in chunks:
                sock.sendall(data)
                if pause:
                    time.sleep(pause)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            cut_short = True
        return recv_until_closed(sock, limit_s), cut_short


def in_pieces(data: bytes, size: int, pause: float = 0.0) -> list[tuple[bytes, float]]:
    """``data`` as chunks of ``size`` bytes for ``tcp_session``, each followed by ``pause``."""
    return [(data[i:i + size], pause) for i in range(0, len(data), size)]


def not_reading(connections: Iterable[Any], writing_paused: bool = False) -> Any:
    """The server's connection whose reads are paused (and, with ``writing_paused``, whose writes are held
    back by the client): a client that does not read its answers.  None while there is none."""
    return next((c for c in list(connections) if not c.closed and c.reading_paused
                 and (c.writing_paused or not writing_paused)), None)


def assert_bounded(conn: Any, limit: int = 1024 * 1024) -> None:
    """What the server holds for one client that does not read: its unparsed input and unsent answers."""
    held = len(conn.buf) + conn.transport.get_write_buffer_size()
    assert held < limit, f"{held} bytes held for one client that does not read"


# -- UDP faces: mutated datagrams, an exchange with a probe after it, a flood ------------------------------
Mutation = Callable[[Any, bytearray, int], None]  # (draw, datagram, position): change it in place


@st.composite
def mutated(draw, seeds: Sequence[bytes], interesting: Sequence[int], own: dict[str, Mutation]) -> bytes:
    """A seed changed one to four times: a bit flipped, an ``interesting`` octet written (tags, lengths), bytes
    deleted, inserted or cut off, another seed's tail spliced in, or one of the protocol's ``own`` mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "byte", "delete", "insert", "truncate", "splice", *own]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.sampled_from(interesting))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            cut = draw(st.integers(0, len(other)))
            data[pos:] = other[cut:]
        else:
            own[op](draw, data, pos)
    return bytes(data)


def datagrams(seeds: Sequence[bytes], mutations: st.SearchStrategy[bytes],
              *more: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """What a UDP fuzzer sends: the seeds as they are, mutated ones (three times as often), short and long
    garbage, and the protocol's ``more``."""
    return st.one_of(st.sampled_from(seeds), mutations, mutations, mutations, st.binary(max_size=64),
                     st.binary(min_size=1000, max_size=9000), *more)


def exchange(sock: socket.socket, port: int, data: bytes, probe: bytes, is_probe_answer: Callable[[bytes], bool],
             check: Callable[[bytes], Any], what: str) -> list[bytes]:
    """Send ``data`` then ``probe`` from ``sock`` to 127.0.0.1:``port``; every answer passes ``check``; returns
    the answers that came before the probe's.  No answer to the probe within 5 s: the server is dead or hung."""
    sock.settimeout(5)
    sock.sendto(data, ("127.0.0.1", port))
    sock.sendto(probe, ("127.0.0.1", port))
    answers: list[bytes] = []
    while True:
        try:
            answer = sock.recvfrom(65535)[0]
        except TimeoutError:
            raise AssertionError(f"no answer to the probe after {data.hex()} ({what} dead or hung)") from None
        check(answer)
        if is_probe_answer(answer):
            return answers
        answers.append(answer)


def flood(port: int, seeds: Sequence[bytes], senders: int = 8, each: int = 500) -> None:
    """``senders`` sockets sending ``each`` datagrams (the seeds cut at every length) as fast as they can."""

    def send(k: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(each):
                seed = seeds[(i + k) % len(seeds)]
                s.sendto(seed[: (i * 7 + k) % (len(seed) + 1)], ("127.0.0.1", port))

    threads = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def answer_after_flood(port: int, probe: bytes, what: str, tries: int = 30) -> bytes:
    """The answer to ``probe``, asked again each second: the first probes may find the server's socket buffer
    full of the flood's garbage."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        for _ in range(tries):
            sock.sendto(probe, ("127.0.0.1", port))
            try:
                return sock.recvfrom(65535)[0]
            except TimeoutError:
                continue
    raise AssertionError(f"the {what} no longer answers after the flood")
