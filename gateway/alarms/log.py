"""The alarm log: one SQLite row per alarm (raised, cleared, acknowledged), kept across restarts.

Writes go through one writer thread (a queue), so the event loop never waits for the disk; each batch is
one transaction.  Reads open their own connection (WAL mode lets them run beside the writer).
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .model import ActiveAlarm, AlarmKey, alarm_record

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL, side TEXT NOT NULL, severity TEXT NOT NULL, point TEXT NOT NULL,
    string INTEGER, cell INTEGER, channel INTEGER, device TEXT NOT NULL DEFAULT '',
    object TEXT NOT NULL, metric TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '',
    threshold REAL, value REAL, raised_ts REAL NOT NULL, text TEXT NOT NULL,
    cleared_ts REAL, clear_value REAL, clear_text TEXT,
    acked_by TEXT, acked_ts REAL
);
CREATE INDEX IF NOT EXISTS alarms_raised ON alarms (raised_ts);
CREATE INDEX IF NOT EXISTS alarms_open ON alarms (cleared_ts);
"""
COLUMNS = ("id", "rule", "side", "severity", "point", "string", "cell", "channel", "device", "object", "metric", "unit",
           "threshold", "value", "raised_ts", "text", "cleared_ts", "clear_value", "clear_text", "acked_by", "acked_ts")
_STOP = object()


class AlarmLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.errors = 0
        self.ready = False
        self._prepare()

    def _prepare(self) -> bool:
        """Create the file and its schema.  False when that is not possible now (a full card: SQLite cannot
        even create the WAL index); alarms then work without a log, and every write tries again."""
        if self.ready:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._session() as db:
                db.executescript(SCHEMA)
                db.execute("PRAGMA journal_mode=WAL")
        except (sqlite3.Error, OSError) as exc:
            if self.errors == 0:
                log.error("alarm log %s cannot be opened (%s): alarms are raised, shown and notified, but not "
                          "logged until it can", self.path, exc)
            self.errors += 1
            return False
        if self.errors:
            log.warning("alarm log %s can be written again", self.path)
        self.ready = True
        return True

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            with db:  # one transaction
                yield db
        finally:
            db.close()

    # -- start-up (synchronous) ------------------------------------------------------------------------------
    def next_id(self) -> int:
        if not self.ready:  # ids that cannot meet the ones in the unreadable log: seconds since 1970
            return int(time.time())
        with self._session() as db:
            top = db.execute("SELECT max(id) FROM alarms").fetchone()[0] or 0
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'alarms'").fetchone()
            return max(top, row[0] if row else 0) + 1

    def load_active(self) -> list[dict]:
        if not self.ready:
            return []
        with self._session() as db:
            rows = db.execute("SELECT * FROM alarms WHERE cleared_ts IS NULL ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def prune(self, keep_days: float, now: float | None = None) -> int:
        cutoff = (now or time.time()) - keep_days * 86400.0
        if not self.ready:
            return 0
        with self._session() as db:
            cur = db.execute("DELETE FROM alarms WHERE cleared_ts IS NOT NULL AND cleared_ts < ?", (cutoff,))
            return cur.rowcount

    # -- writes (queued) -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="alarm-log", daemon=True)
            self._thread.start()

    def record_raise(self, a: ActiveAlarm) -> None:
        k = a.key
        self._queue.put(("INSERT INTO alarms (id, rule, side, severity, point, string, cell, channel, device, object, "
                         "metric, unit, threshold, value, raised_ts, text, acked_by, acked_ts) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (a.alarm_id, k.rule, k.side, k.severity, k.point, k.string, k.cell, k.channel, k.device,
                          a.object, a.metric, a.unit, a.threshold, a.value, a.raised_ts, a.text,
                          a.acknowledged_by, a.acknowledged_ts)))

    def record_clear(self, alarm_id: int, ts: float, value: float | None, text: str) -> None:
        self._queue.put(("UPDATE alarms SET cleared_ts = ?, clear_value = ?, clear_text = ? WHERE id = ?",
                         (ts, value, text, alarm_id)))

    def record_ack(self, alarm_id: int, by: str, ts: float) -> None:
        self._queue.put(("UPDATE alarms SET acked_by = ?, acked_ts = ? WHERE id = ?", (by, ts, alarm_id)))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued write is on disk (False when that took longer than ``timeout``)."""
        if self._thread is None or not self._thread.is_alive():
            self._drain_here()
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
        self._drain_here()
        self._thread = None

    def _take(self, first: list) -> list:
        """``first`` plus whatever else is waiting: it all goes into one transaction."""
        batch = list(first)
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def _process(self, db: sqlite3.Connection | None, batch: list) -> None:
        stmts = [i for i in batch if isinstance(i, tuple)]
        if stmts and db is not None and self._prepare():
            self._write(db, stmts)
        elif stmts:
            self.errors += 1
            log.debug("alarm log %s unavailable: %d writes lost", self.path, len(stmts))
        for i in batch:
            if isinstance(i, threading.Event):
                i.set()

    def _writer_connection(self) -> sqlite3.Connection | None:
        """A connection whose commits are on the card when they return; None while the file cannot be opened
        (a full card), and the next batch tries again."""
        try:
            db = self._connect()
        except sqlite3.Error:
            return None
        try:
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            db.close()
            return None
        return db

    def _drain_here(self) -> None:
        batch = self._take([])
        if batch:
            db = self._writer_connection()
            try:
                self._process(db, batch)
            finally:
                if db is not None:
                    db.close()

    def _run(self) -> None:
        db = None
        try:
            while True:
                batch = self._take([self._queue.get()])
                if db is None:
                    db = self._writer_connection()
                self._process(db, batch)
                if any(i is _STOP for i in batch):
                    return
        finally:
            if db is not None:
                db.close()

    def _write(self, db: sqlite3.Connection, stmts: list[tuple]) -> None:
        try:
            with db:
                for sql, params in stmts:
                    db.execute(sql, params)
            self.writes += len(stmts)
        except sqlite3.Error as exc:
            self.errors += 1
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                log.error("alarm log %s: %d writes lost: the card is full", self.path, len(stmts))
            else:
                log.exception("alarm log %s: %d writes lost", self.path, len(stmts))

    # -- reads (any thread) ----------------------------------------------------------------------------------
    def history(self, limit: int = 100, since: float | None = None, active_only: bool = False,
                string: int | None = None) -> list[dict[str, Any]]:
        """The newest alarms first (at most ``limit``, capped at 10000), as ``alarm_record``s."""
        where, params = [], []
        if since is not None:
            where.append("(raised_ts >= ? OR cleared_ts >= ? OR acked_ts >= ?)")
            params += [since, since, since]
        if active_only:
            where.append("cleared_ts IS NULL")
        if string is not None:
            where.append("string = ?")
            params.append(string)
        sql = "SELECT * FROM alarms" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(1, min(int(limit), 10000)))
        if not self.ready:
            return []
        with self._session() as db:
            return [record_of(r) for r in db.execute(sql, params).fetchall()]


def record_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A logged alarm as the gateway hands alarms out (web page, REST, reports): the one vocabulary that
    ``ActiveAlarm.record`` also speaks."""
    return alarm_record(row["id"], row["severity"], row["text"], row["raised_ts"], row["metric"], row["string"],
                        row["cell"], row["channel"], row["value"], row["threshold"], row["cleared_ts"],
                        row["acked_by"], row["acked_ts"], row["rule"], row["clear_text"])


def read_period(path: Path, start: float, end: float, string: int | None = None) -> list[dict[str, Any]]:
    """The alarms raised in [start, end], oldest first, read-only (for reports: the gateway may be stopped);
    ``string``: that string's and the bank-wide ones."""
    sql = "SELECT * FROM alarms WHERE raised_ts >= ? AND raised_ts <= ?"
    params: list = [start, end]
    if string is not None:
        sql += " AND (string = ? OR string IS NULL)"
        params.append(string)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [record_of(r) for r in db.execute(sql + " ORDER BY raised_ts", params).fetchall()]
    finally:
        db.close()


def key_of(row: dict) -> AlarmKey:
    return AlarmKey(row["rule"], row["side"], row["severity"], row["point"], row["string"], row["cell"],
                    row["channel"], row["device"] or "")


def alarm_of(row: dict) -> ActiveAlarm:
    return ActiveAlarm(alarm_id=row["id"], key=key_of(row), object=row["object"], metric=row["metric"],
                       unit=row["unit"] or "", severity=row["severity"], threshold=row["threshold"],
                       value=row["value"], raised_ts=row["raised_ts"], text=row["text"], last_value=row["value"],
                       last_ts=row["raised_ts"], acknowledged_by=row["acked_by"], acknowledged_ts=row["acked_ts"])
