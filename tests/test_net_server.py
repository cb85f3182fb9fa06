"""The bounded TCP server every network face runs on (gateway/net/server.py), through a tiny line face.

The face below is the whole of what a line-per-request protocol needs; the server gives it admission, eviction,
deadlines and live changes.  Each test runs its own server on 127.0.0.1 with small limits, talks to it with
plain sockets from several loopback addresses, and waits on conditions (the server's counters, a socket
being closed), never on a sleep.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time

import pytest

from gateway.config import parse_networks
from gateway.net import server as server_module
from gateway.net.limits import Limits, limits_from_section, limits_schema, with_network_keys
from gateway.net.server import BindError, BoundedConnection, BoundedServer
from gateway.net.tls import TlsSettings, server_context
from gateway.outputs.web.tlscert import ensure_self_signed
from tests.fuzz.netcheck import recv_until_closed

# -- a tiny face: one request per line, answered with the line upper-cased -----------------------------------


class LineConnection(BoundedConnection):
    answer_size = 0  # pad each answer to this many bytes (to fill a client that does not read)

    def opened(self) -> None:
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.request_started()
        self.buf += data
        while (end := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:end])
            del self.buf[:end + 1]
            self.request_complete()
            self.transport.write(line.upper().ljust(self.answer_size, b".") + b"\n")
        if self.buf:
            self.request_started()
        if len(self.buf) > self.server.limits.max_request_bytes:
            self.close()


class LoopThread:
    """An event loop in a background thread, for servers that tests talk to with blocking sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro_or_fn, timeout: float = 10.0):
        if asyncio.iscoroutine(coro_or_fn):
            return asyncio.run_coroutine_threadsafe(coro_or_fn, self.loop).result(timeout)

        async def run():
            return coro_or_fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def serve():
    """``serve(limits=..., allow_from=[...])`` -> a started BoundedServer for the line face."""
    lt = LoopThread()
    servers = []

    def start(factory=LineConnection, allow_from=(), tls=None, **limits):
        defaults = {"max_connections": 8, "max_connections_per_address": 8, "idle_timeout_s": 30,
                    "request_timeout_s": 10, "send_timeout_s": 10, "max_request_bytes": 1024}
        server = BoundedServer("line", factory, host="127.0.0.1", port=0, limits=Limits(**{**defaults, **limits}),
                               allow_from=parse_networks(list(allow_from), "test", "line.allow_from"), tls=tls)
        lt.call(server.start())
        servers.append(server)
        return server

    start.loop = lt
    yield start
    for server in servers:
        lt.call(server.stop())
    lt.close()


def connect(server: BoundedServer, source: str = "127.0.0.1", port: int | None = None) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port or server.port), timeout=10, source_address=(source, 0))


def ask(sock: socket.socket, line: bytes = b"hello") -> bytes:
    sock.sendall(line + b"\n")
    out = b""
    while not out.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "closed by the server"
        out += chunk
    return out


def open_count(server: BoundedServer) -> int:
    return server.status()["open_connections"]


# -- eviction ----------------------------------------------------------------------------------------------
def test_a_newcomer_replaces_the_oldest_unproven_connection_never_a_served_one(serve, monkeypatch):
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 0.0)  # every silent one has had its chance: at once
    server = serve(max_connections=3)
    proven = connect(server)
    assert ask(proven) == b"HELLO\n"
    silent = [connect(server, "127.0.0.2"), connect(server, "127.0.0.3")]
    wait_for(lambda: open_count(server) == 3, "three connections")
    newcomers = []
    for i in range(3):  # each newcomer replaces the unproven one open longest; the served one stays
        newcomers.append(connect(server, f"127.0.0.{10 + i}"))
        wait_for(lambda n=i: server.counters["evicted"] == n + 1, "an eviction")
        assert ask(proven, b"still here") == b"STILL HERE\n"
    assert recv_until_closed(silent[0], 5) == b"" and recv_until_closed(silent[1], 5) == b""
    assert recv_until_closed(newcomers[0], 5) == b""  # then the first newcomer was the oldest unproven one
    # once every open connection has been served, a newcomer is refused (a Modbus master keeps its place)
    assert ask(newcomers[1]) == b"HELLO\n" and ask(newcomers[2]) == b"HELLO\n"
    late = connect(server, "127.0.0.20")
    assert recv_until_closed(late, 5) == b""
    assert server.counters["refused_connections"] == 1 and server.counters["evicted"] == 3
    assert ask(proven) == b"HELLO\n"
    for s in [proven, *silent, *newcomers, late]:
        s.close()


