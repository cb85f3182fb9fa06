"""The history database: SQLite in WAL mode, one file in the state folder, compact vector rows.

Layout (why it is small and kind to an SD card):

* A **series** is one point family for one string (cell families: a vector over the string's cells) or
  for the whole bank (string families: a vector over strings; channel families: over channels; scalars:
  one value).  So one row holds 120 cell voltages, not one, and a whole-string query reads one row per
  time step.
* Values are **scaled integers** (the family's register scale: mV, 0.1 C, micro-ohm ...) packed as a
  little-endian int16 array (int32/int64 only when a row needs it), behind a one-byte type code.  A missing
  value is the type's minimum (the SunSpec "not available" convention).
* ``raw`` rows are keyed ``(t, sid)``: time first, so every write appends at the end of the B-tree (a few
  pages per flush, not one page per series) and retention is one range delete.  ``t`` is seconds since
  2020-01-01, four bytes until 2088.
* Roll-up tiers (``roll_900``, ``roll_3600``, ``roll_86400`` ...) are keyed ``(sid, b)`` with ``b`` the bucket
  number (unix time // bucket seconds); a row holds the min, mean and max arrays and the number of readings.
  They are written once per bucket, so their write cost is small, and a trend query is one range scan.
* All tables are ``WITHOUT ROWID``: the key is the row, no second B-tree.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import math
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z: raw timestamps are stored relative to it
_TYPES = ("h", "i", "q")
_NA = {"h": -(1 << 15), "i": -(1 << 31), "q": -(1 << 63)}
_LIMIT = {"h": (1 << 15) - 1, "i": (1 << 31) - 1, "q": (1 << 63) - 1}
_SIZE = {tc: array(tc).itemsize for tc in _TYPES}
assert _SIZE == {"h": 2, "i": 4, "q": 8}, f"unexpected C integer sizes {_SIZE}"
_BIG_ENDIAN = sys.byteorder == "big"
SCHEMA_VERSION = 1


class HistoryError(Exception):
    pass


# -- vector encoding ----------------------------------------------------------------------------------------
def encode_vector(values: Sequence[int | None]) -> bytes:
    """Scaled integers (None = missing) as a type code byte and a little-endian array."""
    present = [v for v in values if v is not None]
    tc = "h"
    if present:
        lo, hi = min(present), max(present)
        for tc in _TYPES:
            if -_LIMIT[tc] <= lo and hi <= _LIMIT[tc]:
                break
        else:
            raise HistoryError(f"value out of range for history storage: {lo}..{hi}")
    na = _NA[tc]
    arr = array(tc, [na if v is None else v for v in values])
    if _BIG_ENDIAN:
        arr.byteswap()
    return tc.encode() + arr.tobytes()


def decode_vector(blob: bytes) -> list[int | None]:
    tc = chr(blob[0])
    arr = array(tc)
    arr.frombytes(blob[1:])
    if _BIG_ENDIAN:
        arr.byteswap()
    na = _NA[tc]
    return [None if v == na else v for v in arr]


def unscaler(scale: float):
    """value = stored integer x scale, without binary noise: 3 x 0.1 -> 0.3 (divide by 10 instead)."""
    if 0 < scale < 1:
        inv = 1.0 / scale
        if abs(inv - round(inv)) < 1e-6 * inv:
            return float(round(inv)).__rtruediv__  # v -> v / div (a bound method: fast in map())
    return float(scale).__mul__


def tier_name(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


# -- records ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One stored series.  ``string`` is set for cell families (the vector runs over that string's cells);
    for other families the vector runs over strings (string scope), channels, or is one value."""

    sid: int
    point: str
    axis: str  # what the vector runs over: cell | string | channel | none (one value)
    string: int | None
    scale: float
    unit: str


@dataclass(frozen=True, slots=True)
class Tier:
    seconds: int  # 0 = raw samples
    retention_days: float

    @property
    def name(self) -> str:
        return "raw" if self.seconds == 0 else tier_name(self.seconds)

    @property
    def table(self) -> str:
        return "raw" if self.seconds == 0 else f"roll_{self.seconds}"


