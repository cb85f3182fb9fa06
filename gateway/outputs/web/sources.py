"""Where the web face gets history and alarms: other plugins through hooks, or its own fallback.

- History: ``bmsgw_history_query`` (the history module answers it).  For every family no plugin answers
  for (no history module, history off, or the family left out of what it records) the face keeps a small
  in-memory buffer of every such point (``web.trend_buffer``: one sample every ``interval_s``, ``samples`` deep; 1 h by
  default) so trends still work, only over the recent past, and lost on restart.  Which families those are
  is asked once at start, with an empty time range (a plugin answers that without reading its storage).
- Alarms: ``bmsgw_alarms`` (the alarm engine answers it, thread-safely: it is called from the web server's
  threads); acknowledging is a write like any other, through ``Gateway.write``.  With no alarm engine the pages
  say so; nothing is invented.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
from array import array
from typing import Any

from gateway.commands import NotWritable, Principal, WriteRejected
from gateway.points import PointRef, Quality

log = logging.getLogger(__name__)


class LiveBuffer:
    """Recent samples of every gauge point, one every ``interval_s`` (a reading is kept when the series' last
    sample is ``interval_s`` old), over the last ``samples`` slots of ``interval_s``.

    The slots are a time axis shared by every series (slot k covers [k * interval_s, (k + 1) * interval_s)),
    so a sample needs only its value (float32, as before: finer than any sensor's resolution) and where in its
    slot it was read (uint16, 1/65535 of the interval: 0.2 ms at 15 s): 6 bytes, in two flat arrays of
    ``samples`` columns x one row per series, allocated whole at start (what the buffer holds when full is what
    it takes from the start).  A ring of timestamps and values per point took about 3 KB per point at 240
    samples; a column is cleared in one slice assignment when the time axis moves on, whatever the bank's size.
    """

    _EMPTY = 0xFFFF  # the offset of a slot the series has no sample in
    _STEPS = 65535  # offsets 0..65534 within a slot

    def __init__(self, pointmap, interval_s: float, samples: int, families: set[str] | None = None) -> None:
        """``families``: the point families to keep (None: every gauge)."""
        self.interval_s = float(interval_s)
        self.samples = int(samples)
        wanted = (e.ref for e in pointmap if e.spec.kind == "gauge" and (families is None or e.spec.id in families))
        self._row: dict[PointRef, int] = {ref: i for i, ref in enumerate(dict.fromkeys(wanted))}
        n = self._n = len(self._row)
        self._values = array("f", bytes(4 * n * self.samples))  # [slot position * n + row]
        self._offsets = array("H", b"\xff\xff" * (n * self.samples))  # all empty
        self._empty_column = array("H", b"\xff\xff" * n)
        self._filled = bytearray(n)  # 1 for the series that ever got a sample
        # each series' last sample time: the next one interval_s after it (a list: read for every reading)
        self._last: list[float] = [-math.inf] * n
        self._newest: int | None = None  # the newest slot
        self._lock = threading.Lock()

    def _advance(self, slot: int) -> None:
        """Make ``slot`` the newest: the columns of the slots in between (at most the whole window) emptied."""
        n, samples, empty = self._n, self.samples, self._empty_column
        newest = self._newest
        first = slot - samples + 1 if newest is None else max(newest + 1, slot - samples + 1)
        for s in range(first, slot + 1):
            p = (s % samples) * n
            self._offsets[p:p + n] = empty
        self._newest = slot

    def on_batch(self, batch) -> None:
        """Store listener: keep a reading when its series' last sample is ``interval_s`` old (and the series
        has none yet in the reading's slot)."""
        interval, samples, steps, empty = self.interval_s, self.samples, self._STEPS, self._EMPTY
        rows, n, values, offsets, filled = self._row, self._n, self._values, self._offsets, self._filled
        good, nan, per_second = Quality.GOOD, math.nan, steps / interval
        with self._lock:
            last, newest = self._last, self._newest
            for ref, reading in batch:
                r = rows.get(ref)
                if r is None:
                    continue
                ts = reading.ts
                if 0.0 <= ts - last[r] < interval:  # (a reading from before the last: the clock went back)
                    continue
                slot = int(ts // interval)
                if newest is None or slot > newest:
                    self._advance(slot)
                    newest = slot
                elif slot <= newest - samples:  # older than the whole window: the clock was set back
                    self._newest = None
                    self._advance(slot)
                    newest = slot
                    last = self._last = [-math.inf] * n
                pos = (slot % samples) * n + r
                if offsets[pos] != empty:
                    continue
                offset = int((ts - slot * interval) * per_second + 0.5)
                offsets[pos] = offset if offset < steps else steps - 1
                value = reading.value
                values[pos] = value if reading.quality is good and value is not None else nan
                filled[r] = 1
                last[r] = ts

    def query(self, ref: PointRef, start: float, end: float, max_points: int) -> list[tuple[float, float | None]]:
        interval, samples, n, steps, empty = self.interval_s, self.samples, self._n, self._STEPS, self._EMPTY
        pairs = []
        with self._lock:
            r = self._row.get(ref)
            newest = self._newest
            if r is None or newest is None or not self._filled[r]:
                return []
            values, offsets = self._values, self._offsets
            for slot in range(newest - samples + 1, newest + 1):
                pos = (slot % samples) * n + r
                off = offsets[pos]
                if off != empty:
                    pairs.append((slot * interval + off * interval / steps, values[pos]))
        out = [(t, None if math.isnan(v) else round(v, 6)) for t, v in pairs if start <= t <= end]
        return decimate(out, max_points)

    def __len__(self) -> int:
        """The series holding at least one sample."""
        return self._filled.count(1)

    def __contains__(self, ref: PointRef) -> bool:
        return ref in self._row


def decimate(samples: list[tuple[float, float | None]], max_points: int) -> list[tuple[float, float | None]]:
    """At most ``max_points`` samples: means of equal runs (gaps stay gaps when a whole run is empty)."""
    n = len(samples)
    if n <= max_points:
        return samples
    out = []
    for k in range(max_points):
        run = samples[k * n // max_points:(k + 1) * n // max_points]
        vals = [v for _, v in run if v is not None]
        out.append((run[len(run) // 2][0], sum(vals) / len(vals) if vals else None))
    return out


class Sources:
    """History and alarms for one gateway, whichever plugin provides them."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.buffer: LiveBuffer | None = None
        self.history_families: set[str] = set()  # gauge families a history plugin answers for

    # -- history ---------------------------------------------------------------------------------------------
    @property
    def history_plugged(self) -> bool:
        """A history plugin answers for at least one family (asked at start)."""
        return bool(self.history_families)

    def _ask_history(self) -> set[str]:
        """The gauge families a history plugin keeps: one point of each asked with an empty range."""
        first: dict[str, PointRef] = {}
        for e in self.gateway.pointmap:
            if e.spec.kind == "gauge":
                first.setdefault(e.spec.id, e.ref)
        hook = self.gateway.pm.hook.bmsgw_history_query
        if not hook.get_hookimpls():
            return set()
        return {pid for pid, ref in first.items()
                if hook(gateway=self.gateway, ref=ref, start=0.0, end=0.0, max_points=1) is not None}

    def start_buffer(self, interval_s: float, samples: int) -> None:
        if self.buffer is not None:
            return
        self.history_families = self._ask_history()
        gauges = {e.spec.id for e in self.gateway.pointmap if e.spec.kind == "gauge"}
        unkept = gauges - self.history_families
        if not unkept:
            return
        self.buffer = LiveBuffer(self.gateway.pointmap, interval_s, samples, families=unkept)
        self.gateway.store.subscribe(self.buffer.on_batch)
        if self.history_families:
            log.info("trends of %d families no history module records: the last %.0f min kept in memory",
                     len(unkept), interval_s * samples / 60)
        else:
            log.info("no history module: trends show the last %.0f min kept in memory", interval_s * samples / 60)

    def stop_buffer(self) -> None:
        if self.buffer is not None:
            self.gateway.store.unsubscribe(self.buffer.on_batch)
            self.buffer = None

    def history(self, ref: PointRef, start: float, end: float, max_points: int) -> tuple[str, list]:
        """(source, samples): source is "history", "memory" or "none"."""
        if self.gateway.pm.hook.bmsgw_history_query.get_hookimpls():
            result = self.gateway.pm.hook.bmsgw_history_query(gateway=self.gateway, ref=ref, start=start,
                                                              end=end, max_points=max_points)
            if result is not None:
                return "history", decimate([(float(t), None if v is None else float(v)) for t, v in result],
                                           max_points)
        if self.buffer is not None and ref in self.buffer:
            return "memory", self.buffer.query(ref, start, end, max_points)
        return "none", []

    # -- analytics --------------------------------------------------------------------------------------------
    def _analytics_state(self, read):
        """``read(state)`` on the analytics' state file, opened read-only like the reports do; None when the
        analytics plugin is not loaded, keeps no state yet, or the file cannot be read."""
        from gateway.analytics import open_state, state_path

        if not self.gateway.config.section("analytics"):  # the analytics plugin is not loaded
            return None
        if not state_path(self.gateway.config).exists():
            return None
        try:
            state = open_state(self.gateway.config, readonly=True)
        except (OSError, sqlite3.Error):
            log.exception("the analytics state could not be opened")
            return None
        try:
            return read(state)
        except sqlite3.Error:
            log.exception("the analytics state could not be read")
            return None
        finally:
            state.close()

    def forecast(self, string: int, cell: int) -> dict[str, Any] | None:
        """The analytics' last forecast of one battery as it saved it (the fitted curve, its source, the dates)."""
        return self._analytics_state(lambda state: state.forecasts(string).get((string, cell)))

    def in_service_since(self, string: int) -> dict[int, float]:
        """When each battery of a string went into service as the analytics count its life (installation,
        replacement, or when it was first seen); empty when unknown."""
        found = self._analytics_state(lambda state: state.life())
        return {c: first for (s, c), (_used, _ts, first) in (found or {}).items() if s == string and first}

    # -- alarms ----------------------------------------------------------------------------------------------
    @property
    def alarms_plugged(self) -> bool:
        return bool(self.gateway.pm.hook.bmsgw_alarms.get_hookimpls())

    def alarms(self, active: bool, limit: int = 500) -> list[dict[str, Any]] | None:
        if not self.alarms_plugged:
            return None
        return self.gateway.pm.hook.bmsgw_alarms(gateway=self.gateway, active=active, limit=limit)

    def acknowledge(self, alarm_id: str, by: Principal) -> bool | None:
        """Acknowledge through ``Gateway.write`` (``gateway.acknowledge_alarm``): True when done (or it already
        was), False when no active alarm has that number, None when no alarm engine runs."""
        if not self.alarms_plugged:
            return None
        try:
            number = int(alarm_id)
        except ValueError:
            return False
        try:
            self.gateway.write_from_thread(PointRef("gateway.acknowledge_alarm"), number, by)
        except NotWritable:
            return None
        except WriteRejected:
            return False
        return True