def test_a_connection_whose_request_arrived_unread_is_not_the_one_replaced(serve, monkeypatch):
    """During a flood the event loop may admit many newcomers before it reads a client that spoke as soon as it
    connected: that client, though unproven and the oldest, has not had its chance and is spared."""
    monkeypatch.setattr(server_module, "OVERFLOW_MAX", 0)  # (the order: nobody let in over the limit)
    server = serve(max_connections=2)
    spoke = connect(server, "127.0.0.2")
    wait_for(lambda: open_count(server) == 1, "the first connection")
    first = next(iter(server.connections))
    server_loop = serve.loop
    server_loop.call(lambda: first.set_reading_paused(True))  # as if the loop were busy admitting others
    spoke.sendall(b"hello\n")
    wait_for(lambda: first.has_unread_bytes(), "its request to wait unread")
    silent = connect(server, "127.0.0.3")
    wait_for(lambda: open_count(server) == 2, "two connections")
    newcomer = connect(server, "127.0.0.4")
    wait_for(lambda: server.counters["evicted"] == 1, "an eviction")
    assert recv_until_closed(silent, 5) == b""  # the younger silent one went, not the one that spoke
    server_loop.call(lambda: first.set_reading_paused(False))
    assert spoke.recv(100) == b"HELLO\n"
    assert ask(newcomer) == b"HELLO\n"
    for s in (spoke, silent, newcomer):
        s.close()


def test_when_every_unproven_connection_has_unread_bytes_the_oldest_still_goes(serve, monkeypatch):
    monkeypatch.setattr(server_module, "OVERFLOW_MAX", 0)  # past the overflow's bound
    server = serve(max_connections=2)
    socks = [connect(server, "127.0.0.2"), connect(server, "127.0.0.3")]
    wait_for(lambda: open_count(server) == 2, "two connections")
    for conn in list(server.connections):
        serve.loop.call(lambda c=conn: c.set_reading_paused(True))
    for s in socks:
        s.sendall(b"hel")
    wait_for(lambda: all(c.has_unread_bytes() for c in server.connections), "bytes waiting on both")
    newcomer = connect(server, "127.0.0.4")
    wait_for(lambda: server.counters["evicted"] == 1, "an eviction")
    assert recv_until_closed(socks[0], 5) == b""  # the bound holds: the oldest goes
    assert ask(newcomer) == b"HELLO\n"
    for s in (*socks, newcomer):
        s.close()


def begin_a_request(server: BoundedServer, sock: socket.socket) -> None:
    """Send the first half of a request and wait until the server has read it."""
    sock.sendall(b"hel")
    wait_for(lambda: any(c.request_since is not None and not c.has_unread_bytes() for c in list(server.connections)),
             "the half request to be read")


def stalled_and_silent(server: BoundedServer) -> tuple[socket.socket, socket.socket]:
    """A connection that has sent nothing yet, then a younger one that began a request and stalled."""
    silent = connect(server, "127.0.0.2")
    wait_for(lambda: open_count(server) == 1, "the first connection")
    stalled = connect(server, "127.0.0.3")
    begin_a_request(server, stalled)
    return silent, stalled


def test_a_client_that_has_not_spoken_yet_outlives_a_younger_one_that_stalled(serve, monkeypatch):
    """During a flood of returning slow clients, every newcomer replaces one: when age alone decided, a client
    whose request was still on its way became the oldest within a few hundred milliseconds and was reset."""
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 600.0)  # however slow this machine is now
    monkeypatch.setattr(server_module, "STALLED_AFTER_S", 0.0)  # (the order, not how long a request may pause)
    server = serve(max_connections=2)
    silent, stalled = stalled_and_silent(server)
    newcomer = connect(server, "127.0.0.4")
    wait_for(lambda: server.counters["evicted"] == 1, "an eviction")
    assert recv_until_closed(stalled, 5) == b""
    assert ask(silent) == b"HELLO\n" and ask(newcomer) == b"HELLO\n"
    for s in (silent, stalled, newcomer):
        s.close()


