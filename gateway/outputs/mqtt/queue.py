"""The MQTT uploader's store-and-forward queue: what could not be sent waits on disk, in order, bounded.

Messages get a sequence number when they are queued (it is in every payload, so a consumer can spot a gap
or a duplicate).  While the broker is reachable they stay in memory and go out at once, so a healthy link
costs the SD card nothing; when the link is down (or the broker falls behind) they are written to SQLite in
``state_dir`` and sent from there, oldest first, when it is back.  Alarm events are written at once
(``durable``).  A message leaves the queue only when the broker acknowledged it (QoS 1), so a restart
re-sends what was in flight: delivery is at least once.

The bound (messages and bytes waiting) drops the OLDEST waiting messages first and counts them; the count
survives restarts.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEQ_BLOCK = 10000  # sequence numbers reserved per disk write, so a crash never reuses one
READ_AHEAD = 256  # rows read from disk at a time while catching up


class Encoded:
    """A document encoded already: the JSON text of an object (compact, as ``put_many`` encodes a dict), without
    ``seq``.  ``put_many`` puts ``seq`` in front, so the payload is byte for byte the one of the same dict."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        if not (text.startswith("{") and text.endswith("}")):
            raise ValueError("an encoded document is a JSON object")
        self.text = text


def encode(seq: int, doc: dict[str, Any] | Encoded) -> bytes:
    """The payload of a queued document: JSON with ``seq`` first."""
    if isinstance(doc, Encoded):
        rest = doc.text[1:]
        return (f'{{"seq":{seq}' + ("," + rest if rest != "}" else "}")).encode()
    return json.dumps({"seq": seq, **doc}, separators=(",", ":"), default=str).encode()


@dataclass(slots=True)
class Message:
    seq: int
    topic: str
    payload: bytes
    retain: bool
    ts: float  # when it was queued
    on_disk: bool = False