@dataclass(slots=True)
class Series:
    """A time series answered by a query.  ``t`` are bucket starts (or sample times) in unix seconds; for raw
    samples ``min``/``max`` equal ``mean``.  Missing buckets are absent, not None."""

    point: str
    string: int | None
    cell: int | None
    channel: int | None
    unit: str
    tier: str
    resolution_s: int
    t: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)

    def rows(self) -> Iterator[tuple[float, float, float, float]]:
        return zip(self.t, self.mean, self.min, self.max, strict=True)

    def last(self) -> float | None:
        return self.mean[-1] if self.mean else None


AXES = ("cell", "string", "channel", "none")


def axis_of(scope: str, channel: int | None) -> str:
    """The axis a point's family is stored along: cell families over cells, string families over strings,
    channel families over channels, the rest as one value."""
    if scope in ("cell", "string"):
        return scope
    return "channel" if channel is not None else "none"


def vector_index(axis: str, string: int | None, cell: int | None, channel: int | None) -> int:
    if axis == "cell":
        return (cell or 1) - 1
    if axis == "string":
        return (string or 1) - 1
    if axis == "channel":
        return (channel or 1) - 1
    return 0


# -- the database -------------------------------------------------------------------------------------------
class HistoryDB:
    """Schema, writes and queries.  One instance per thread that writes; readers may share one instance
    (each thread gets its own read connection)."""

    def __init__(self, path: str | Path, raw_retention_days: float = 30.0,
                 tiers: Iterable[tuple[int, float]] = ((900, 366), (3600, 1827), (86400, 7305)),
                 raw_interval_s: float = 60.0, max_points: int = 1000, readonly: bool = False) -> None:
        self.path = Path(path)
        self.raw = Tier(0, raw_retention_days)
        self.tiers: list[Tier] = [Tier(int(s), float(d)) for s, d in tiers]
        self.raw_interval_s = raw_interval_s
        self.max_points = max_points
        self.readonly = readonly
        self.max_bytes: int | None = None
        self._local = threading.local()
        self._series_lock = threading.Lock()
        self._series: dict[tuple[str, int | None], SeriesInfo] = {}
        self._by_sid: dict[int, SeriesInfo] = {}
        if readonly:
            if not self.path.exists():
                raise HistoryError(f"no history database at {self.path}")
            # a tier added to the config since the writer last ran has no table yet: read what exists
            tables = {r[0] for r in self.conn().execute("SELECT name FROM sqlite_schema WHERE type='table'")}
            self.tiers = [t for t in self.tiers if t.table in tables]
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create()
        self._load_series()

    # connections -----------------------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.readonly:
                c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            else:
                c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                c.execute("PRAGMA journal_mode=WAL")
                # FULL: every COMMIT fsyncs the WAL, so a flush the writer acknowledged survives a power cut
                # (NORMAL survives a crashed process but may lose the last commits to a power cut).  The
                # writer commits once per history.flush_s (60 s), so this is one extra fsync a minute.
                c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None
            self._local.cap = None

    def _create(self) -> None:
        c = self.conn()
        c.executescript("""
            CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS series(
                sid INTEGER PRIMARY KEY, point TEXT NOT NULL, axis TEXT NOT NULL, string INTEGER,
                scale REAL NOT NULL, unit TEXT NOT NULL DEFAULT '', UNIQUE(point, string));
            CREATE TABLE IF NOT EXISTS raw(t INTEGER NOT NULL, sid INTEGER NOT NULL, v BLOB NOT NULL,
                PRIMARY KEY(t, sid)) WITHOUT ROWID;
        """)
        for tier in self.tiers:
            c.execute(f"CREATE TABLE IF NOT EXISTS {tier.table}(sid INTEGER NOT NULL, b INTEGER NOT NULL, "
                      f"n INTEGER NOT NULL, v BLOB NOT NULL, PRIMARY KEY(sid, b)) WITHOUT ROWID")
        c.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('epoch', ?)", (str(SCHEMA_VERSION), str(EPOCH)))

    def _load_series(self) -> None:
        try:
            rows = self.conn().execute("SELECT sid, point, axis, string, scale, unit FROM series").fetchall()
        except sqlite3.OperationalError as exc:
            raise HistoryError(f"{self.path}: not a history database ({exc})") from None
        with self._series_lock:
            for row in rows:
                info = SeriesInfo(*row)
                self._series[(info.point, info.string)] = info
                self._by_sid[info.sid] = info

    def series_for(self, point: str, axis: str, string: int | None, scale: float, unit: str) -> SeriesInfo:
        """The series a family (and, for cell families, a string) is stored in; created on first use."""
        key = (point, string if axis == "cell" else None)
        info = self._series.get(key)
        if info is not None:
            return info
        with self._series_lock:
            c = self.conn()
            c.execute("INSERT OR IGNORE INTO series(point, axis, string, scale, unit) VALUES (?,?,?,?,?)",
                      (point, axis, key[1], scale, unit))
            row = c.execute("SELECT sid, point, axis, string, scale, unit FROM series WHERE point=? AND string IS ?",
                            key).fetchone()
            info = SeriesInfo(*row)
            self._series[key] = info
            self._by_sid[info.sid] = info
            return info

    def find_series(self, point: str, string: int | None = None) -> SeriesInfo | None:
        info = self._series.get((point, string)) or self._series.get((point, None))
        if info is None:
            self._load_series()
            info = self._series.get((point, string)) or self._series.get((point, None))
        return info

    def all_series(self) -> list[SeriesInfo]:
        self._load_series()
        return sorted(self._by_sid.values(), key=lambda s: (s.point, s.string or 0))

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn().execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # writes ----------------------------------------------------------------------------------------------
    def write(self, raw_rows: Sequence[tuple[int, int, bytes]] = (),
              roll_rows: Mapping[int, Sequence[tuple[int, int, int, bytes]]] | None = None,
              merge: bool = False, *, merge_raw: Sequence[tuple[int, int, bytes]] = (),
              merge_roll: Mapping[int, Sequence[tuple[int, int, int, bytes]]] | None = None) -> None:
        """Insert raw rows ``(unix t, sid, blob)`` and roll-up rows ``{seconds: [(sid, b, n, blob)]}`` in one
        transaction: when this returns, they are on disk (WAL, synchronous=FULL); when it raises, none is.
        ``merge``: rows may meet an existing row of the same key (a restart inside a bucket); they are merged
        instead of replacing it.  ``merge_raw``/``merge_roll``: rows merged that way in the same transaction."""
        if merge:
            merge_raw, raw_rows = [*raw_rows, *merge_raw], ()
            combined = {k: list(v) for k, v in (roll_rows or {}).items()}
            for k, v in (merge_roll or {}).items():
                combined.setdefault(k, []).extend(v)
            merge_roll, roll_rows = combined, None
        c = self.conn()
        self._apply_cap(c)
        c.execute("BEGIN IMMEDIATE")
        try:
            if raw_rows:
                c.executemany("INSERT OR REPLACE INTO raw(t, sid, v) VALUES (?,?,?)",
                              [(t - EPOCH, sid, blob) for t, sid, blob in raw_rows])
            for t, sid, blob in merge_raw:
                self._merge_raw(c, t - EPOCH, sid, blob)
            for seconds, rows in (roll_rows or {}).items():
                c.executemany(f"INSERT OR REPLACE INTO roll_{seconds}(sid, b, n, v) VALUES (?,?,?,?)", rows)
            for seconds, rows in (merge_roll or {}).items():
                for row in rows:
                    self._merge_roll(c, f"roll_{seconds}", *row)
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the database file (``history.max_size_mb``); None or 0: no cap.  Writes beyond it fail like a
        full disk.  Applied by the writing thread at its next write."""
        self.max_bytes = int(max_bytes) if max_bytes else None

    def _apply_cap(self, c: sqlite3.Connection) -> None:
        local = self._local
        if getattr(local, "cap", None) == self.max_bytes:
            return
        if getattr(local, "default_pages", None) is None:
            local.default_pages = c.execute("PRAGMA max_page_count").fetchone()[0]
        if self.max_bytes:
            page = c.execute("PRAGMA page_size").fetchone()[0]
            c.execute(f"PRAGMA max_page_count={max(1, self.max_bytes // page)}")
        else:
            c.execute(f"PRAGMA max_page_count={int(local.default_pages)}")
        local.cap = self.max_bytes

    @staticmethod
    def _merge_raw(c: sqlite3.Connection, t: int, sid: int, blob: bytes) -> None:
        old = c.execute("SELECT v FROM raw WHERE t=? AND sid=?", (t, sid)).fetchone()
        if old is not None:
            new, prev = decode_vector(blob), decode_vector(old[0])
            n = max(len(new), len(prev))
            new += [None] * (n - len(new))
            prev += [None] * (n - len(prev))
            blob = encode_vector([a if a is not None else b for a, b in zip(new, prev, strict=True)])
        c.execute("INSERT OR REPLACE INTO raw(t, sid, v) VALUES (?,?,?)", (t, sid, blob))

    @staticmethod
    def _merge_roll(c: sqlite3.Connection, table: str, sid: int, b: int, n: int, blob: bytes) -> None:
        old = c.execute(f"SELECT n, v FROM {table} WHERE sid=? AND b=?", (sid, b)).fetchone()
        if old is not None:
            blob, n = merge_rollups([(n, blob), (old[0], old[1])])
        c.execute(f"INSERT OR REPLACE INTO {table}(sid, b, n, v) VALUES (?,?,?,?)", (sid, b, n, blob))

    def roll_up(self, finer: int, coarser: int, start: float, end: float) -> int:
        """Aggregate the ``finer`` tier's rows in [start, end) into ``coarser`` buckets; returns rows written."""
        c = self.conn()
        b0, b1 = int(start // finer), int(math.ceil(end / finer))
        out = []
        for sid in list(self._by_sid):
            groups: dict[int, list[tuple[int, bytes]]] = {}
            for b, n, blob in c.execute(f"SELECT b, n, v FROM roll_{finer} WHERE sid=? AND b>=? AND b<?",
                                        (sid, b0, b1)):
                groups.setdefault(b * finer // coarser, []).append((n, blob))
            for cb, parts in groups.items():
                blob, n = merge_rollups(parts)
                out.append((sid, cb, n, blob))
        if out:
            self.write(roll_rows={coarser: out}, merge=True)
        return len(out)

    def expire(self, now: float) -> int:
        """Delete what is older than each tier's retention; returns rows deleted."""
        c = self.conn()
        deleted = 0
        c.execute("BEGIN IMMEDIATE")
        try:
            if self.raw.retention_days > 0:
                cur = c.execute("DELETE FROM raw WHERE t < ?", (int(now - self.raw.retention_days * 86400) - EPOCH,))
                deleted += cur.rowcount
            for tier in self.tiers:
                if tier.retention_days <= 0:
                    continue
                limit = int((now - tier.retention_days * 86400) // tier.seconds)
                for sid in list(self._by_sid):
                    deleted += c.execute(f"DELETE FROM {tier.table} WHERE sid=? AND b<?", (sid, limit)).rowcount
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise
        return deleted

    # queries ---------------------------------------------------------------------------------------------
    def choose_tier(self, start: float, end: float, resolution: str | int | None = "auto",
                    max_points: int | None = None, now: float | None = None) -> Tier:
        """The tier a query over [start, end] reads.

        ``resolution``: "auto" (the finest tier that gives at most ``max_points`` points over the range and
        still holds data from ``start``; the coarsest when none does), "raw", a tier name ("15m", "1h",
        "1d") or a bucket size in seconds (the finest tier at least that coarse).
        """
        tiers = [self.raw] + self.tiers
        if resolution in (None, "auto"):
            now = time.time() if now is None else now
            limit = max_points or self.max_points
            span = max(end - start, 1.0)
            for tier in tiers:
                step = tier.seconds or self.raw_interval_s
                covers = tier.retention_days <= 0 or start >= now - tier.retention_days * 86400 - step
                if covers and span / step <= limit:
                    return tier
            holding = [t for t in tiers if t.retention_days <= 0 or start >= now - t.retention_days * 86400]
            return holding[0] if holding else tiers[-1]
        if isinstance(resolution, str) and not resolution.isdigit():
            for tier in tiers:
                if tier.name == resolution:
                    return tier
            raise HistoryError(f"unknown resolution {resolution!r}; known: auto, "
                               + ", ".join(t.name for t in tiers))
        seconds = int(resolution)
        if seconds < 0:
            raise HistoryError("resolution must be positive")
        for tier in tiers:
            if (tier.seconds or self.raw_interval_s) >= seconds:
                return tier
        return tiers[-1]

    def query(self, point: str, string: int | None = None, cell: int | None = None, channel: int | None = None,
              *, start: float, end: float, resolution: str | int | None = "auto", max_points: int | None = None,
              now: float | None = None) -> Series:
        """One point over [start, end]."""
        _check_range(start, end)
        tier = self.choose_tier(start, end, resolution, max_points, now)
        info = self.find_series(point, string if cell is not None else None) or self.find_series(point, None)
        out = Series(point, string, cell, channel, info.unit if info else "", tier.name,
                     tier.seconds or int(self.raw_interval_s))
        if info is None:
            return out
        index = vector_index(info.axis, string, cell, channel)
        self._fill({index: out}, info, tier, start, end)
        return out

    def query_string(self, point: str, string: int, *, start: float, end: float,
                     resolution: str | int | None = "auto", max_points: int | None = None,
                     cells: Iterable[int] | None = None, now: float | None = None) -> dict[int, Series]:
        """Every cell of one string for a cell family over [start, end]: ``{cell: Series}`` (cells that
        have any data in the range, or all of ``cells`` when given)."""
        _check_range(start, end)
        tier = self.choose_tier(start, end, resolution, max_points, now)
        info = self.find_series(point, string)
        if info is None or info.axis != "cell":
            if info is None:
                return {}
            raise HistoryError(f"{point} is not a cell family; query_string is for cell families")
        width = self._vector_width(info, tier, start, end)
        wanted = list(cells) if cells is not None else list(range(1, width + 1))
        outs = {c: Series(point, string, c, None, info.unit, tier.name, tier.seconds or int(self.raw_interval_s))
                for c in wanted}
        self._fill({c - 1: s for c, s in outs.items()}, info, tier, start, end)
        if cells is None:
            outs = {c: s for c, s in outs.items() if s.t}
        return outs

    def _vector_width(self, info: SeriesInfo, tier: Tier, start: float, end: float) -> int:
        c = self.conn()
        if tier.seconds == 0:
            row = c.execute("SELECT max(length(v)) , v FROM raw WHERE t>=? AND t<=? AND sid=?",
                            (int(start) - EPOCH, int(end) - EPOCH, info.sid)).fetchone()
            if not row or row[0] is None:
                return 0
            return (row[0] - 1) // _SIZE[chr(row[1][0])]
        row = c.execute(f"SELECT max(length(v)), v FROM {tier.table} WHERE sid=? AND b>=? AND b<=?",
                        (info.sid, int(start // tier.seconds), int(end // tier.seconds))).fetchone()
        if not row or row[0] is None:
            return 0
        return (row[0] - 1) // _SIZE[chr(row[1][0])] // 3

    def _fill(self, outs: dict[int, Series], info: SeriesInfo, tier: Tier, start: float, end: float) -> None:
        if tier.seconds == 0:
            rows = [(float(t + EPOCH), blob) for t, blob in self.conn().execute(
                "SELECT t, v FROM raw WHERE t>=? AND t<=? AND sid=?",
                (math.floor(start) - EPOCH, math.floor(end) - EPOCH, info.sid))]
            _decode_into(outs, rows, 1, unscaler(info.scale))
        else:
            sec = tier.seconds
            rows = [(float(b * sec), blob) for b, _n, blob in self._roll_rows(info.sid, tier, start, end)]
            _decode_into(outs, rows, 3, unscaler(info.scale))

    def _roll_rows(self, sid: int, tier: Tier, start: float, end: float) -> list[tuple[int, int, bytes]]:
        """A roll-up tier's rows ``(b, n, blob)`` in [start, end]; buckets not rolled up yet (the present hour,
        day ...) are aggregated on the fly from the finer tier, so a trend reaches the present."""
        sec = tier.seconds
        b0, b1 = int(start // sec), int(end // sec)
        rows = self.conn().execute(f"SELECT b, n, v FROM {tier.table} WHERE sid=? AND b>=? AND b<=? ORDER BY b",
                                   (sid, b0, b1)).fetchall()
        i = self.tiers.index(tier)
        if i == 0:
            return rows
        rolled = self.meta(f"rolled_{sec}")
        # never rolled by a recorder (an imported or copied file): what is stored is what there is
        stored_end = rows[-1][0] + 1 if rows else b0
        tail = int(rolled) + 1 if rolled is not None else stored_end
        if tail > b1:
            return rows
        finer = self.tiers[i - 1]
        groups: dict[int, list[tuple[int, bytes]]] = {}
        for fb, n, blob in self._roll_rows(sid, finer, max(start, tail * sec), end):
            groups.setdefault(fb * finer.seconds // sec, []).append((n, blob))
        have = {r[0] for r in rows}
        for cb in sorted(groups):
            if cb not in have and b0 <= cb <= b1:
                blob, n = merge_rollups(groups[cb])
                rows.append((cb, n, blob))
        rows.sort(key=lambda r: r[0])
        return rows

    def latest(self, point: str, string: int | None = None, cell: int | None = None,
               channel: int | None = None, before: float | None = None,
               window_s: float = 86400.0) -> tuple[float, float] | None:
        """The last raw sample (time, value) at or before ``before`` within ``window_s``."""
        before = time.time() if before is None else before
        s = self.query(point, string, cell, channel, start=before - window_s, end=before, resolution="raw")
        if not s.t:
            return None
        return s.t[-1], s.mean[-1]

    def iter_rows(self, start: float, end: float, resolution: str | int | None = "auto",
                  points: Sequence[str] | None = None, strings: Sequence[int] | None = None,
                  max_points: int | None = None, now: float | None = None
                  ) -> Iterator[tuple[float, str, int | None, int | None, int | None, float, float, float]]:
        """Every stored value in [start, end] as ``(t, point, string, cell, channel, mean, min, max)``, series by
        series (for CSV export).  ``points`` are glob patterns."""
        _check_range(start, end)
        tier = self.choose_tier(start, end, resolution, max_points, now)
        c = self.conn()
        for info in self.all_series():
            if points and not any(fnmatch.fnmatchcase(info.point, p) for p in points):
                continue
            if strings and info.axis == "cell" and info.string not in strings:
                continue
            un = unscaler(info.scale)
            rows: Iterable[tuple[float, bytes]]
            if tier.seconds == 0:
                rows = c.execute("SELECT t + ?, v FROM raw WHERE t>=? AND t<=? AND sid=?",
                                 (EPOCH, math.floor(start) - EPOCH, math.floor(end) - EPOCH, info.sid))
            else:
                rows = [(b * tier.seconds, blob) for b, _n, blob in self._roll_rows(info.sid, tier, start, end)]
            for ts, blob in rows:
                vec = decode_vector(blob)
                n = len(vec) if tier.seconds == 0 else len(vec) // 3
                for i in range(n):
                    if tier.seconds == 0:
                        lo = mean = hi = vec[i]
                    else:
                        lo, mean, hi = vec[i], vec[n + i], vec[2 * n + i]
                    if mean is None:
                        continue
                    string, cell, channel = _keys(info, i)
                    if strings and info.axis == "string" and string not in strings:
                        continue
                    yield float(ts), info.point, string, cell, channel, un(mean), un(lo), un(hi)

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def table_bytes(self) -> dict[str, int]:
        """Bytes used per table (SQLite's dbstat), for the storage figures."""
        out: dict[str, int] = {}
        try:
            for name, size in self.conn().execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                out[name] = size
        except sqlite3.OperationalError:
            pass
        return out


def _rollback(c: sqlite3.Connection) -> None:
    """Undo an open transaction without hiding the error that ended it: after SQLITE_FULL or an I/O error
    SQLite may already have rolled back, and a second ROLLBACK would raise "no transaction is active"."""
    if c.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            c.execute("ROLLBACK")


# SQLITE_FULL: the card is full or the database reached its size cap; SQLITE_IOERR_SHMSIZE: the WAL index
# (the -shm file) cannot grow, which is how a WAL database on a full card fails to open
_FULL_CODES = {sqlite3.SQLITE_FULL, getattr(sqlite3, "SQLITE_IOERR_SHMSIZE", 4874)}


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` says there is no room left for the database."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) in _FULL_CODES
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _decode_into(outs: dict[int, Series], rows: list[tuple[float, bytes]], parts: int, un) -> None:
    """Append element ``index`` of each row to ``outs[index]``.  Consecutive rows of the same layout are joined
    into one array and each element's series is a strided slice of it (C speed, not a loop per value).
    ``parts``: 1 for raw rows (one vector), 3 for roll-up rows (min, mean, max vectors)."""
    k = 0
    while k < len(rows):
        head = rows[k][1]
        j = k
        while j < len(rows) and len(rows[j][1]) == len(head) and rows[j][1][0] == head[0]:
            j += 1
        tc = chr(head[0])
        arr = array(tc)
        arr.frombytes(b"".join(blob[1:] for _, blob in rows[k:j]))
        if _BIG_ENDIAN:
            arr.byteswap()
        width = (len(head) - 1) // _SIZE[tc]
        n = width // parts
        times = [t for t, _ in rows[k:j]]
        na = _NA[tc]
        mid = n if parts == 3 else 0
        for index, s in outs.items():
            if index >= n:
                continue
            means: Sequence[int] = arr[mid + index::width]
            lows: Sequence[int] = arr[index::width] if parts == 3 else means
            highs: Sequence[int] = arr[2 * n + index::width] if parts == 3 else means
            if na in means:
                keep = [i for i, m in enumerate(means) if m != na]
                s.t.extend(times[i] for i in keep)
                means = [means[i] for i in keep]
                lows = [lows[i] for i in keep]
                highs = [highs[i] for i in keep]
            else:
                s.t.extend(times)
            s.mean.extend(map(un, means))
            s.min.extend(map(un, lows))
            s.max.extend(map(un, highs))
        k = j


def _keys(info: SeriesInfo, index: int) -> tuple[int | None, int | None, int | None]:
    """(string, cell, channel) of element ``index`` of a series' vector."""
    if info.axis == "cell":
        return info.string, index + 1, None
    if info.axis == "string":
        return index + 1, None, None
    if info.axis == "channel":
        return None, None, index + 1
    return None, None, None


def _check_range(start: float, end: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise HistoryError("start and end must be finite unix times")
    if end < start:
        raise HistoryError(f"end ({end}) is before start ({start})")


def merge_rollups(parts: Sequence[tuple[int, bytes]]) -> tuple[bytes, int]:
    """Combine roll-up rows ``(n, blob)`` of the same series: min of mins, n-weighted mean, max of maxes."""
    if len(parts) == 1:
        return parts[0][1], parts[0][0]
    width = max((len(decode_vector(b)) // 3 for _, b in parts), default=0)
    lo: list[int | None] = [None] * width
    hi: list[int | None] = [None] * width
    acc = [0.0] * width
    weight = [0] * width
    total = 0
    for n, blob in parts:
        vec = decode_vector(blob)
        k = len(vec) // 3
        total += n
        for i in range(k):
            m = vec[k + i]
            if m is None:
                continue
            a, z, low, high = vec[i], vec[2 * k + i], lo[i], hi[i]
            if a is not None and (low is None or a < low):
                lo[i] = a
            if z is not None and (high is None or z > high):
                hi[i] = z
            acc[i] += m * max(n, 1)
            weight[i] += max(n, 1)
    means = [round(acc[i] / weight[i]) if weight[i] else None for i in range(width)]
    return encode_vector(lo + means + hi), total