def test_a_client_silent_past_the_grace_has_had_its_chance(serve, monkeypatch):
    """(The grace is set to nothing here: this guards the order once it has passed, not its length.)"""
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 0.0)
    monkeypatch.setattr(server_module, "STALLED_AFTER_S", 0.0)
    server = serve(max_connections=2)
    silent, stalled = stalled_and_silent(server)
    newcomer = connect(server, "127.0.0.4")
    wait_for(lambda: server.counters["evicted"] == 1, "an eviction")
    assert recv_until_closed(silent, 5) == b""  # the oldest of those that had their chance
    stalled.sendall(b"lo\n")
    assert stalled.recv(100) == b"HELLO\n"
    assert ask(newcomer) == b"HELLO\n"
    for s in (silent, stalled, newcomer):
        s.close()


def test_a_client_whose_request_is_on_its_way_outlives_a_wave_of_newcomers(serve, monkeypatch):
    """A wave of returning slow clients can be several times the face's slots and arrive before the loop reads
    any of them.  When each newcomer replaced the oldest connection not heard yet, a client that connected just
    before the wave was reset before its request arrived; now the wave is admitted over the limit (twice it at
    most), and the server trims back once it has heard who is who."""
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 600.0)  # nobody silent has had their chance yet
    monkeypatch.setattr(server_module, "OVERFLOW_HOLD_S", 600.0)  # however slow this machine is now
    server = serve(max_connections=2)
    first = [connect(server, "127.0.0.2"), connect(server, "127.0.0.3")]
    wait_for(lambda: open_count(server) == 2, "two connections")
    client = connect(server, "127.0.0.4")
    wave = []
    for i in range(3):
        wave.append(connect(server, f"127.0.0.{10 + i}"))
        wait_for(lambda n=i: server.counters["connections"] == 4 + n, "the newcomer admitted")
        assert open_count(server) <= 4, "over the limit by max_connections at most"
    # past twice the limit, the newcomers replaced the oldest at once: the two from before the client
    assert recv_until_closed(first[0], 5) == b"" and recv_until_closed(first[1], 5) == b""
    assert ask(client) == b"HELLO\n"  # its request came after the whole wave: it was not reset
    assert open_count(server) == 4  # the others are not heard yet: they stay while the hold lasts
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 0.0)  # now they have had their chance
    wait_for(lambda: open_count(server) == 2, "the trim back to the limit", timeout=10)
    assert recv_until_closed(wave[0], 5) == b"" and recv_until_closed(wave[1], 5) == b""  # the oldest unheard
    assert ask(wave[2]) == b"HELLO\n" and ask(client) == b"HELLO\n"
    assert server.counters["evicted"] == 4 and server.counters["refused_connections"] == 0
    for s in (*first, client, *wave):
        s.close()


def test_after_a_wave_those_that_stalled_go_first(serve, monkeypatch):
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 600.0)
    monkeypatch.setattr(server_module, "STALLED_AFTER_S", 0.0)
    monkeypatch.setattr(server_module, "OVERFLOW_HOLD_S", 600.0)
    server = serve(max_connections=2)
    silent = [connect(server, "127.0.0.2"), connect(server, "127.0.0.3")]
    wait_for(lambda: open_count(server) == 2, "two connections")
    stalled = [connect(server, "127.0.0.4"), connect(server, "127.0.0.5")]  # admitted over the limit ...
    for s in stalled:
        s.sendall(b"hel")  # ... then heard: they began a request and stalled
    wait_for(lambda: open_count(server) == 2, "the trim back to the limit", timeout=10)
    assert recv_until_closed(stalled[0], 5) == b"" and recv_until_closed(stalled[1], 5) == b""
    assert ask(silent[0]) == b"HELLO\n" and ask(silent[1]) == b"HELLO\n"
    for s in (*silent, *stalled):
        s.close()


