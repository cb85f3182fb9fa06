"""What analytics remembers across restarts, in one SQLite file (WAL) in the state folder.

Baselines and battery replacements (IEEE 1188 record keeping), per-battery daily aggregates (the trend data
behind forecasts and diagnoses), the SOC state of each string, discharge events and capacity tests, the latest
forecast and diagnosis per battery, the temperature life budget, and the maintenance log.  Any process may
write to it (``bmsgw battery replace`` while the gateway runs): the running analytics picks changes up.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

DAY_S = 86400


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Baseline:
    string: int
    cell: int
    ohmic: float
    ts: float
    source: str  # auto | user
    temperature: float | None = None
    emf: float | None = None


@dataclass(frozen=True, slots=True)
class Replacement:
    id: int
    string: int
    cell: int
    ts: float
    reason: str
    old_baseline: float | None
    recorded: float


@dataclass(frozen=True, slots=True)
class DailyRow:
    """One battery's day: means (and counts) of what the trends need."""

    day: int  # unix day number (ts // 86400)
    ohmic: float | None
    emf: float | None  # EMF on float
    v_float: float | None  # terminal voltage on float
    v_dev: float | None  # voltage minus the string average, on float
    temp: float | None
    temp_rise: float | None  # negative post minus ambient (or minus the string's median)
    setpoint: float | None  # temperature-compensated float setpoint per unit
    n_ohmic: int = 0


DAILY_FIELDS = ("ohmic", "emf", "v_float", "v_dev", "temp", "temp_rise", "setpoint")


