"""Routing for people: which severities go to whom, quiet hours, and a digest instead of a storm.

Pure logic with the time passed in, so it is tested without a clock.  Per route:

* an event whose severity the route does not take (or a clear, when ``clears`` is off) is skipped;
* during the route's quiet hours events are held (except the severities in ``except_severities``) and sent
  as one digest when the quiet hours end;
* otherwise a token bucket (``burst`` messages, refilled over ``per_s`` seconds) lets single alarms through
  at once; when it is empty, events collect for ``digest_s`` seconds and go out as one digest message.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from ..alarms.model import LEVEL, AlarmEvent
from .base import Message

MAX_DIGEST_LINES = 60


def parse_hhmm(text: str) -> int:
    """``"22:30"`` -> minutes after midnight."""
    try:
        hours, minutes = text.split(":")
        h, m = int(hours), int(minutes)
    except (ValueError, AttributeError):
        raise ValueError(f"expected HH:MM, got {text!r}") from None
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(f"expected HH:MM, got {text!r}")
    return h * 60 + m


@dataclass(frozen=True)
class QuietHours:
    start: int  # minutes after local midnight
    end: int
    except_severities: frozenset[str] = frozenset()

    def active(self, ts: float) -> bool:
        t = dt.datetime.fromtimestamp(ts)
        m = t.hour * 60 + t.minute
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= m < self.end
        return m >= self.start or m < self.end

    def ends_after(self, ts: float) -> float:
        t = dt.datetime.fromtimestamp(ts)
        end = t.replace(hour=self.end // 60, minute=self.end % 60, second=0, microsecond=0)
        if end <= t:
            end += dt.timedelta(days=1)
        return end.timestamp()


@dataclass(frozen=True)
class Route:
    name: str
    severities: frozenset[str]
    recipients: dict[str, tuple[str, ...]]  # notifier name -> addresses
    clears: bool = True
    quiet: QuietHours | None = None


@dataclass
class _RouteState:
    tokens: float
    refilled: float
    digest: list[AlarmEvent] = field(default_factory=list)
    digest_at: float | None = None
    held: list[AlarmEvent] = field(default_factory=list)
    held_until: float | None = None


@dataclass(frozen=True)
class Outgoing:
    route: Route
    message: Message


class Router:
    def __init__(self, routes: list[Route], site: str, burst: int = 5, per_s: float = 600.0,
                 digest_s: float = 120.0) -> None:
        self.routes = routes
        self.site = site
        self.burst = max(1, int(burst))
        self.per_s = float(per_s)
        self.digest_s = float(digest_s)
        self._state = {r.name: _RouteState(float(self.burst), 0.0) for r in routes}

    def _refill(self, st: _RouteState, now: float) -> None:
        if self.per_s > 0:
            st.tokens = min(float(self.burst), st.tokens + (now - st.refilled) * self.burst / self.per_s)
        else:
            st.tokens = float(self.burst)
        st.refilled = now

    def handle(self, event: AlarmEvent, now: float) -> list[Outgoing]:
        out = []
        for route in self.routes:
            if event.severity not in route.severities or (not event.active and not route.clears):
                continue
            st = self._state[route.name]
            if route.quiet and route.quiet.active(now) and event.severity not in route.quiet.except_severities:
                st.held.append(event)
                if st.held_until is None:
                    st.held_until = route.quiet.ends_after(now)
                continue
            self._refill(st, now)
            if st.digest_at is None and st.tokens >= 1.0:
                st.tokens -= 1.0
                out.append(Outgoing(route, compose_single(event, self.site, route.name)))
                continue
            st.digest.append(event)
            if st.digest_at is None:
                st.digest_at = now + self.digest_s
        return out

    def due(self, now: float) -> list[Outgoing]:
        """Digests whose time has come (the end of a digest window, the end of quiet hours)."""
        out = []
        for route in self.routes:
            st = self._state[route.name]
            if st.held_until is not None and now >= st.held_until:
                held, st.held, st.held_until = st.held, [], None
                if held:
                    out.append(Outgoing(route, compose_digest(held, self.site, route.name, "during quiet hours")))
            if st.digest_at is not None and now >= st.digest_at:
                events, st.digest, st.digest_at = st.digest, [], None
                self._refill(st, now)
                st.tokens = max(0.0, st.tokens - 1.0)
                if events:
                    out.append(Outgoing(route, compose_digest(events, self.site, route.name,
                                                              f"in {_span(self.digest_s)}")))
        return out

    def next_due(self) -> float | None:
        times = [t for st in self._state.values() for t in (st.digest_at, st.held_until) if t is not None]
        return min(times) if times else None

    def pending(self) -> int:
        return sum(len(st.digest) + len(st.held) for st in self._state.values())


# -- composing -----------------------------------------------------------------------------------------------
def _span(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:g} s"


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.6g} {unit}".rstrip()


def status_word(e: AlarmEvent) -> str:
    return e.severity.upper() if e.active else "CLEARED"


def compose_single(e: AlarmEvent, site: str, route: str) -> Message:
    head = f"{status_word(e)}: {e.message}"
    body = "\n".join([
        e.message, "",
        f"Alarm:       #{e.alarm_id}, {e.severity}, {'raised' if e.active else 'cleared'} at {_clock(e.ts)}",
        f"Object:      {e.object}",
        f"Measurement: {e.point} = {_num(e.value, e.unit)}",
        f"Setpoint:    {_num(e.threshold, e.unit)}",
        f"Site:        {site}",
        "", "-- bmsgw battery monitoring gateway", ""])
    return Message(subject=f"[{site}] {head}"[:200], body=body, short=f"{site}: {head}", events=(e,), route=route,
                   digest=False, severity=e.severity, ts=e.ts)


def compose_digest(events: list[AlarmEvent], site: str, route: str, when: str) -> Message:
    raised = [e for e in events if e.active]
    cleared = [e for e in events if not e.active]
    crit = sum(1 for e in raised if e.severity == "critical")
    top = max(events, key=lambda e: (e.active, LEVEL.get(e.severity, 0)))
    summary = f"{len(raised)} alarms raised ({crit} critical), {len(cleared)} cleared {when}"
    lines = [f"{summary}: one message instead of {len(events)}.", ""]
    for e in sorted(events, key=lambda e: e.ts)[:MAX_DIGEST_LINES]:
        clock = time.strftime("%H:%M:%S", time.localtime(e.ts))
        lines.append(f"{clock}  #{e.alarm_id:<6} {status_word(e):<8} {e.message}")
    if len(events) > MAX_DIGEST_LINES:
        lines.append(f"... and {len(events) - MAX_DIGEST_LINES} more: see the alarm log (bmsgw alarms).")
    lines += ["", f"Site: {site}", "", "-- bmsgw battery monitoring gateway", ""]
    worst = "critical" if crit else max((e.severity for e in events), key=lambda s: LEVEL.get(s, 0))
    return Message(subject=f"[{site}] {summary}"[:200], body="\n".join(lines),
                   short=f"{site}: {summary}. {status_word(top)}: {top.message}", events=tuple(events), route=route,
                   digest=True, severity=worst, ts=max(e.ts for e in events))