def test_served_clients_let_in_over_the_limit_do_not_keep_it_over(serve, monkeypatch):
    """When every connection of a burst turns out to be a served client (on a face that keeps served connections,
    like Modbus TCP), the newest let in over the limit go, as a newcomer is refused when every slot is served."""
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 600.0)
    monkeypatch.setattr(server_module, "OVERFLOW_HOLD_S", 600.0)
    server = serve(max_connections=2)
    first = [connect(server, "127.0.0.2"), connect(server, "127.0.0.3")]
    wait_for(lambda: open_count(server) == 2, "two connections")
    over = [connect(server, "127.0.0.4"), connect(server, "127.0.0.5")]
    wait_for(lambda: server.counters["connections"] == 4, "both let in over the limit")
    for s in (*over, *first):
        assert ask(s) == b"HELLO\n"
    wait_for(lambda: open_count(server) == 2, "the trim back to the limit")
    assert recv_until_closed(over[0], 5) == b"" and recv_until_closed(over[1], 5) == b""
    assert ask(first[0]) == b"HELLO\n" and ask(first[1]) == b"HELLO\n"
    late = connect(server, "127.0.0.6")  # every slot holds a served client: refused at once
    assert recv_until_closed(late, 5) == b""
    assert server.counters["refused_connections"] == 1 and server.counters["evicted"] == 2
    for s in (*first, *over, late):
        s.close()


def test_a_wave_past_the_overflow_s_bound_comes_back_to_the_limit_once_served(serve, monkeypatch):
    """Past twice the limit a newcomer replaces the oldest not heard yet at once; it is over the limit all the same,
    and once every one left has been served the newest go back out, down to the limit."""
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 600.0)
    monkeypatch.setattr(server_module, "OVERFLOW_HOLD_S", 600.0)
    server = serve(max_connections=2)
    socks = []
    for i in range(7):
        socks.append(connect(server, f"127.0.0.{2 + i}"))
        wait_for(lambda n=i: server.counters["connections"] == n + 1, "the newcomer admitted")
    for s in socks[:3]:  # (the third had been let in over the limit itself)
        assert recv_until_closed(s, 5) == b""
    for s in socks[3:]:
        assert ask(s) == b"HELLO\n"
    wait_for(lambda: open_count(server) == 2, "the trim back to the limit")
    assert recv_until_closed(socks[6], 5) == b"" and recv_until_closed(socks[5], 5) == b""
    assert ask(socks[3]) == b"HELLO\n" and ask(socks[4]) == b"HELLO\n"
    for s in socks:
        s.close()


def test_a_request_arriving_in_two_parts_is_not_taken_for_a_stalled_one_between_them(serve, monkeypatch):
    """An HTTP client's body follows its head, a request may be cut in two segments: a round trip apart.  A silent
    newcomer in that moment used to replace the client, its request counted as stalled from its first byte."""
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 600.0)
    monkeypatch.setattr(server_module, "STALLED_AFTER_S", 600.0)  # however slow this machine is now
    monkeypatch.setattr(server_module, "OVERFLOW_HOLD_S", 600.0)
    server = serve(max_connections=1)
    client = connect(server, "127.0.0.2")
    begin_a_request(server, client)
    newcomer = connect(server, "127.0.0.3")
    wait_for(lambda: server.counters["connections"] == 2, "the newcomer admitted (over the limit)")
    client.sendall(b"lo\n")
    assert client.recv(100) == b"HELLO\n"
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 0.0)  # the newcomer has had its chance
    wait_for(lambda: server.counters["evicted"] == 1, "the trim back to the limit")
    assert recv_until_closed(newcomer, 5) == b""
    for s in (client, newcomer):
        s.close()


class TlsClient:
    """A TLS client driven step by step over a plain socket, so a test can stop it mid-handshake."""

    def __init__(self, sock: socket.socket) -> None:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self.sock, self.incoming, self.outgoing = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="gateway")

    def step(self) -> bool:
        """Send what TLS has to send and take what the server sent; True once the handshake is done."""
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())
        if not done:
            chunk = self.sock.recv(65536)
            assert chunk, "closed by the server"
            self.incoming.write(chunk)
        return done

    def ask(self, line: bytes = b"hello") -> bytes:
        while not self.step():
            pass
        self.tls.write(line + b"\n")
        self.sock.sendall(self.outgoing.read())
        out = b""
        while not out.endswith(b"\n"):
            try:
                out += self.tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = self.sock.recv(65536)
                assert chunk, "closed by the server"
                self.incoming.write(chunk)
        return out