class StateDB:
    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no analytics state at {self.path}")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30,
                                        isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shared: sqlite3.Connection | None = None
            try:
                shared = self.conn = self._connect()
                self._create()
            except sqlite3.OperationalError as exc:
                if not self.path.exists():
                    raise
                # a full card: SQLite cannot create the shared WAL index (-shm) next to the file.  Opened for
                # this process alone (the index in memory), every value is there and writes work again as
                # soon as there is room; share() goes back to normal then.
                if shared is not None:
                    shared.close()
                self.conn = self._connect(exclusive=True)
                self._create()
                self.exclusive = True
                log.error("analytics state %s cannot be shared now (%s): opened for the gateway alone until the card "
                          "has room again; other processes (bmsgw baseline ...) wait until then", self.path, exc)

    exclusive = False  # opened with locking_mode=EXCLUSIVE because the WAL index could not be created
    _share_retry = 0.0

    def _connect(self, exclusive: bool = False) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            if exclusive:
                c.execute("PRAGMA locking_mode=EXCLUSIVE")  # before the first WAL access: no -shm file needed
            c.execute("PRAGMA journal_mode=WAL")
            # FULL: a baseline, a replacement or a maintenance record is on the card when the call returns
            # (NORMAL may lose the last commits to a power cut); these are a few commits a minute
            c.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            c.close()
            raise
        return c

    def share(self, min_free_bytes: int = 1 << 20) -> bool:
        """After an exclusive start (a full card): reopen shared once there is room.  True when shared."""
        if not self.exclusive:
            return True
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < min_free_bytes or time.monotonic() < self._share_retry:
                return False
        except OSError:
            return False
        with self.lock:
            self.conn.close()  # releases the exclusive lock (and checkpoints, room permitting)
            try:
                conn = self._connect()
                conn.execute("SELECT count(*) FROM meta").fetchall()
            except sqlite3.Error as exc:
                conn.close()
                self.conn = self._connect(exclusive=True)
                self._share_retry = time.monotonic() + 30.0
                log.debug("analytics state %s still cannot be shared: %s", self.path, exc)
                return False
            self.conn = conn
            self.exclusive = False
        log.warning("analytics state %s is shared again", self.path)
        return True

    def _create(self) -> None:
        cols = ", ".join(f"{f} REAL, n_{f} INTEGER NOT NULL DEFAULT 0" for f in DAILY_FIELDS)
        self.conn.executescript(f"""
            CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS baselines(string INTEGER, cell INTEGER, ohmic REAL NOT NULL, ts REAL NOT NULL,
                source TEXT NOT NULL, temperature REAL, emf REAL, PRIMARY KEY(string, cell)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS replacements(id INTEGER PRIMARY KEY, string INTEGER NOT NULL,
                cell INTEGER NOT NULL, ts REAL NOT NULL, reason TEXT NOT NULL, old_baseline REAL,
                recorded REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS daily(string INTEGER, cell INTEGER, day INTEGER, {cols},
                PRIMARY KEY(string, cell, day)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS soc(string INTEGER PRIMARY KEY, data TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, string INTEGER NOT NULL, kind TEXT NOT NULL,
                start REAL NOT NULL, end REAL NOT NULL, data TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS forecasts(string INTEGER, cell INTEGER, ts REAL NOT NULL, data TEXT NOT NULL,
                PRIMARY KEY(string, cell)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS diagnoses(string INTEGER, cell INTEGER, ts REAL NOT NULL, code INTEGER NOT NULL,
                data TEXT NOT NULL, PRIMARY KEY(string, cell)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS life(string INTEGER, cell INTEGER, used_years REAL NOT NULL, ts REAL NOT NULL,
                first_seen REAL NOT NULL, PRIMARY KEY(string, cell)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS maintenance(id INTEGER PRIMARY KEY, item TEXT NOT NULL, ts REAL NOT NULL,
                string INTEGER, note TEXT NOT NULL DEFAULT '');
        """)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def _x(self, sql: str, args: tuple = ()) -> int:
        with self.lock:
            return self.conn.execute(sql, args).rowcount

    def transaction(self):
        return _Tx(self)

    # -- meta ------------------------------------------------------------------------------------------------
    @overload
    def meta(self, key: str, default: str) -> str: ...
    @overload
    def meta(self, key: str, default: None = None) -> str | None: ...

    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self._x("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- baselines and replacements --------------------------------------------------------------------------
    def baselines(self) -> dict[tuple[int, int], Baseline]:
        return {(r[0], r[1]): Baseline(*r) for r in
                self._q("SELECT string, cell, ohmic, ts, source, temperature, emf FROM baselines")}

    def set_baseline(self, b: Baseline) -> None:
        self._x("INSERT OR REPLACE INTO baselines VALUES (?,?,?,?,?,?,?)",
                (b.string, b.cell, b.ohmic, b.ts, b.source, b.temperature, b.emf))
        self._bump()

    def set_baselines(self, items: list[Baseline]) -> None:
        """Several baselines in one transaction (the automatic ones of a whole bank)."""
        with self.lock, self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO baselines VALUES (?,?,?,?,?,?,?)",
                                  [(b.string, b.cell, b.ohmic, b.ts, b.source, b.temperature, b.emf) for b in items])
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)",
                              (str(int(self.meta("generation", "0")) + 1),))

    def clear_baseline(self, string: int, cell: int) -> None:
        self._x("DELETE FROM baselines WHERE string=? AND cell=?", (string, cell))
        self._bump()

    def record_replacement(self, string: int, cell: int, reason: str, ts: float | None = None) -> Replacement:
        """A battery was replaced: log it (date, reason, the old baseline) and forget what belonged to the old
        unit (baseline, trend data, forecast, diagnosis, life budget)."""
        if not reason or not reason.strip():
            raise ValueError("a replacement needs a reason")
        ts = time.time() if ts is None else ts
        with self.lock, self.transaction():
            old = self._q("SELECT ohmic FROM baselines WHERE string=? AND cell=?", (string, cell))
            cur = self.conn.execute(
                "INSERT INTO replacements(string, cell, ts, reason, old_baseline, recorded) VALUES (?,?,?,?,?,?)",
                (string, cell, ts, reason.strip()[:500], old[0][0] if old else None, time.time()))
            rid = _inserted_id(cur)
            for table in ("baselines", "forecasts", "diagnoses", "life"):
                self.conn.execute(f"DELETE FROM {table} WHERE string=? AND cell=?", (string, cell))
            self.conn.execute("DELETE FROM daily WHERE string=? AND cell=? AND day < ?",
                              (string, cell, int(ts // DAY_S) + 1))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)",
                              (str(int(self.meta("generation", "0")) + 1),))
        # by id: a replacement recorded late (an earlier date) is not the last one in date order
        return next(r for r in self.replacements(string, cell) if r.id == rid)

    def replacements(self, string: int | None = None, cell: int | None = None) -> list[Replacement]:
        sql = "SELECT id, string, cell, ts, reason, old_baseline, recorded FROM replacements"
        args: tuple = ()
        if string is not None:
            sql += " WHERE string=?" + (" AND cell=?" if cell is not None else "")
            args = (string,) if cell is None else (string, cell)
        return [Replacement(*r) for r in self._q(sql + " ORDER BY ts, id", args)]

    def last_replaced(self) -> dict[tuple[int, int], float]:
        rows = self._q("SELECT string, cell, max(ts) FROM replacements GROUP BY string, cell")
        return {(s, c): ts for s, c, ts in rows}

    def _bump(self) -> None:
        self.set_meta("generation", str(int(self.meta("generation", "0")) + 1))

    def generation(self) -> int:
        """Bumped by every change made from outside the running analytics (baseline set, replacement)."""
        return int(self.meta("generation", "0"))

    # -- daily aggregates ------------------------------------------------------------------------------------
    def add_daily(self, rows: list[tuple[int, int, int, dict[str, tuple[float, int]]]]) -> None:
        """Merge ``(string, cell, day, {field: (mean, n)})`` into the daily table (n-weighted means)."""
        if not rows:
            return
        cols = ", ".join(f"{f}, n_{f}" for f in DAILY_FIELDS)
        days = [day for _, _, day, _ in rows]
        with self.lock, self.transaction():
            # the days' rows read at once (a flush is a whole bank's day: one query, not one per battery)
            stored = {(r[0], r[1], r[2]): r[3:] for r in self.conn.execute(
                f"SELECT string, cell, day, {cols} FROM daily WHERE day BETWEEN ? AND ?", (min(days), max(days)))}
            merged_rows = []
            for string, cell, day, vals in rows:
                old = stored.get((string, cell, day))
                merged = []
                for i, f in enumerate(DAILY_FIELDS):
                    mean: float | None
                    mean, n = vals.get(f, (None, 0))
                    if old is not None and old[2 * i + 1]:
                        om, on = old[2 * i], old[2 * i + 1]
                        if n and mean is not None:  # a new mean comes with its count
                            mean, n = (om * on + mean * n) / (on + n), on + n
                        else:
                            mean, n = om, on
                    merged += [mean, n]
                merged_rows.append((string, cell, day, *merged))
                stored[(string, cell, day)] = tuple(merged)  # (the same battery's day again merges with this)
            marks = ",".join("?" * (3 + 2 * len(DAILY_FIELDS)))
            self.conn.executemany(f"INSERT OR REPLACE INTO daily VALUES ({marks})", merged_rows)

    def daily(self, string: int, cell: int, since_day: int = 0) -> list[DailyRow]:
        rows = self._q("SELECT day, " + ", ".join(DAILY_FIELDS) + ", n_ohmic FROM daily "
                       "WHERE string=? AND cell=? AND day>=? ORDER BY day", (string, cell, since_day))
        return [DailyRow(*r) for r in rows]

    def daily_string(self, string: int, since_day: int = 0) -> dict[int, list[DailyRow]]:
        out: dict[int, list[DailyRow]] = {}
        for r in self._q("SELECT cell, day, " + ", ".join(DAILY_FIELDS) + ", n_ohmic FROM daily "
                         "WHERE string=? AND day>=? ORDER BY cell, day", (string, since_day)):
            out.setdefault(r[0], []).append(DailyRow(*r[1:]))
        return out

    # -- json blobs --------------------------------------------------------------------------------------------
    def save_soc(self, string: int, data: dict) -> None:
        self._x("INSERT OR REPLACE INTO soc VALUES (?, ?)", (string, json.dumps(data)))

    def save_socs(self, items: dict[int, dict]) -> None:
        """Every string's SOC state in one transaction (one commit, one sync of the card, not one per string)."""
        with self.lock, self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO soc VALUES (?, ?)",
                                  [(string, json.dumps(data)) for string, data in items.items()])

    def load_soc(self) -> dict[int, dict]:
        return {s: json.loads(d) for s, d in self._q("SELECT string, data FROM soc")}

    def add_event(self, string: int, kind: str, start: float, end: float, data: dict) -> int:
        with self.lock:
            cur = self.conn.execute("INSERT INTO events(string, kind, start, end, data) VALUES (?,?,?,?,?)",
                                    (string, kind, start, end, json.dumps(data)))
            return _inserted_id(cur)

    def events(self, string: int | None = None, kind: str | None = None, start: float | None = None,
               end: float | None = None) -> list[dict]:
        sql = "SELECT id, string, kind, start, end, data FROM events WHERE 1=1"
        args: list[Any] = []
        if string is not None:
            sql += " AND string=?"
            args.append(string)
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if start is not None:
            sql += " AND end>=?"
            args.append(start)
        if end is not None:
            sql += " AND start<=?"
            args.append(end)
        out = []
        for eid, s, k, a, b, data in self._q(sql + " ORDER BY start", tuple(args)):
            out.append({"id": eid, "string": s, "kind": k, "start": a, "end": b, **json.loads(data)})
        return out

    def save_forecasts(self, items: list[tuple[int, int, float, dict]]) -> None:
        with self.lock, self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO forecasts VALUES (?,?,?,?)",
                                  [(s, c, ts, json.dumps(d)) for s, c, ts, d in items])

    def forecasts(self, string: int | None = None) -> dict[tuple[int, int], dict]:
        sql = "SELECT string, cell, ts, data FROM forecasts" + (" WHERE string=?" if string is not None else "")
        return {(s, c): {"ts": ts, **json.loads(d)} for s, c, ts, d in
                self._q(sql, (string,) if string is not None else ())}

    def save_diagnoses(self, items: list[tuple[int, int, float, int, dict]]) -> None:
        with self.lock, self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO diagnoses VALUES (?,?,?,?,?)",
                                  [(s, c, ts, code, json.dumps(d)) for s, c, ts, code, d in items])

    def diagnoses(self, string: int | None = None) -> dict[tuple[int, int], dict]:
        sql = "SELECT string, cell, ts, code, data FROM diagnoses" + (" WHERE string=?" if string is not None else "")
        return {(s, c): {"ts": ts, "code": code, **json.loads(d)} for s, c, ts, code, d in
                self._q(sql, (string,) if string is not None else ())}

    def save_life(self, items: list[tuple[int, int, float, float, float]]) -> None:
        with self.lock, self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO life VALUES (?,?,?,?,?)", items)

    def life(self) -> dict[tuple[int, int], tuple[float, float, float]]:
        """{(string, cell): (used 25 C-equivalent years, as of ts, first seen)}"""
        rows = self._q("SELECT string, cell, used_years, ts, first_seen FROM life")
        return {(s, c): (u, ts, f) for s, c, u, ts, f in rows}

    # -- maintenance log ---------------------------------------------------------------------------------------
    def record_maintenance(self, item: str, ts: float | None = None, string: int | None = None, note: str = "") -> int:
        with self.lock:
            cur = self.conn.execute("INSERT INTO maintenance(item, ts, string, note) VALUES (?,?,?,?)",
                                    (item, time.time() if ts is None else ts, string, note[:500]))
            return _inserted_id(cur)

    def maintenance(self) -> list[dict[str, Any]]:
        return [{"id": i, "item": it, "ts": ts, "string": s, "note": n}
                for i, it, ts, s, n in self._q("SELECT id, item, ts, string, note FROM maintenance ORDER BY ts")]


def _inserted_id(cur: sqlite3.Cursor) -> int:
    """The rowid an INSERT just made (sqlite3 types it Optional: None only before any INSERT)."""
    if cur.lastrowid is None:
        raise sqlite3.DatabaseError("INSERT made no row")
    return cur.lastrowid


class _Tx:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    def __enter__(self):
        self.db.lock.acquire()
        self.db.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        conn = self.db.conn
        try:
            if exc_type is None:
                conn.execute("COMMIT")
        except sqlite3.Error:
            _rollback(conn)  # a COMMIT refused (a full card) leaves the transaction open
            raise
        else:
            if exc_type is not None:
                _rollback(conn)
        finally:
            self.db.lock.release()


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open without hiding the error that ended it (SQLITE_FULL may have rolled it back)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
