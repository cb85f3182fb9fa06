"""From store readings to history rows: raw samples, the finest roll-up in memory, coarser roll-ups from it.

``Recorder`` is plain code driven by the readings' own timestamps (tests feed it simulated time);
``HistoryWriter`` runs it in a thread fed by a point-store subscription, so the polling path only appends
a batch to a queue.
"""
from __future__ import annotations

import fnmatch
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

from ..points import PointRef, PointSpec, Quality, Reading
from .db import HistoryDB, axis_of, encode_vector, is_disk_full, vector_index

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _SeriesState:
    sid: int
    axis: str
    scale: float
    interval: int  # raw sample interval, s
    slot: int = -1  # open raw slot (unix // interval)
    values: list = field(default_factory=list)
    bucket: int = -1  # open finest roll-up bucket
    lo: list = field(default_factory=list)
    hi: list = field(default_factory=list)
    total: list = field(default_factory=list)
    count: list = field(default_factory=list)
    readings: int = 0
    # the open raw slot's and roll-up bucket's time range, [from, to): a reading inside them is placed without
    # a division (empty ranges while none is open)
    raw_from: float = math.inf
    raw_to: float = -math.inf
    roll_from: float = math.inf
    roll_to: float = -math.inf
    # where both ranges meet: a reading in it goes to the open slot and the open bucket with no other test (empty
    # while either is closed, and always without roll-up tiers)
    both_from: float = math.inf
    both_to: float = -math.inf
    fresh_raw: bool = True  # the first row after a start may meet a row written before the restart
    fresh_roll: bool = True


@dataclass(frozen=True, slots=True)
class Commit:
    """What one flush put on disk (the writer's acknowledgement): its transaction had committed, with
    synchronous=FULL, before this record was made."""

    seq: int  # commits since the recorder started, 1, 2, ...
    values: int  # values in it (raw samples + roll-up elements)
    raw: tuple[tuple[int, int], ...]  # (unix t, sid) of every raw row
    roll: tuple[tuple[int, int], ...]  # (sid, bucket) of every finest-tier roll-up row
    ts: float


# the open bucket's minimum and maximum of a point with no reading in it yet: every reading is below and above them,
# so it is compared without a test for "none yet"; ``_emit_roll`` writes None for such a point (its count is 0)
_NO_LOW = math.inf
_NO_HIGH = -math.inf


def _grow(lst: list, index: int, fill) -> None:
    if index >= len(lst):
        lst.extend([fill] * (index + 1 - len(lst)))


def _overlap(st: _SeriesState, finest: int) -> None:
    """Set the series' range where its open raw slot and its open roll-up bucket meet (``both_from``/``both_to``)."""
    if finest and st.raw_from < st.roll_to and st.roll_from < st.raw_to:
        st.both_from, st.both_to = max(st.raw_from, st.roll_from), min(st.raw_to, st.roll_to)
    else:
        st.both_from, st.both_to = math.inf, -math.inf


class PointFilter:
    """Which families are recorded: ``include``/``exclude`` are globs over family ids, plus ``@measured`` and
    ``@derived`` for every family a device measures / the gateway computes."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str]) -> None:
        self.include = list(include)
        self.exclude = list(exclude)

    @staticmethod
    def _match(spec: PointSpec, pattern: str) -> bool:
        if pattern == "@measured":
            return spec.source == "measured"
        if pattern == "@derived":
            return spec.source == "derived"
        return fnmatch.fnmatchcase(spec.id, pattern)

    def __call__(self, spec: PointSpec) -> bool:
        return (any(self._match(spec, p) for p in self.include)
                and not any(self._match(spec, p) for p in self.exclude))


@runtime_checkable
class SpecSource(Protocol):
    """Where the recorder looks up point families: the gateway's Catalog, or a mapping of them."""

    def get(self, pid: str, /) -> PointSpec | None: ...