def test_a_tls_client_working_out_its_handshake_outlives_an_older_silent_connection(serve, monkeypatch, tmp_path):
    """A flood of silent connections must not reset every HTTPS client in the moment between the server's part
    of the handshake and the client's answer: such a client goes by age, like one that has not spoken yet."""
    monkeypatch.setattr(server_module, "SPEAK_GRACE_S", 600.0)
    monkeypatch.setattr(server_module, "OVERFLOW_MAX", 0)
    cert, key = ensure_self_signed(tmp_path, "127.0.0.1")
    server = serve(max_connections=2, tls=TlsSettings(server_context(str(cert), str(key))))
    silent = connect(server, "127.0.0.2")
    wait_for(lambda: open_count(server) == 1, "the first connection")
    client = TlsClient(connect(server, "127.0.0.3"))
    assert not client.step()  # its hello out, the server's answer in: its own answer is due
    assert sum(c.client_turn for c in list(server.connections)) == 1
    newcomer = connect(server, "127.0.0.4")
    wait_for(lambda: server.counters["evicted"] == 1, "an eviction")
    assert recv_until_closed(silent, 5) == b""
    assert client.ask() == b"HELLO\n"
    for s in (silent, client.sock, newcomer):
        s.close()


def test_an_idle_served_connection_makes_room_where_the_protocol_allows_it(serve):
    class KeepAlive(LineConnection):
        idle_evictable = True  # like HTTP keep-alive

    server = serve(KeepAlive, max_connections=2)
    first, second = connect(server), connect(server)
    assert ask(first) == b"HELLO\n"
    assert ask(second) == b"HELLO\n"  # both served; the first has been idle longer
    third = connect(server)
    assert recv_until_closed(first, 5) == b""
    assert ask(third) == b"HELLO\n" and ask(second) == b"HELLO\n"
    for s in (first, second, third):
        s.close()


def test_per_address_cap_the_address_competes_with_itself(serve):
    server = serve(max_connections_per_address=2)
    a1, a2 = connect(server, "127.0.0.5"), connect(server, "127.0.0.5")
    assert ask(a1) == b"HELLO\n" and ask(a2) == b"HELLO\n"
    a3 = connect(server, "127.0.0.5")  # a third from the same address, both others served: refused
    assert recv_until_closed(a3, 5) == b""
    other = connect(server, "127.0.0.6")  # another address is not held back by it
    assert ask(other) == b"HELLO\n"
    a3.close()
    silent = connect(server, "127.0.0.6")  # the second address: one served, one silent, then a newcomer ...
    wait_for(lambda: open_count(server) == 4, "four connections")
    newcomer = connect(server, "127.0.0.6")  # ... replaces its own silent one, not the served one
    assert recv_until_closed(silent, 5) == b""
    assert ask(newcomer) == b"HELLO\n" and ask(other) == b"HELLO\n"
    assert server.counters["refused_connections"] == 1 and server.counters["evicted"] == 1
    for s in (a1, a2, other, silent, newcomer):
        s.close()


# -- deadlines -----------------------------------------------------------------------------------------------
def test_a_request_that_does_not_arrive_in_time_closes_the_connection(serve):
    server = serve(request_timeout_s=0.5, idle_timeout_s=30)
    slow, quiet = connect(server, "127.0.0.2"), connect(server, "127.0.0.3")
    assert ask(quiet) == b"HELLO\n"
    t0 = time.monotonic()
    slow.sendall(b"hal")
    assert recv_until_closed(slow, 10) == b""
    assert 0.4 <= time.monotonic() - t0 < 5
    assert server.counters["timed_out"] == 1
    assert ask(quiet) == b"HELLO\n"  # a connection between requests is not on the request clock
    for s in (slow, quiet):
        s.close()


def test_idle_connections_are_closed(serve):
    server = serve(idle_timeout_s=0.5)
    s = connect(server)
    assert ask(s) == b"HELLO\n"
    assert recv_until_closed(s, 10) == b""
    assert server.counters["idle_closed"] == 1 and server.counters["timed_out"] == 0
    s.close()


def test_a_client_that_does_not_read_is_closed_after_send_timeout(serve):
    class Big(LineConnection):
        answer_size = 256 * 1024

    server = serve(Big, send_timeout_s=0.5)
    s = connect(server)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"x\n" * 64)  # 16 MB of answers it never reads
    wait_for(lambda: server.counters["timed_out"] == 1, "the send deadline")
    wait_for(lambda: open_count(server) == 0, "the connection to be released")
    s.close()