class MessageQueue:
    """Thread-safe: producers call ``put_many``; one sender calls ``take``/``ack``/``flush``/``link_down``."""

    def __init__(self, path: str | Path, max_messages: int = 100000, max_bytes: int = 64 << 20,
                 memory_limit: int = 2000) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("the queue bound must be at least one message and one byte")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.memory_limit = memory_limit
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._mem: deque[Message] = deque()
        self._mem_bytes = 0
        self._inflight: dict[int, Message] = {}
        self._deletes: list[int] = []
        # waiting messages, oldest first: rows read ahead from disk, rows not read yet, then memory
        self._ahead: deque[Message] = deque()
        self._ahead_bytes = 0
        self._cursor = 0  # highest seq read from disk
        self._disk_pending = 0  # rows with seq > cursor
        self._disk_pending_bytes = 0
        self._next_seq = 1
        self._reserved = 0
        self.link_up = False
        self.dropped = 0  # since the queue was created (persisted)
        self.sent = 0  # acknowledged since this process started

    # -- life cycle ------------------------------------------------------------------------------------------
    def open(self) -> MessageQueue:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect when the file is created
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
                   "payload BLOB NOT NULL, retain INTEGER NOT NULL, ts REAL NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        count, size, top = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), COALESCE(MAX(seq), 0) "
                                      "FROM queue").fetchone()
        with self._lock:
            self._db = db
            self.dropped = int(meta.get("dropped", 0))
            # after a clean close the numbers go on without a gap; after a crash they skip the reserved block
            # (the gap tells a consumer that messages held in memory may have been lost)
            start = int(meta["seq_next"]) if "seq_next" in meta else int(meta.get("seq_reserved", 0)) + 1
            self._next_seq = max(start, top + 1)
            self._reserved = self._next_seq - 1
            db.execute("DELETE FROM meta WHERE key = 'seq_next'")
            self._disk_pending, self._disk_pending_bytes = count, size
            self._cursor = 0
            self._ahead.clear()
            self._ahead_bytes = 0
        if count:
            log.info("mqtt queue %s: %d messages from before the restart will be sent first", self.path, count)
        return self

    def close(self) -> None:
        """Write everything not yet acknowledged (in flight and waiting in memory) to disk, then close."""
        with self._lock:
            if self._db is None:
                return
            unsaved = [m for m in self._inflight.values() if not m.on_disk]
            self._inflight.clear()
            self._write(unsaved + list(self._mem), count_pending=False)
            self._mem.clear()
            self._mem_bytes = 0
            self._ahead.clear()  # on disk already
            self._ahead_bytes = 0
            self._flush_locked()
            self._set_meta("seq_next", self._next_seq)
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        """The open database; the methods that use it run under the lock after checking the queue is open."""
        if self._db is None:
            raise RuntimeError("the queue is closed")
        return self._db

    # -- producer --------------------------------------------------------------------------------------------
    def put_many(self, items: Iterable[tuple[str, dict[str, Any] | Encoded, bool]], durable: bool = False) -> list[int]:
        """Queue ``(topic, document, retain)`` items; each document (a dict, or ``Encoded`` already) is sent as
        JSON with ``seq`` first."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("the queue is closed")
            now = time.time()
            batch = []
            for topic, doc, retain in items:
                seq = self._take_seq()
                batch.append(Message(seq, topic, encode(seq, doc), bool(retain), now))
            if not batch:
                return []
            if durable or not self.link_up:
                self._spill_locked()
                self._write(batch)
            else:
                self._mem.extend(batch)
                self._mem_bytes += sum(len(m.payload) for m in batch)
                if len(self._mem) > self.memory_limit:
                    self._spill_locked()
            self._enforce_bound()
            return [m.seq for m in batch]

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        if seq > self._reserved:
            self._reserved = seq + SEQ_BLOCK
            self._set_meta("seq_reserved", self._reserved)
        return seq

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def _write(self, msgs: list[Message], count_pending: bool = True) -> None:
        if not msgs:
            return
        db = self._conn
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO queue(seq, topic, payload, retain, ts) VALUES(?, ?, ?, ?, ?)",
                       [(m.seq, m.topic, m.payload, int(m.retain), m.ts) for m in msgs])
        db.execute("COMMIT")
        for m in msgs:
            m.on_disk = True
        if count_pending:
            self._disk_pending += len(msgs)
            self._disk_pending_bytes += sum(len(m.payload) for m in msgs)

    def _spill_locked(self) -> None:
        """Move the messages waiting in memory to disk (they are newer than any waiting there)."""
        if self._mem:
            msgs = list(self._mem)
            self._mem.clear()
            self._mem_bytes = 0
            self._write(msgs)

    def _enforce_bound(self) -> None:
        excess_n = self.pending - self.max_messages
        excess_b = self.pending_bytes - self.max_bytes
        if excess_n <= 0 and excess_b <= 0:
            return
        freed_n = freed_b = 0

        def more() -> bool:
            return freed_n < excess_n or freed_b < excess_b

        drop_rows: list[int] = []
        while self._ahead and more():  # the oldest: read from disk, not sent yet
            m = self._ahead.popleft()
            self._ahead_bytes -= len(m.payload)
            drop_rows.append(m.seq)
            freed_n, freed_b = freed_n + 1, freed_b + len(m.payload)
        unread = 0
        if self._disk_pending and more():
            rows = self._conn.execute("SELECT seq, LENGTH(payload) FROM queue WHERE seq > ? ORDER BY seq",
                                    (self._cursor,))
            for seq, size in rows:
                if not more():
                    break
                drop_rows.append(seq)
                unread += 1
                freed_n, freed_b = freed_n + 1, freed_b + size
            rows.close()
        mem_dropped = 0
        while self._mem and more():
            m = self._mem.popleft()
            self._mem_bytes -= len(m.payload)
            freed_n, freed_b = freed_n + 1, freed_b + len(m.payload)
            mem_dropped += 1
        total = len(drop_rows) + mem_dropped
        if not total:
            return
        self.dropped += total
        db = self._conn
        db.execute("BEGIN")
        if drop_rows:
            db.executemany("DELETE FROM queue WHERE seq = ?", [(seq,) for seq in drop_rows])
        self._set_meta("dropped", self.dropped)
        db.execute("COMMIT")
        if unread:
            self._recount_disk()
        log.warning("mqtt queue full (%d messages, %d bytes waiting at most): dropped the %d oldest; %d dropped "
                    "in all", self.max_messages, self.max_bytes, total, self.dropped)

    def _recount_disk(self) -> None:
        n, size = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue WHERE seq > ?",
                                   (self._cursor,)).fetchone()
        self._disk_pending, self._disk_pending_bytes = n, size

    # -- sender ----------------------------------------------------------------------------------------------
    def take(self, n: int) -> list[Message]:
        """Up to ``n`` waiting messages, oldest first; they count as in flight until ``ack``."""
        out: list[Message] = []
        with self._lock:
            if self._db is None:
                return out
            while len(out) < n:
                if self._ahead:
                    m = self._ahead.popleft()
                    self._ahead_bytes -= len(m.payload)
                    out.append(m)
                elif self._disk_pending:
                    if not self._read_ahead(max(n - len(out), READ_AHEAD)):
                        break
                elif self._mem:
                    m = self._mem.popleft()
                    self._mem_bytes -= len(m.payload)
                    out.append(m)
                else:
                    break
            for m in out:
                self._inflight[m.seq] = m
        return out

    def _read_ahead(self, n: int) -> int:
        rows = self._conn.execute("SELECT seq, topic, payload, retain, ts FROM queue WHERE seq > ? ORDER BY seq "
                                  "LIMIT ?", (self._cursor, n)).fetchall()
        for seq, topic, payload, retain, ts in rows:
            m = Message(seq, topic, bytes(payload), bool(retain), ts, on_disk=True)
            self._ahead.append(m)
            self._ahead_bytes += len(m.payload)
            self._cursor = seq
            self._disk_pending -= 1
            self._disk_pending_bytes -= len(m.payload)
        if not rows:  # counters out of step with the file: trust the file
            self._recount_disk()
        return len(rows)

    def ack(self, seq: int) -> None:
        """The broker has it: forget it (its row is deleted at the next ``flush``)."""
        with self._lock:
            m = self._inflight.pop(seq, None)
            if m is None:
                return
            self.sent += 1
            if m.on_disk:
                self._deletes.append(seq)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._deletes and self._db is not None:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM queue WHERE seq = ?", [(s,) for s in self._deletes])
            self._db.execute("COMMIT")
            self._deletes.clear()
            if not self._disk_pending and not self._ahead:  # the backlog is gone: give the space back
                self._db.executescript("PRAGMA incremental_vacuum;")  # (execute() frees only one page)

    def set_link(self, up: bool) -> None:
        """The broker connection came up or went down; down moves what waits in memory to disk."""
        with self._lock:
            self.link_up = up
            if not up and self._db is not None:
                self._spill_locked()

    # -- figures ---------------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Messages waiting to be sent (not counting those in flight)."""
        return len(self._ahead) + self._disk_pending + len(self._mem)

    @property
    def pending_bytes(self) -> int:
        return self._ahead_bytes + self._disk_pending_bytes + self._mem_bytes

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def memory_pending(self) -> int:
        return len(self._mem)

    @property
    def has_deletes(self) -> bool:
        return bool(self._deletes)

    def oldest_pending_ts(self) -> float | None:
        with self._lock:
            stamps = [m.ts for m in self._inflight.values()]
            if self._ahead:
                stamps.append(self._ahead[0].ts)
            elif self._disk_pending and self._db is not None:
                row = self._db.execute("SELECT ts FROM queue WHERE seq > ? ORDER BY seq LIMIT 1",
                                       (self._cursor,)).fetchone()
                if row:
                    stamps.append(row[0])
            if self._mem:
                stamps.append(self._mem[0].ts)
            return min(stamps) if stamps else None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            oldest = self.oldest_pending_ts()
            return {"waiting": self.pending, "waiting_bytes": self.pending_bytes,
                    "on_disk": len(self._ahead) + self._disk_pending,
                    "inflight": self.inflight, "sent": self.sent, "dropped": self.dropped,
                    "oldest_unsent_s": round(time.time() - oldest, 1) if oldest else 0.0}