class Recorder:
    def __init__(self, db: HistoryDB, specs: SpecSource | Callable[[str], PointSpec | None],
                 point_filter: Callable[[PointSpec], bool], raw_interval_s: float = 60,
                 intervals: Mapping[str, float] | None = None, max_pending_rows: int | None = None) -> None:
        self.db = db
        self._spec = specs.get if isinstance(specs, SpecSource) else specs
        self.filter = point_filter
        self.raw_interval_s = max(1, int(raw_interval_s))
        self.intervals = dict(intervals or {})
        self.finest = db.tiers[0].seconds if db.tiers else 0
        self._families: dict[str, PointSpec | None] = {}
        self._states: dict[tuple[str, int | None], _SeriesState] = {}
        # series whose row the database refused (a full disk) when their first reading came: recorded under a
        # stand-in id (negative) and made at the next flush that can write, before their rows go
        self._unmade: dict[int, tuple[_SeriesState, str, str, int | None, str]] = {}
        # per point: its series and its place in the series' vector (an empty tuple: not recorded), found once
        self._targets: dict[PointRef, tuple[_SeriesState, int] | tuple[()]] = {}
        # rows waiting for the next commit, each with the number of values in it; "fresh" rows are the first
        # of a series after a start and are merged with what an earlier run wrote under the same key
        self._raw_rows: list[tuple[int, int, bytes, int]] = []
        self._raw_fresh: list[tuple[int, int, bytes, int]] = []
        self._roll_rows: list[tuple[int, int, int, bytes, int]] = []
        self._roll_fresh: list[tuple[int, int, int, bytes, int]] = []
        # held while the disk refuses writes (None: no limit, for a recorder flushed by its caller)
        self.max_pending_rows = max(1, int(max_pending_rows)) if max_pending_rows else None
        self.readings = 0  # readings taken in
        self.values_written = 0  # values committed (raw samples + roll-up elements)
        self.values_dropped = 0  # values given up because the disk refused them too long
        self.flushes = 0
        self.commits = 0
        self.last_commit: Commit | None = None
        self.last_flush: float | None = None
        self._next_expire = 0.0

    # -- input ---------------------------------------------------------------------------------------------
    def _family(self, point: str) -> PointSpec | None:
        try:
            return self._families[point]
        except KeyError:
            spec = self._spec(point)
            keep = spec if spec is not None and self.filter(spec) else None
            self._families[point] = keep
            return keep

    def set_filter(self, point_filter: Callable[[PointSpec], bool]) -> None:
        """Record what ``point_filter`` keeps from now on (a config reload); series already stored stay."""
        self.filter = point_filter
        self._families = {}
        self._targets = {}

    def _interval_for(self, point: str) -> int:
        for pattern, seconds in self.intervals.items():
            if fnmatch.fnmatchcase(point, pattern):
                return max(1, int(seconds))
        return self.raw_interval_s

    def _state(self, ref: PointRef, spec: PointSpec) -> _SeriesState:
        axis = axis_of(spec.scope, ref.channel)
        key = (ref.point, ref.string if axis == "cell" else None)
        st = self._states.get(key)
        if st is None:
            scale = spec.scale if spec.scale > 0 else 1.0
            try:
                info = self.db.series_for(ref.point, axis, key[1], scale, spec.unit)
            except sqlite3.Error as exc:  # (a full disk) its readings are kept as every other series' are
                log.warning("history: the series of %s cannot be made yet (%s): its readings wait with the rest",
                            ref.point, exc)
                stand_in = min(self._unmade, default=0) - 1  # (unlike any still waiting)
                st = _SeriesState(stand_in, axis, scale, self._interval_for(ref.point))
                self._unmade[st.sid] = (st, ref.point, axis, key[1], spec.unit)
            else:
                st = _SeriesState(info.sid, axis, info.scale, self._interval_for(ref.point))
            self._states[key] = st
        return st

    def _make_series(self) -> None:
        """Make the series the database refused before, and give their waiting rows the real ids (raises what
        the database raises: the rows wait for the next flush)."""
        made: dict[int, int] = {}
        try:
            for stand_in, (st, point, axis, string, unit) in list(self._unmade.items()):
                info = self.db.series_for(point, axis, string, st.scale, unit)
                # (the series is new, so it is stored with the scale its values were encoded with)
                st.sid = made[stand_in] = info.sid
                del self._unmade[stand_in]
        finally:  # (those made before one failed have their rows remapped too)
            if made:
                self._raw_rows = [(r[0], made.get(r[1], r[1]), *r[2:]) for r in self._raw_rows]
                self._raw_fresh = [(r[0], made.get(r[1], r[1]), *r[2:]) for r in self._raw_fresh]
                self._roll_rows = [(made.get(r[0], r[0]), *r[1:]) for r in self._roll_rows]
                self._roll_fresh = [(made.get(r[0], r[0]), *r[1:]) for r in self._roll_fresh]

    def _target(self, ref: PointRef) -> tuple[_SeriesState, int] | tuple[()]:
        """The point's series (made on its first recorded reading) and its index in the series' vector."""
        spec = self._family(ref.point)
        target: tuple[_SeriesState, int] | tuple[()]
        if spec is None:
            target = ()
        else:
            st = self._state(ref, spec)
            target = (st, vector_index(st.axis, ref.string, ref.cell, ref.channel))
        self._targets[ref] = target
        return target

    def add(self, batch: Iterable[tuple[PointRef, Reading]]) -> None:
        good = Quality.GOOD
        # ``round`` of a float, without the builtin's look-up of ``__round__`` (a third of its time); a quotient
        # is a float whatever the value's type
        round_float = float.__round__
        targets, finest = self._targets, self.finest
        taken = 0
        for ref, reading in batch:
            # the point first: two readings in three are of families not recorded (an empty target)
            target = targets.get(ref)
            if not target:
                if target is not None:
                    continue
                value = reading.value
                if reading.quality is not good or value is None or not math.isfinite(value):
                    continue  # (a series is made by a value it records)
                target = self._target(ref)
                if not target:
                    continue
            value = reading.value
            if reading.quality is not good or value is None:
                continue
            st, idx = target
            try:
                iv = round_float(value / st.scale)
            except (ValueError, OverflowError):  # NaN, an infinity: nothing to record
                continue
            ts = reading.ts
            # most readings: inside the series' open slot and open bucket, a place already in their vectors (an
            # IndexError, a point new to them, leaves the reading to the general path below, which grows them)
            if st.both_from <= ts < st.both_to:
                try:
                    st.values[idx] = iv
                    lo = st.lo
                    if iv < lo[idx]:
                        lo[idx] = iv
                    hi = st.hi
                    if iv > hi[idx]:
                        hi[idx] = iv
                    st.total[idx] += iv
                    st.count[idx] += 1
                    taken += 1
                    continue
                except IndexError:
                    pass
            if st.raw_from <= ts < st.raw_to:  # the open slot (``int(ts // interval)`` is it: integer seconds)
                values = st.values
                if idx >= len(values):
                    _grow(values, idx, None)
                values[idx] = iv
            else:
                slot = int(ts // st.interval)
                if slot != st.slot:
                    if slot < st.slot:
                        slot = -2  # late reading: keep it out of the raw tier
                    else:
                        self._emit_raw(st)
                        st.slot = slot
                        st.raw_from, st.raw_to = slot * st.interval, (slot + 1) * st.interval
                        _overlap(st, finest)
                if slot == st.slot:
                    if idx >= len(st.values):
                        _grow(st.values, idx, None)
                    st.values[idx] = iv
            if finest:
                if not st.roll_from <= ts < st.roll_to:
                    bucket = int(ts // finest)
                    if bucket != st.bucket:
                        if bucket < st.bucket:
                            continue
                        self._emit_roll(st)
                        st.bucket = bucket
                        st.roll_from, st.roll_to = bucket * finest, (bucket + 1) * finest
                        _overlap(st, finest)
                lo, hi, total, count = st.lo, st.hi, st.total, st.count
                if idx >= len(count):  # the four grow together (emptied together by _emit_roll)
                    _grow(lo, idx, _NO_LOW)
                    _grow(hi, idx, _NO_HIGH)
                    _grow(total, idx, 0)
                    _grow(count, idx, 0)
                if iv < lo[idx]:
                    lo[idx] = iv
                if iv > hi[idx]:
                    hi[idx] = iv
                total[idx] += iv
                count[idx] += 1
            taken += 1
        self.readings += taken

    def _emit_raw(self, st: _SeriesState) -> None:
        values = st.values
        end = len(values)
        while end and values[end - 1] is None:  # (the vector ends at its last value, as if grown to it)
            end -= 1
        if st.slot >= 0 and end:
            row = (st.slot * st.interval, st.sid, encode_vector(values[:end] if end < len(values) else values),
                   sum(1 for v in values if v is not None))
            (self._raw_fresh if st.fresh_raw else self._raw_rows).append(row)
            st.fresh_raw = False
        # the next slot holds as many values: made at once, not grown by one as a column is read in order
        st.values = [None] * len(values)
        st.slot = -1
        st.raw_from, st.raw_to = math.inf, -math.inf
        st.both_from, st.both_to = math.inf, -math.inf

    def _emit_roll(self, st: _SeriesState) -> None:
        if st.bucket >= 0 and any(st.count):
            count = st.count
            means = [round(t / n) if n else None for t, n in zip(st.total, count, strict=True)]
            lows = [v if n else None for v, n in zip(st.lo, count, strict=True)]
            highs = [v if n else None for v, n in zip(st.hi, count, strict=True)]
            row = (st.sid, st.bucket, max(count), encode_vector(lows + means + highs), 3 * sum(1 for n in count if n))
            (self._roll_fresh if st.fresh_roll else self._roll_rows).append(row)
            st.fresh_roll = False
        st.lo, st.hi, st.total, st.count = [], [], [], []
        st.bucket = -1
        st.roll_from, st.roll_to = math.inf, -math.inf
        st.both_from, st.both_to = math.inf, -math.inf

    # -- output --------------------------------------------------------------------------------------------
    def flush(self, now: float | None = None, final: bool = False) -> int:
        """Close due slots and buckets (all of them when ``final``), write them in one transaction, roll the
        coarser tiers, apply retention once an hour.  Returns the values written.

        When the write fails (a full disk) the rows stay here and go with the next flush; beyond
        ``max_pending_rows`` the oldest are dropped (counted in ``values_dropped``).  The error propagates."""
        now = time.time() if now is None else now
        for st in self._states.values():
            if st.slot >= 0 and (final or (st.slot + 1) * st.interval <= now):
                self._emit_raw(st)
            if st.bucket >= 0 and (final or (st.bucket + 1) * self.finest <= now):
                self._emit_roll(st)
        self.flushes += 1
        self.last_flush = now
        self._bound_pending()
        if self._unmade:
            self._make_series()
        written = 0
        raw, raw_fresh, roll, roll_fresh = self._raw_rows, self._raw_fresh, self._roll_rows, self._roll_fresh
        if raw or raw_fresh or roll or roll_fresh:
            fin = self.finest
            self.db.write([r[:3] for r in raw], {fin: [r[:4] for r in roll]} if roll else None,
                          merge_raw=[r[:3] for r in raw_fresh],
                          merge_roll={fin: [r[:4] for r in roll_fresh]} if roll_fresh else None)
            written = sum(r[3] for r in raw) + sum(r[3] for r in raw_fresh) + sum(r[4] for r in roll) \
                + sum(r[4] for r in roll_fresh)
            self._raw_rows, self._raw_fresh, self._roll_rows, self._roll_fresh = [], [], [], []
            self.values_written += written
            self.commits += 1
            self.last_commit = Commit(self.commits, written, tuple((r[0], r[1]) for r in raw + raw_fresh),
                                      tuple((r[0], r[1]) for r in roll + roll_fresh), now)
        self._roll_coarser(now)
        if now >= self._next_expire:
            deleted = self.db.expire(now)
            if deleted:
                log.info("history: %d rows past their retention deleted", deleted)
            self._next_expire = now + 3600
        return written

    @property
    def pending_rows(self) -> int:
        return len(self._raw_rows) + len(self._raw_fresh) + len(self._roll_rows) + len(self._roll_fresh)

    def _bound_pending(self) -> None:
        """Keep at most ``max_pending_rows`` rows waiting: drop the oldest raw samples first (the roll-ups keep
        their min/mean/max), then the oldest roll-ups."""
        if self.max_pending_rows is None:
            return
        excess = self.pending_rows - self.max_pending_rows
        if excess <= 0:
            return
        dropped = 0
        # a series' "fresh" row (its first after the start) is older than its other rows: it goes first
        for rows in (self._raw_fresh, self._raw_rows, self._roll_fresh, self._roll_rows):
            n = min(excess, len(rows))
            if n:
                dropped += _drop_first(rows, n)
                excess -= n
        self.values_dropped += dropped
        log.warning("history: %d values could not be written in time and were dropped (%d so far)", dropped,
                    self.values_dropped)

    def _roll_coarser(self, now: float) -> None:
        db = self.db
        for finer, tier in pairwise(db.tiers):
            sec = tier.seconds
            current = int(now // sec)
            key = f"rolled_{sec}"
            rolled = db.meta(key)
            if rolled is None:
                first = db.conn().execute(f"SELECT min(b) FROM {finer.table}").fetchone()[0]
                rolled_b = (first * finer.seconds // sec - 1) if first is not None else current - 1
            else:
                rolled_b = int(rolled)
            if current - 1 > rolled_b:
                n = db.roll_up(finer.seconds, sec, (rolled_b + 1) * sec, current * sec)
                log.debug("history: %d %s buckets rolled up", n, tier.name)
                rolled_b = current - 1
            if rolled is None or int(rolled) != rolled_b:
                db.set_meta(key, str(rolled_b))


def _drop_first(rows: list[tuple[Any, ...]], n: int) -> int:
    """Remove the first ``n`` pending rows; how many values they held (each row's last element)."""
    values = sum(r[-1] for r in rows[:n])
    del rows[:n]
    return values


FAULT_OK, FAULT_FULL, FAULT_ERROR = 0, 1, 2  # gateway.history_fault: writing / disk full / other write error


class HistoryWriter(threading.Thread):
    """The recorder in its own thread.  ``submit`` is the point-store listener: it only appends the batch to
    a deque (no lock, no wake-up: the store publishes a batch per device, a few hundred a cycle); the thread
    takes what gathered every ``TAKE_S``, a poll cycle's batches in one go.

    ``on_flush(recorder)`` is called after every flush that committed rows (``recorder.last_commit`` says what
    is now on disk); ``on_fault(fault, error)`` when writing starts failing (``FAULT_FULL``: the disk or the
    size cap is full, ``FAULT_ERROR``: another error) or works again (``FAULT_OK``).  While writing fails the
    recorder keeps the rows and every flush tries again.

    ``recorder`` may be None when the database could not be opened (a full card at start): ``opener`` is then
    called every ``flush_s`` until it returns the recorder; what arrives meanwhile is counted and dropped."""

    TAKE_S = 1.0  # how often the thread takes the batches that gathered (a wake-up costs more than the wait)

    def __init__(self, recorder: Recorder | None, flush_s: float = 60.0, queue_limit: int = 20000,
                 on_flush: Callable[[Recorder], None] | None = None,
                 on_fault: Callable[[int, BaseException | None], None] | None = None,
                 opener: Callable[[], Recorder] | None = None, open_error: Exception | None = None) -> None:
        super().__init__(name="history-writer", daemon=True)
        if recorder is None and opener is None:
            raise ValueError("a recorder or an opener")
        self.recorder = recorder
        self.opener = opener
        self._open_error = open_error
        self.flush_s = flush_s
        self.queue: deque[list[tuple[PointRef, Reading]]] = deque()
        self.queue_limit = queue_limit
        self.on_flush = on_flush
        self.on_fault = on_fault
        self.dropped = 0
        self.errors = 0
        self.fault = FAULT_OK
        self.fault_since: float | None = None
        self.last_error: str | None = None
        self._stop_event = threading.Event()
        self._flush_now = threading.Event()
        self._wake = threading.Event()  # set by stop and flush requests: the thread does not wait out TAKE_S
        self._flushed = threading.Condition()
        self._flush_gen = 0

    def submit(self, batch: list[tuple[PointRef, Reading]]) -> None:
        if len(self.queue) < self.queue_limit:
            self.queue.append(batch)  # deque.append is atomic: the writer thread pops from the other end
            return
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("history: writer is behind; %d batches dropped so far", self.dropped)

    def _take_queued(self, rec: Recorder, block: bool) -> None:
        if block and not self.queue:
            self._wake.wait(self.TAKE_S)
            self._wake.clear()
        take = self.queue.popleft
        try:
            while True:
                rec.add(take())
        except IndexError:
            pass
        except Exception as exc:  # (a fault of the recorder's own: the rest of that batch is lost, and said)
            self._failed(exc, "a batch could not be recorded")

    def _open(self, opener: Callable[[], Recorder]) -> None:
        """Open the database and its recorder; a failure is reported and retried at the next flush."""
        try:
            self.recorder = opener()
        except Exception as exc:
            self._failed(exc, "the history database cannot be opened")
            return
        log.warning("history: the database is open now; recording")
        self._set_fault(FAULT_OK, None)

    def _discard_queued(self) -> None:
        take = self.queue.popleft
        try:
            while True:
                take()
                self.dropped += 1
        except IndexError:
            pass

    def run(self) -> None:
        if self.recorder is None and self._open_error is not None:
            self._failed(self._open_error, "the history database cannot be opened")
        next_flush = time.monotonic() + self.flush_s
        while not self._stop_event.is_set():
            rec = self.recorder
            if rec is None:
                self._discard_queued()
                if time.monotonic() >= next_flush or self._flush_now.is_set():
                    self._flush_now.clear()
                    if self.opener is not None:  # (the constructor wants one when there is no recorder)
                        self._open(self.opener)
                    next_flush = time.monotonic() + self.flush_s
                    self._notify_flushed()
                else:
                    self._stop_event.wait(min(0.2, max(0.0, next_flush - time.monotonic())))
                continue
            self._take_queued(rec, block=True)
            if time.monotonic() >= next_flush or self._flush_now.is_set():
                self._flush_now.clear()
                self._do_flush(rec, final=False)
                next_flush = time.monotonic() + self.flush_s
        rec = self.recorder
        if rec is None:
            self._notify_flushed()
            return
        self._take_queued(rec, block=False)
        self._do_flush(rec, final=True)
        rec.db.close()  # this thread's connection

    def _do_flush(self, rec: Recorder, final: bool) -> None:
        commits = rec.commits
        error: Exception | None = None
        try:
            rec.flush(time.time(), final=final)
        except Exception as exc:
            error = exc
        if rec.commits != commits and self.on_flush is not None:  # acknowledge what did reach the disk
            try:
                self.on_flush(rec)
            except Exception:
                log.exception("history: flush callback failed")
        if error is not None:
            self._failed(error, "flush failed")
        elif self.fault != FAULT_OK and rec.commits != commits:  # only a commit proves the card takes writes
            log.warning("history: writing again after %.0f s; %d values were dropped meanwhile",
                        time.time() - (self.fault_since or time.time()), rec.values_dropped)
            self._set_fault(FAULT_OK, None)
        self._notify_flushed()

    def _notify_flushed(self) -> None:
        with self._flushed:
            self._flush_gen += 1
            self._flushed.notify_all()

    def _failed(self, exc: Exception, what: str) -> None:
        self.errors += 1
        fault = FAULT_FULL if is_disk_full(exc) else FAULT_ERROR
        self.last_error = f"{type(exc).__name__}: {exc}"
        if fault == self.fault:
            log.debug("history: %s (still): %s", what, exc)
            return
        rec = self.recorder
        if fault == FAULT_FULL and rec is None:
            log.error("history: %s: no room on the card (%s); polling goes on, opening is retried every %.0f s",
                      what, exc, self.flush_s)
        elif fault == FAULT_FULL and rec is not None:
            log.error("history: %s: %s is full (%s); rows are kept in memory (at most %d) and written when "
                      "there is space again", what, rec.db.path, exc, rec.max_pending_rows)
        else:
            log.error("history: %s", what, exc_info=exc)
        self.fault_since = time.time()
        self._set_fault(fault, exc)

    def _set_fault(self, fault: int, exc: BaseException | None) -> None:
        self.fault = fault
        if fault == FAULT_OK:
            self.fault_since = None
        if self.on_fault is not None:
            try:
                self.on_fault(fault, exc)
            except Exception:
                log.exception("history: fault callback failed")

    def request_flush(self) -> None:
        """Flush soon, without waiting for it."""
        self._flush_now.set()
        self._wake.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Ask the thread to write what it has now (closing only due slots); wait until it did."""
        with self._flushed:
            gen = self._flush_gen
            self._flush_now.set()
            self._wake.set()
            return self._flushed.wait_for(lambda: self._flush_gen > gen, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        self._wake.set()
        self.join(timeout)
