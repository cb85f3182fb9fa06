"""Where the web face gets history and alarms: other plugins through hooks, or its own fallback.

- History: ``bmsgw_history_query`` (the history module answers it).  With no such plugin the face keeps a
  small in-memory ring per point (``web.trend_buffer``: one sample every ``interval_s``, ``samples`` deep;
  1 h by default) so trends still work, only over the recent past, and lost on restart.
- Alarms: ``bmsgw_alarms`` / ``bmsgw_alarm_acknowledge`` (the alarm engine answers them, thread-safely: they
  are called from the web server's threads).  With no alarm engine the pages say so; nothing is invented.
"""
from __future__ import annotations

import logging
import math
import threading
from array import array
from typing import Any

from gateway.points import PointRef, Quality

log = logging.getLogger(__name__)


class LiveBuffer:
    """Recent samples of every gauge point, one every ``interval_s``, in fixed-size rings."""

    def __init__(self, pointmap, interval_s: float, samples: int) -> None:
        self.interval_s = float(interval_s)
        self.samples = int(samples)
        self._wanted = {e.ref for e in pointmap if e.spec.kind == "gauge"}
        self._rings: dict[PointRef, list] = {}  # ref -> [ts array, value array, next index, count, last ts]
        self._lock = threading.Lock()

    def on_batch(self, batch) -> None:
        """Store listener: keep a reading when its ring's last sample is ``interval_s`` old."""
        with self._lock:
            for ref, reading in batch:
                ring = self._rings.get(ref)
                if ring is None:
                    if ref not in self._wanted:
                        continue
                    ring = self._rings[ref] = [array("d", bytes(8 * self.samples)),
                                               array("f", bytes(4 * self.samples)), 0, 0, -math.inf]
                if reading.ts - ring[4] < self.interval_s:
                    continue
                i = ring[2]
                ring[0][i] = reading.ts
                ring[1][i] = reading.value if reading.quality is Quality.GOOD and reading.value is not None else math.nan
                ring[2] = (i + 1) % self.samples
                ring[3] = min(ring[3] + 1, self.samples)
                ring[4] = reading.ts

    def query(self, ref: PointRef, start: float, end: float, max_points: int) -> list[tuple[float, float | None]]:
        with self._lock:
            ring = self._rings.get(ref)
            if ring is None:
                return []
            ts, vals, nxt, count = ring[0], ring[1], ring[2], ring[3]
            first = (nxt - count) % self.samples
            pairs = [(ts[(first + k) % self.samples], vals[(first + k) % self.samples]) for k in range(count)]
        out = [(t, None if math.isnan(v) else round(v, 6)) for t, v in pairs if start <= t <= end]
        return decimate(out, max_points)

    def __len__(self) -> int:
        return len(self._rings)


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

    # -- history ---------------------------------------------------------------------------------------------
    @property
    def history_plugged(self) -> bool:
        return bool(self.gateway.pm.hook.bmsgw_history_query.get_hookimpls())

    def start_buffer(self, interval_s: float, samples: int) -> None:
        if self.history_plugged or self.buffer is not None:
            return
        self.buffer = LiveBuffer(self.gateway.pointmap, interval_s, samples)
        self.gateway.store.subscribe(self.buffer.on_batch)
        log.info("no history module: trends show the last %.0f min kept in memory", interval_s * samples / 60)

    def stop_buffer(self) -> None:
        if self.buffer is not None:
            self.gateway.store.unsubscribe(self.buffer.on_batch)
            self.buffer = None

    def history(self, ref: PointRef, start: float, end: float, max_points: int) -> tuple[str, list]:
        """(source, samples): source is "history" or "memory"."""
        if self.history_plugged:
            result = self.gateway.pm.hook.bmsgw_history_query(gateway=self.gateway, ref=ref, start=start,
                                                              end=end, max_points=max_points)
            if result is not None:
                return "history", decimate([(float(t), None if v is None else float(v)) for t, v in result],
                                           max_points)
        if self.buffer is not None:
            return "memory", self.buffer.query(ref, start, end, max_points)
        return "none", []

    # -- alarms ----------------------------------------------------------------------------------------------
    @property
    def alarms_plugged(self) -> bool:
        return bool(self.gateway.pm.hook.bmsgw_alarms.get_hookimpls())

    def alarms(self, active: bool, limit: int = 500) -> list[dict[str, Any]] | None:
        if not self.alarms_plugged:
            return None
        return self.gateway.pm.hook.bmsgw_alarms(gateway=self.gateway, active=active, limit=limit)

    def acknowledge(self, alarm_id: str, user: str) -> bool | None:
        if not self.gateway.pm.hook.bmsgw_alarm_acknowledge.get_hookimpls():
            return None
        return self.gateway.pm.hook.bmsgw_alarm_acknowledge(gateway=self.gateway, alarm_id=alarm_id, user=user)
