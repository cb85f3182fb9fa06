"""A bounded asyncio TCP server: one policy for what clients may hold of every network face.

A face gives a subclass of ``BoundedConnection`` (an ``asyncio.Protocol``): its ``data_received`` frames the
byte stream into requests and tells the base class where each one starts and ends.  The server does the rest,
the same way for every face:

- binding: an address that cannot be bound raises ``BindError`` naming the face's key, the address and the
  operating system's reason (start-up is refused; a live ``rebind`` keeps the old listener);
- admission: ``allow_from``, at most ``max_connections`` open and ``max_connections_per_address`` from one
  address.  When every slot is taken (of the server, or of the newcomer's address), the newcomer replaces a
  connection that has completed no request (an *unproven* one: silent, trickling, or still shaking hands),
  the one open longest among those that had their chance: they began a request and stalled (its rest has not
  come within ``STALLED_AFTER_S``), or have been connected for ``SPEAK_GRACE_S`` without completing one, and
  nothing they sent waits unread.  Only when none did, the newest arrivals go, the oldest first: those that
  have not spoken yet (their first bytes may be on their way), whose request's rest may still come, or whose
  turn it is (``client_turn``: a TLS handshake the server has answered), then those whose bytes arrived
  unread (in a flood the loop admits a batch before it reads any; a request may be whole).  For the server's
  limit, one of those is not taken at once: up to ``max_connections`` newcomers (``OVERFLOW_MAX`` at most)
  are admitted over it, and ``OVERFLOW_TRIM_S`` later, once the loop has read what they sent, the server
  trims back to the limit in the same order, by then telling a stalled request from one that arrived whole
  (those not heard yet stay ``OVERFLOW_HOLD_S`` from their connect at most; when only served ones are left,
  the newest let in over the limit is closed between two requests); only past that bound does a newcomer
  replace one at once.  A steady flood may so hold a face at its limit plus that surplus.
  A connection that completed a request (*proven*) is never dropped for a newcomer while an unproven one is
  open; when only proven ones are, the newcomer replaces the one idle longest if the protocol allows closing
  idle connections (HTTP keep-alive: ``idle_evictable``), else it is refused;
- deadlines, on the event loop's timers (no watchdog thread): a request must arrive whole within
  ``request_timeout_s`` of its first byte; a connection that completes no request for ``idle_timeout_s`` is
  closed; a client that does not take its answer for ``send_timeout_s`` is closed.  While a request is being
  answered (``answer_pending()`` ... ``answer_sent()``) the idle and request clocks stand still;
- live changes: ``apply(limits, allow_from)`` and ``rebind(host, port)``;
- counters for the face's status.

A face's connection, whole (one request per line, answered at once; tests/test_net_server.py runs it)::

    class LineConnection(BoundedConnection):
        def opened(self) -> None:
            self.buf = bytearray()

        def data_received(self, data: bytes) -> None:
            if self.closed:
                return
            self.request_started()  # the request clock runs from its first byte (no effect if running)
            self.buf += data
            while (end := self.buf.find(b"\n")) >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 1]
                self.request_complete()  # proven; the idle clock restarts
                self.transport.write(line.upper() + b"\n")
            if self.buf:
                self.request_started()  # the next one has begun
            if len(self.buf) > self.server.limits.max_request_bytes:
                self.close()

    server = BoundedServer("line", LineConnection, host="127.0.0.1", port=7000, limits=Limits())
    await server.start()
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import math
import os
import socket
import termios
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import address_allowed
from ..errors import ConfigError
from ..service import ReloadResult, StartError
from .limits import Limits

if TYPE_CHECKING:
    from .tls import TlsSettings

log = logging.getLogger(__name__)

ABORT_AFTER_S = 5.0  # a closed connection whose client does not take the rest of its answer is reset after this
# a client that has not spoken this long after its connect has had its chance (its first bytes follow the
# handshake within a round trip): until then it is replaced only after those that began a request and stalled
SPEAK_GRACE_S = 1.0
# a request whose first bytes came this long ago and whose rest has not has stalled; until then the rest may be on
# its way (an HTTP client's body after its head, a request cut in two segments: a round trip apart at most)
STALLED_AFTER_S = 0.2
# A wave of connections (returning slow clients) can be several times the face's slots and arrive before the loop
# has read any of them: a newcomer that could only replace one that has had no chance to speak is admitted over
# the limit instead (at most ``max_connections`` of them, OVERFLOW_MAX), and the server trims back this long later,
# when what they sent has been read, and again as long as it is over; those not heard yet stay for OVERFLOW_HOLD_S
# from their connect at most.
OVERFLOW_TRIM_S = 0.05
OVERFLOW_HOLD_S = 1.0
OVERFLOW_MAX = 64  # (a bound on the descriptors a wave may hold, whatever max_connections is)
_EARLY = 0.001  # a timer may fire this much before its deadline (the loop's clock resolution)


class BindError(ConfigError, StartError):
    """A face's address that cannot be bound: ``file: face.listen: cannot listen on host:port: reason``."""

    def __init__(self, file: str, key: str, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        shown = f"[{host}]" if ":" in host else host
        super().__init__(file, key, f"cannot listen on {shown}:{port}: {reason}")


class LogLimiter:
    """At most ``burst`` warnings per ``period`` seconds, then one line saying how many were not logged."""

    def __init__(self, logger: logging.Logger, what: str, burst: int = 20, period: float = 60.0) -> None:
        self.logger, self.what, self.burst, self.period = logger, what, burst, period
        self.window_start, self.count, self.suppressed = -math.inf, 0, 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.window_start >= self.period:
            if self.suppressed:
                self.logger.warning("%s: %d more such warnings in the last %.0f s were not logged", self.what,
                                    self.suppressed, self.period)
            self.window_start, self.count, self.suppressed = now, 0, 0
        if self.count < self.burst:
            self.count += 1
            self.logger.warning(msg, *args)
        else:
            self.suppressed += 1


class BoundedConnection(asyncio.Protocol):
    """One client of a ``BoundedServer``.  A face subclasses it: ``opened()`` to set up, ``data_received`` to
    frame requests (calling ``request_started()`` / ``request_complete()``), ``lost(exc)`` to clean up, and
    ``timed_out(reason)`` to say something before the connection is closed (HTTP: 408)."""

    # whether the protocol lets the server close a connection between two requests at any time (HTTP keep-alive
    # does; a Modbus master expects its connection to stay): such an idle one may make room for a newcomer
    idle_evictable = False

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def __init__(self, server: BoundedServer) -> None:
        self.server = server
        self.peer = "?"
        self.proven = False  # completed a request: never evicted for a newcomer
        self.admitted = False
        self.closed = False
        self.answering = False  # between answer_pending() and answer_sent(): no idle or request deadline
        self.connected_at = 0.0
        self.last_activity = 0.0  # connected, or the last request completed / answered
        self.request_since: float | None = None  # first byte of the request now arriving
        # the server answered part of an exchange still under way and waits for the client's next step (a TLS
        # handshake's second flight): not a stalled request while it is young (see BoundedServer._victim)
        self.client_turn = False
        self.send_blocked_since: float | None = None  # the transport's buffer is full since then
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.reading_paused = False  # the face stopped reading from the client (its backlog is full)
        self._fd = -1  # the socket's descriptor, to ask how many bytes wait unread

    # -- for the face ----------------------------------------------------------------------------------------
    def set_reading_paused(self, paused: bool) -> None:
        """Stop or resume reading from the client (the transport is told only when that changes)."""
        if paused == self.reading_paused:
            return
        self.reading_paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def opened(self) -> None:
        """The connection was admitted (``self.transport``, ``self.peer`` are set)."""

    def lost(self, exc: Exception | None) -> None:
        """The connection is gone (closed by either side)."""

    def timed_out(self, reason: str) -> None:
        """A deadline passed (``"request"``, ``"idle"`` or ``"send"``); the default closes the connection."""
        self.close()

    def request_started(self) -> None:
        """The first byte of a request has arrived (again for the same request: no effect)."""
        if self.request_since is None:
            self.request_since = self.loop.time()
            self._arm()

    def request_complete(self) -> None:
        """A whole request has arrived: the connection is proven and its idle clock restarts."""
        self.last_activity = self.loop.time()
        self.request_since = None
        if not self.proven:
            self.proven = True
            self.server._unproven.pop(self, None)

    def between_requests(self) -> None:
        """No request is arriving any more, none completed (e.g. a TLS handshake, which runs under the request
        deadline, is done): the idle clock runs from now."""
        self.request_since = None
        self.last_activity = self.loop.time()

    def answer_pending(self) -> None:
        """The request is answered later (a thread, a bus transaction): no idle or request deadline until
        ``answer_sent()`` (the send deadline still holds)."""
        self.answering = True

    def answer_sent(self) -> None:
        self.answering = False
        self.last_activity = self.loop.time()
        self._arm()

    def has_unread_bytes(self) -> bool:
        """Whether bytes from the client wait in the kernel, not yet read by the event loop."""
        if self._fd < 0:
            return False
        try:
            waiting = int.from_bytes(fcntl.ioctl(self._fd, termios.FIONREAD, bytes(4)), "little", signed=True)
        except OSError:
            return False
        return waiting > 0

    @property
    def writing_paused(self) -> bool:
        return self.send_blocked_since is not None

    def close(self) -> None:
        """Close after what was written is sent (reset if the client does not take it within 5 s)."""
        if self.closed:
            return
        self._forget()
        self.transport.close()
        self.loop.call_later(ABORT_AFTER_S, self.transport.abort)  # no effect once the transport is gone

    def abort(self) -> None:
        """Close at once, dropping whatever was not sent yet."""
        if self.closed:
            return
        self._forget()
        self.transport.abort()

    # -- asyncio's side --------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self.connected_at = self.last_activity = self.loop.time()
        if not self.server._admit(self):
            self.closed = True
            transport.abort()  # type: ignore[attr-defined]
            return
        self.admitted = True
        self._arm()
        self.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self.admitted:
            self.lost(exc)

    def pause_writing(self) -> None:
        if self.send_blocked_since is None:
            self.send_blocked_since = self.loop.time()
            self._arm()

    def resume_writing(self) -> None:
        self.send_blocked_since = None
        if self.request_since is not None:  # it could not send while its answers were not taken: a fresh start
            self.request_since = self.loop.time()
        self._arm()

    # -- deadlines -------------------------------------------------------------------------------------------
    def _forget(self) -> None:
        self.closed = True
        self.server._release(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def _deadline(self) -> float:
        limits = self.server.limits
        if self.send_blocked_since is not None:  # it does not read: only the send deadline counts
            return self.send_blocked_since + limits.send_timeout_s
        when = math.inf
        if not self.answering:
            if limits.idle_timeout_s > 0:
                when = min(when, self.last_activity + limits.idle_timeout_s)
            if self.request_since is not None:
                when = min(when, self.request_since + limits.request_timeout_s)
        return when

    def _arm(self, rearm: bool = False) -> None:
        """Make the timer fire by the nearest deadline.  Deadlines that move later (a request completed) leave
        it where it is: it fires early, finds nothing due and re-arms itself, so the fast path never touches
        the loop's timer heap."""
        if self.closed:
            return
        when = self._deadline()
        if when >= self._timer_at and not rearm:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        if when < math.inf:
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self.closed:
            return
        now = self.loop.time() + _EARLY
        limits = self.server.limits
        if self.send_blocked_since is not None:
            if now < self.send_blocked_since + limits.send_timeout_s:
                self._arm()
                return
            reason = "send"
        elif not self.answering and self.request_since is not None and \
                now >= self.request_since + limits.request_timeout_s:
            reason = "request"
        elif not self.answering and limits.idle_timeout_s > 0 and now >= self.last_activity + limits.idle_timeout_s:
            reason = "idle"
        else:
            self._arm()
            return
        self.server._timed_out(self, reason, now)
        self.timed_out(reason)


_REASONS = {"request": "its request did not arrive whole within {t:g} s of its first byte "
                       "({face}.limits.request_timeout_s)",
            "send": "it took none of its answer for {t:g} s ({face}.limits.send_timeout_s)",
            "idle": "idle for {t:g} s ({face}.limits.idle_timeout_s)"}


class BoundedServer:
    """A face's TCP listener with the admission, eviction and deadline policy of this module.

    ``factory(server)`` makes the face's connection for each accepted socket.  ``face`` names the config
    section in messages (``modbus_tcp``, ``web``); ``src`` is the config file, for ``BindError``.
    """

    def __init__(self, face: str, factory: Callable[[BoundedServer], BoundedConnection], *, host: str, port: int,
                 limits: Limits, allow_from: Sequence[Any] = (), tls: TlsSettings | None = None,
                 src: str = "config", listen_key: str | None = None, counters: dict[str, int] | None = None) -> None:
        self.face = face
        self.factory = factory
        self.host, self.port = host, port
        self.limits = limits
        self.allow_from = list(allow_from)
        self.tls = tls
        self.src = src
        self.listen_key = listen_key or f"{face}.listen"
        self.connections: set[BoundedConnection] = set()
        self._unproven: dict[BoundedConnection, None] = {}  # in the order they connected
        self._by_address: dict[str, dict[BoundedConnection, None]] = {}  # the same order
        # the face may pass its own counters dict, so that its status shows one flat set
        self.counters = counters if counters is not None else {}
        for key in ("connections", "refused_connections", "evicted", "timed_out", "idle_closed"):
            self.counters.setdefault(key, 0)
        self.warnings = LogLimiter(log, face)
        self._listener: asyncio.Server | None = None
        self._trim: asyncio.TimerHandle | None = None  # see OVERFLOW_TRIM_S
        self._surplus: dict[BoundedConnection, None] = {}  # let in over max_connections, in order

    # -- life cycle --------------------------------------------------------------------------------------------
    @property
    def listening(self) -> bool:
        return self._listener is not None

    async def start(self) -> None:
        """Bind and listen (``BindError`` when the address cannot be bound)."""
        self._listener = await self._bind(self.host, self.port)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        self._surplus.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for conn in list(self.connections):
            conn.close()
        if listener is not None:
            await listener.wait_closed()

    async def rebind(self, host: str, port: int, close_clients: bool = True) -> int:
        """Listen on ``host:port`` instead; returns how many client connections were closed by the switch
        (none with ``close_clients`` False: they finish on their own, under the same limits; the web face moves
        that way, since the request that moves it is answered on the old connection).

        The new address is bound before the old listener is closed, so a failure (``BindError``) leaves the
        server serving where it was.  Only when the new address conflicts with the old one itself (the same
        port on an overlapping address) is the old listener closed first, and bound again if the new one fails.
        """
        if self._listener is None:
            self.host, self.port = host, port
            return 0
        if (host, port) == (self.host, self.port):
            return 0
        old = self._listener
        try:
            new = await self._bind(host, port)
        except BindError as exc:
            if port != self.port or "in use" not in exc.reason.lower():
                raise
            old.close()
            try:
                new = await self._bind(host, port)
            except BindError:
                self._listener = await self._bind(self.host, self.port)
                raise
        else:
            old.close()
        self._listener, self.host = new, host
        self.port = new.sockets[0].getsockname()[1]
        closed = len(self.connections) if close_clients else 0
        for conn in list(self.connections) if close_clients else ():
            conn.close()
        if closed:
            log.info("%s: now listening on %s:%d; closed %d client connection(s) of the old address",
                     self.face, host, self.port, closed)
        return closed

    async def follow_listen(self, host: str, port: int, result: ReloadResult, endpoint: Callable[[], str]) -> None:
        """A reload's ``listen`` setting: move there and say so in ``result`` (with the clients the old address
        closed), or keep the old address with the reason in ``result.failed``.  Port 0 on the same host (a free
        port, as tests ask) is where the server already is.  ``endpoint()``: the face's address for a person."""
        if (host, port) == (self.host, self.port) or (port == 0 and host == self.host):
            return
        try:
            moved = await self.rebind(host, port)
        except BindError as exc:
            result.failed[self.listen_key] = f"{exc.message}; still listening on {endpoint()}"
            return
        result.notes.append(f"{self.face}: now on {endpoint()}" +
                            (f"; {moved} client connection(s) on the old address closed" if moved else ""))

    def apply(self, limits: Limits, allow_from: Sequence[Any] = ()) -> int:
        """New limits and allow-list, live; returns how many connections this closed: those from addresses
        no longer allowed, and unproven ones over a lowered ``max_connections`` (proven ones stay)."""
        self.limits = limits
        self.allow_from = list(allow_from)
        closed = 0
        if self.allow_from:
            for conn in [c for c in self.connections if not address_allowed(c.peer, self.allow_from)]:
                conn.close()
                closed += 1
            if closed:
                log.info("%s: closed %d connection(s) from addresses no longer in %s.allow_from", self.face, closed,
                         self.face)
        while len(self.connections) > limits.max_connections:
            victim, _ = self._victim_of_all()
            if victim is None:
                break
            victim.close()
            self.counters["evicted"] += 1
            closed += 1
        for conn in self.connections:
            conn._arm(rearm=True)
        return closed

    async def _bind(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        backlog = max(16, min(128, 2 * self.limits.max_connections))
        try:
            return await loop.create_server(self._protocol, host, port, reuse_address=True, backlog=backlog)
        except OSError as exc:  # asyncio words it "error while attempting to bind on ...": the OS's words only
            if isinstance(exc, socket.gaierror) or not exc.errno:  # a name that does not resolve
                reason = exc.strerror or str(exc)
            else:
                reason = os.strerror(exc.errno)
            if exc.errno == errno.EADDRINUSE:
                reason = f"{reason} (another program, or another bmsgw, listens there)"
            raise BindError(self.src, self.listen_key, host, port, reason) from None

    def _protocol(self) -> asyncio.Protocol:
        conn = self.factory(self)
        if self.tls is None:
            return conn
        from .tls import TlsLayer

        return TlsLayer(conn, self.tls)

    # -- status ------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {**self.counters, "open_connections": len(self.connections),
                "unproven_connections": len(self._unproven)}

    # -- the policy --------------------------------------------------------------------------------------------
    def _admit(self, conn: BoundedConnection) -> bool:
        peer, limits = conn.peer, self.limits
        if self.allow_from and not address_allowed(peer, self.allow_from):
            return self._refuse(peer, f"not in {self.face}.allow_from")
        siblings = self._by_address.get(peer, {})
        if len(siblings) >= limits.max_connections_per_address:
            # the address competes with itself: its own unproven (or idle, where that is allowed) connection goes
            victim, _ = self._victim(siblings)
            if victim is None:
                return self._refuse(peer, f"{len(siblings)} connections from this address are open and every one "
                                          f"has been served ({self.face}.limits.max_connections_per_address)")
            self._evict(victim, conn, "max_connections_per_address")
        if len(self.connections) >= limits.max_connections:
            victim, had_its_chance = self._victim_of_all()
            if victim is None:
                return self._refuse(peer, f"{len(self.connections)} connections are open and every one has been "
                                          f"served ({self.face}.limits.max_connections)")
            if had_its_chance or len(self.connections) >= limits.max_connections + min(limits.max_connections,
                                                                                      OVERFLOW_MAX):
                self._evict(victim, conn, "max_connections")
            if len(self.connections) >= limits.max_connections:
                # the victim may be a client whose request is on its way: look again once it has been read (and
                # at the overflow's bound, where one went at once, the count is over the limit all the same)
                self._surplus[conn] = None
                self._trim_later()
        self.connections.add(conn)
        self._unproven[conn] = None
        self._by_address.setdefault(peer, {})[conn] = None
        self.counters["connections"] += 1
        return True

    def _victim_of_all(self) -> tuple[BoundedConnection | None, bool]:
        """``_victim`` among every connection of the server (the unproven ones first)."""
        victim, had_its_chance = self._victim(self._unproven)
        return (victim, had_its_chance) if victim is not None else self._victim(self.connections)

    @staticmethod
    def _victim(candidates: dict[BoundedConnection, None] | set[BoundedConnection]) \
            -> tuple[BoundedConnection | None, bool]:
        """The connection a newcomer replaces (``candidates`` iterate in connection order, except the set of
        all, which holds proven ones only when no unproven is left):

        1. the unproven one connected longest that has had its chance and failed it: it began a request it has
           not finished within ``STALLED_AFTER_S``, or has been connected for ``SPEAK_GRACE_S``, and nothing it
           sent waits unread;
        2. else the unproven one connected longest that has said nothing yet, whose request's rest may be on its
           way, or whose turn it is (``client_turn``): a client's first bytes follow its connect, and during a
           flood of returning slow clients many newcomers may be admitted before they arrive (when it went by
           age alone, a client just connected became the oldest and was taken); a TLS client works out its
           answer to the server's handshake (were it taken first, a flood of silent connections would reset
           every HTTPS client then);
        3. else the unproven one connected longest (its bytes wait unread: its request may be whole);
        4. else, where the face allows it (HTTP keep-alive), the one idle longest; else none.

        Also returned: whether it had its chance (1 and 4), or may be a client not heard yet (2 and 3)."""
        idle: BoundedConnection | None = None
        unread: BoundedConnection | None = None
        unheard: BoundedConnection | None = None
        now: float | None = None
        for conn in candidates:
            if not conn.proven:
                if conn.has_unread_bytes():
                    unread = unread or conn
                    continue
                if now is None:
                    now = conn.loop.time()
                since = conn.request_since
                if since is not None and not conn.client_turn and now - since >= STALLED_AFTER_S:
                    return conn, True
                if now - conn.connected_at >= SPEAK_GRACE_S:
                    return conn, True
                unheard = unheard or conn
                continue
            if conn.idle_evictable and not conn.answering and conn.request_since is None and \
                    (idle is None or conn.last_activity < idle.last_activity):
                idle = conn
        if unheard or unread:
            return unheard or unread, False
        return idle, idle is not None

    def _trim_later(self) -> None:
        """Over ``max_connections`` (a newcomer was admitted in a wave): trim back ``OVERFLOW_TRIM_S`` from now."""
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(OVERFLOW_TRIM_S, self._trim_now)

    def _trim_now(self) -> None:
        """Back to ``max_connections``, the connections going in ``_victim``'s order; while those left over have
        had no chance to speak, again a little later (each for ``OVERFLOW_HOLD_S`` from its connect at most).  When
        every one left has been served and none may be closed idle, the newest let in over the limit is closed
        (its answers sent first) between two requests: a newcomer is refused when every slot holds a served
        client, and it was let in only on the chance that one of the others would not be."""
        self._trim = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while len(self.connections) > self.limits.max_connections:
            victim, had_its_chance = self._victim_of_all()
            if victim is not None:
                if not had_its_chance and now - victim.connected_at < OVERFLOW_HOLD_S:
                    break  # not heard yet: soon again
                self._evict(victim, None, "max_connections")
                continue
            served = next((c for c in reversed(self._surplus) if not c.answering and c.request_since is None
                           and not c.has_unread_bytes()), None)
            if served is None:
                if not self._surplus:
                    return  # (over a limit lowered live: served connections stay, as apply() says)
                break  # each one let in over the limit is busy: soon again
            self.counters["evicted"] += 1
            self.warnings.warning("%s: closing the connection from %s, let in over %s.limits.max_connections "
                                  "during a burst, now that every open one has been served", self.face, served.peer,
                                  self.face)
            served.close()
        else:
            self._surplus.clear()  # those left are members like the others
            return
        self._trim = loop.call_later(OVERFLOW_TRIM_S, self._trim_now)

    def _evict(self, victim: BoundedConnection, newcomer: BoundedConnection | None, limit: str) -> None:
        """Close ``victim`` at once to make room for ``newcomer`` (None: the trim after a wave)."""
        self.counters["evicted"] += 1
        state = "idle" if victim.proven else "without a complete request"
        now = newcomer.connected_at if newcomer is not None else victim.loop.time()
        room = f"for {newcomer.peer}" if newcomer is not None else "after a burst of connections"
        self.warnings.warning("%s: closing the connection from %s (open %.1f s, %s) to make room %s (%s.limits.%s)",
                              self.face, victim.peer, now - victim.connected_at, state, room, self.face, limit)
        victim.abort()

    def _refuse(self, peer: str, why: str) -> bool:
        self.counters["refused_connections"] += 1
        self.warnings.warning("%s: connection from %s refused: %s", self.face, peer, why)
        return False

    def _release(self, conn: BoundedConnection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self._unproven.pop(conn, None)
        self._surplus.pop(conn, None)
        siblings = self._by_address[conn.peer]
        del siblings[conn]
        if not siblings:
            del self._by_address[conn.peer]

    def _timed_out(self, conn: BoundedConnection, reason: str, now: float) -> None:
        limits = self.limits
        if reason == "idle":
            self.counters["idle_closed"] += 1
            log.debug("%s: closing the idle connection from %s", self.face, conn.peer)
            return
        self.counters["timed_out"] += 1
        seconds = limits.request_timeout_s if reason == "request" else limits.send_timeout_s
        log.info("%s: closing the connection from %s: %s", self.face, conn.peer,
                 _REASONS[reason].format(t=seconds, face=self.face))