# -- live changes -----------------------------------------------------------------------------------------------
def test_apply_closes_connections_from_addresses_no_longer_allowed(serve):
    server = serve()
    kept, dropped = connect(server, "127.0.0.7"), connect(server, "127.0.0.8")
    assert ask(kept) == b"HELLO\n" and ask(dropped) == b"HELLO\n"
    closed = serve.loop.call(lambda: server.apply(server.limits.replace(idle_timeout_s=60),
                                                  parse_networks(["127.0.0.7/32"], "test", "line.allow_from")))
    assert closed == 1
    assert recv_until_closed(dropped, 5) == b""
    assert ask(kept) == b"HELLO\n"
    refused = connect(server, "127.0.0.8")
    assert recv_until_closed(refused, 5) == b""
    assert server.limits.idle_timeout_s == 60
    for s in (kept, dropped, refused):
        s.close()


def test_rebind_keeps_the_old_listener_when_the_new_address_fails(serve):
    server = serve()
    old_port = server.port
    client = connect(server)
    assert ask(client) == b"HELLO\n"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(BindError, match=rf"line\.listen: cannot listen on 127\.0\.0\.1:{taken}: "
                                            r"Address already in use") as err:
            serve.loop.call(server.rebind("127.0.0.1", taken))
        assert err.value.reason.startswith("Address already in use")
    assert server.port == old_port and ask(client) == b"HELLO\n"
    with connect(server) as s:  # the old address still takes new clients
        assert ask(s) == b"HELLO\n"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert serve.loop.call(server.rebind("127.0.0.1", free)) == 1  # the one client of the old address
    assert server.port == free
    assert recv_until_closed(client, 5) == b""
    with connect(server) as s:
        assert ask(s) == b"HELLO\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old_port), timeout=5)
    client.close()


def test_a_port_that_cannot_be_bound_names_the_face_the_address_and_the_reason(serve):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = BoundedServer("line", LineConnection, host="127.0.0.1", port=port, limits=Limits(), src="x.yaml")
        with pytest.raises(BindError) as err:
            serve.loop.call(server.start())
    assert str(err.value) == f"x.yaml: line.listen: cannot listen on 127.0.0.1:{port}: Address already in use " \
                             "(another program, or another bmsgw, listens there)"
    assert not server.listening


# -- the limits object -------------------------------------------------------------------------------------------
def test_every_face_takes_the_same_keys_with_its_own_defaults():
    face = with_network_keys({"type": "object", "properties": {"listen": {"type": "string"}}},
                             Limits(max_connections=5), omit=("max_request_bytes",))
    props = face["properties"]
    assert set(props["limits"]["properties"]) == {"max_connections", "max_connections_per_address",
                                                  "idle_timeout_s", "request_timeout_s", "send_timeout_s"}
    assert props["limits"]["properties"]["max_connections"]["default"] == 5
    assert props["allow_from"]["default"] == []
    full = limits_schema(Limits())
    assert full["properties"]["max_request_bytes"]["default"] == Limits().max_request_bytes
    section = {"limits": {"max_connections": 7}}
    assert limits_from_section(section, Limits(), "line").max_connections == 7


def test_an_old_key_is_read_with_a_warning_and_a_conflict_is_refused(caplog):
    from gateway.errors import ConfigError

    defaults = Limits(max_connections=32)
    got = limits_from_section({"max_connections": 4, "limits": {"max_connections": 32}}, defaults, "modbus_tcp",
                              legacy={"max_connections": "max_connections"})
    assert got.max_connections == 4
    assert "modbus_tcp.max_connections is deprecated: write it as modbus_tcp.limits.max_connections" in caplog.text
    with pytest.raises(ConfigError, match=r"modbus_tcp\.max_connections: given twice"):
        limits_from_section({"max_connections": 4, "limits": {"max_connections": 8}}, defaults, "modbus_tcp",
                            legacy={"max_connections": "max_connections"})
    # "0 = never" is not offered for a request any more: the longest allowed instead
    got = limits_from_section({"request_timeout_s": 0, "limits": {}}, defaults, "modbus_tcp",
                              legacy={"request_timeout_s": "request_timeout_s"})
    assert got.request_timeout_s == 3600
    with pytest.raises(ValueError, match="request_timeout_s"):
        Limits(request_timeout_s=0)
