"""History: every recorded value kept for years in one SQLite file (WAL) in the state folder.

Raw samples for a configured window, roll-ups (min/mean/max) per tier with retention in days, written in a
thread fed by a point-store subscription.  The query API (used by the web page, REST and reports):

    from gateway.history import history_for, open_history
    db = history_for(gateway)            # in the running gateway (or open_history(config) elsewhere)
    s = db.query("cell.voltage", string=2, cell=37, start=t0, end=t1)           # -> Series
    cells = db.query_string("cell.ohmic", string=2, start=t0, end=t1)           # -> {cell: Series}

The resolution is chosen from the range (``resolution="auto"``, at most ``history.max_points`` points) or
asked for: ``"raw"``, ``"15m"``, ``"1h"``, ``"1d"`` or a number of seconds.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..points import PointRef
from ..service import ReloadResult, Service
from .db import HistoryDB, HistoryError, Series, SeriesInfo, Tier, tier_name
from .recorder import FAULT_OK, HistoryWriter, PointFilter, Recorder

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import Config

log = logging.getLogger(__name__)

__all__ = ["HistoryDB", "HistoryError", "Series", "SeriesInfo", "Tier", "history_for", "open_history",
           "HISTORY_SCHEMA", "tier_name"]

# Defaults sized for the BM-BMS maximum (480 batteries, about 30 families stored) on an 8 GB card:
# raw 60 s samples for 30 days, 15 min for a year, 1 h for 5 years, 1 day for 20 years; see bench/history.py
# and docs/analytics.md for the figures (about 1.4 GB for 5 years).
DEFAULT_TIERS = [{"seconds": 900, "retention_days": 366}, {"seconds": 3600, "retention_days": 1827},
                 {"seconds": 86400, "retention_days": 7305}]

HISTORY_SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "path": {"type": "string", "minLength": 1, "default": "history.sqlite",
                 "description": "database file, relative to gateway.state_dir"},
        "include": {"type": "array", "items": {"type": "string", "minLength": 1},
                    "default": ["@measured", "string.*", "bank.*", "cell.ohmic_baseline_deviation"],
                    "description": "point families to record: globs over ids, @measured, @derived"},
        "exclude": {"type": "array", "items": {"type": "string", "minLength": 1},
                    "default": ["cell.sensor_status", "cell.balancing", "gateway.*"]},
        "raw": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "interval_s": {"type": "number", "minimum": 1, "maximum": 3600, "default": 60,
                               "description": "one raw sample per point per interval (the latest reading)"},
                "retention_days": {"type": "number", "minimum": 0, "maximum": 3650, "default": 30,
                                   "description": "0 keeps raw samples forever"},
                "intervals": {"type": "object", "additionalProperties": {"type": "number", "minimum": 1,
                                                                           "maximum": 3600},
                              "default": {"string.current": 5, "string.voltage": 5},
                              "description": "per-family raw intervals (glob: seconds)"},
            },
        },
        "tiers": {
            "type": "array", "minItems": 1, "maxItems": 6, "default": DEFAULT_TIERS,
            "items": {"type": "object", "required": ["seconds"], "additionalProperties": False,
                      "properties": {"seconds": {"type": "integer", "minimum": 60, "maximum": 31 * 86400},
                                     "retention_days": {"type": "number", "minimum": 0, "maximum": 36500,
                                                        "default": 365}}},
            "description": "roll-up tiers, finest first; each bucket a multiple of the one before",
        },
        "flush_s": {"type": "number", "minimum": 0.1, "maximum": 3600, "default": 60,
                    "description": "how often the writer commits (fewer commits = less wear on an SD card)"},
        "max_points": {"type": "integer", "minimum": 10, "maximum": 1000000, "default": 1000,
                       "description": "automatic resolution: at most this many points per series"},
        "queue_limit": {"type": "integer", "minimum": 100, "maximum": 1000000, "default": 20000,
                        "description": "batches waiting for the writer; also the rows kept in memory while the "
                                       "disk refuses writes (the oldest are dropped beyond it)"},
        "max_size_mb": {"type": "number", "minimum": 0, "maximum": 1048576, "default": 0,
                        "description": "the database stops growing at this size, leaving the rest of the card "
                                       "to the system (0: no cap); reaching it raises the history storage alarm "
                                       "like a full disk, and retention frees room again"},
    },
}

# What a running history takes from a changed section; any other key waits for a restart (the file, the
# tiers' layout and the series' raw intervals are fixed while the writer runs).
LIVE_KEYS = ("enabled", "include", "exclude", "flush_s", "max_size_mb")


def tier_problems(cfg: dict) -> list[str]:
    """What is wrong with ``history.tiers`` beyond the schema, each as ``key.path: what``."""
    out, prev = [], 0
    for i, tier in enumerate(cfg["tiers"]):
        sec = tier["seconds"]
        if sec <= prev or (prev and sec % prev):
            out.append(f"history.tiers[{i}].seconds: {sec} must be larger than and a multiple of the tier before "
                       f"({prev})")
        if i and 0 < cfg["tiers"][i - 1]["retention_days"] * 86400 < sec:
            out.append(f"history.tiers[{i - 1}].retention_days: must keep at least one bucket of the next tier "
                       f"({sec} s)")
        prev = sec
    return out


def _check(config: Config, cfg: dict) -> None:
    problems = tier_problems(cfg)
    if problems:
        where, _, message = problems[0].partition(": ")
        raise ConfigError(str(config.path), where, message)


def db_path(config: Config) -> Path:
    p = Path(config.section("history")["path"])
    return p if p.is_absolute() else config.state_dir / p


def open_history(config: Config, readonly: bool = False) -> HistoryDB:
    """The history database the config describes (created unless ``readonly``)."""
    cfg = config.section("history")
    _check(config, cfg)
    db = HistoryDB(db_path(config), raw_retention_days=cfg["raw"]["retention_days"],
                   tiers=[(t["seconds"], t["retention_days"]) for t in cfg["tiers"]],
                   raw_interval_s=cfg["raw"]["interval_s"], max_points=cfg["max_points"], readonly=readonly)
    db.set_max_bytes(_cap_bytes(cfg))
    return db


def _cap_bytes(cfg: dict) -> int | None:
    mb = cfg.get("max_size_mb") or 0
    return int(mb * 1024 * 1024) if mb > 0 else None


def history_for(gateway: Gateway) -> HistoryDB | None:
    """The history of a gateway: the running writer's database, or the file on disk read-only, or None."""
    svc = gateway.service("history")
    if isinstance(svc, HistoryService):
        return svc.db  # None while the writer cannot open it (a full card)
    if not gateway.config.section("history")["enabled"] or not db_path(gateway.config).exists():
        return None
    return open_history(gateway.config, readonly=True)


class HistoryService(Service):
    """Every recorded value of one gateway, kept for years in one SQLite file (a writer thread)."""

    name = "history"
    sections = ("history",)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.cfg = gateway.config.section("history")
        self.db: HistoryDB | None = None
        self.writer: HistoryWriter | None = None

    async def start(self) -> None:
        gw = self.gateway
        recorder, error = None, None
        try:
            recorder = await asyncio.to_thread(self._open_recorder)
        except Exception as exc:  # a full card, a broken file: polling and the faces must start anyway
            error = exc
        self.writer = HistoryWriter(recorder, flush_s=self.cfg["flush_s"], queue_limit=self.cfg["queue_limit"],
                                    on_flush=self._flushed, on_fault=self._fault, opener=self._open_recorder,
                                    open_error=error)
        gw.store.put(PointRef("gateway.history_writes"), 0.0)
        gw.store.put(PointRef("gateway.history_fault"), float(FAULT_OK))
        self.writer.start()
        gw.store.subscribe(self.writer.submit)
        if recorder is not None:
            log.info("history: recording to %s", recorder.db.path)

    def _open_recorder(self) -> Recorder:
        """Open the database (in the thread that will write it) and the recorder that feeds it."""
        gw = self.gateway
        db = open_history(gw.config)
        recorder = Recorder(db, gw.catalog, PointFilter(self.cfg["include"], self.cfg["exclude"]),
                            raw_interval_s=self.cfg["raw"]["interval_s"], intervals=self.cfg["raw"]["intervals"],
                            max_pending_rows=self.cfg["queue_limit"])
        self.db = db
        return recorder

    def _in_loop(self, fn, *args) -> None:
        loop = self.gateway.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (stopping)
                loop.call_soon_threadsafe(fn, *args)

    def _flushed(self, recorder: Recorder) -> None:
        """The writer's acknowledgement: ``recorder.last_commit`` is on disk (called in the writer thread)."""
        c = recorder.last_commit
        if c is not None:
            log.debug("history: commit %d durable: %d values, %d raw rows%s, %d roll-up rows", c.seq, c.values,
                      len(c.raw), f" (t {min(k[0] for k in c.raw)}..{max(k[0] for k in c.raw)})" if c.raw else "",
                      len(c.roll))
        self._in_loop(self.gateway.store.put, PointRef("gateway.history_writes"), float(recorder.values_written))

    def _fault(self, fault: int, error: BaseException | None) -> None:
        """Writing failed or works again: ``gateway.history_fault`` carries it to the alarms and every face."""
        self._in_loop(self.gateway.store.put, PointRef("gateway.history_fault"), float(fault))

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Live: what is recorded (include/exclude), how often it commits, the size cap.  The rest (the file,
        the tiers, raw intervals and retention, the queue) waits for a restart."""
        cfg = config.section("history")
        result = ReloadResult(restart=[f"history.{k}" for k in sorted(set(cfg) | set(self.cfg))
                                       if k not in LIVE_KEYS and cfg.get(k) != self.cfg.get(k)])
        kept: dict[str, Any] = {k: (cfg if k in LIVE_KEYS else self.cfg).get(k) for k in set(cfg) | set(self.cfg)}
        self.cfg = kept
        if self.db is not None:
            self.db.set_max_bytes(_cap_bytes(kept))
        if self.writer is not None:
            self.writer.flush_s = kept["flush_s"]
            if self.writer.recorder is not None:
                self.writer.recorder.set_filter(PointFilter(kept["include"], kept["exclude"]))
            self.writer.request_flush()
        return result

    def flush(self, timeout: float = 30.0) -> bool:
        """Write what the writer holds now (tests, reports from the running gateway)."""
        return self.writer.flush(timeout) if self.writer is not None else False

    async def stop(self) -> None:
        if self.writer is not None:
            self.gateway.store.unsubscribe(self.writer.submit)
            await asyncio.to_thread(self.writer.stop)
            self.writer = None
        if self.db is not None:
            self.db.close()

    def endpoints(self) -> list[str]:
        return [f"sqlite://{self.db.path}"] if self.db is not None else []

    def status(self) -> dict:
        w = self.writer
        out = {"path": str(self.db.path) if self.db else str(db_path(self.gateway.config)),
               "size_bytes": self.db.size_bytes() if self.db else 0}
        if w is not None:
            out.update(queued=len(w.queue), dropped=w.dropped, errors=w.errors,
                       fault=("ok", "disk full", "write error")[w.fault], last_error=w.last_error if w.fault else None)
            r = w.recorder
            if r is not None:
                out.update(readings=r.readings, values_written=r.values_written, flushes=r.flushes,
                           commits=r.commits, last_flush=r.last_flush, pending_rows=r.pending_rows,
                           values_dropped=r.values_dropped)
        return out


def service_for(gateway: Gateway) -> HistoryService | None:
    svc = gateway.service("history")
    return svc if isinstance(svc, HistoryService) else None


# -- hooks --------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"history": HISTORY_SCHEMA}


@hookimpl
def bmsgw_check_config(gateway_config: Config) -> list[str]:
    cfg = gateway_config.section("history")
    return tier_problems(cfg) if cfg["enabled"] else []


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    return [HistoryService(gateway)] if gateway.config.section("history")["enabled"] else []


@hookimpl
def bmsgw_history_query(gateway: Gateway, ref, start: float, end: float,
                        max_points: int) -> list[tuple[float, float | None]] | None:
    """Stored means of one point for the web page and REST (thread-safe: a connection per thread).

    None when history is off or its include/exclude lists leave the point's family out (the web face then
    shows what it kept in memory); an empty list when the point is recorded but nothing is stored yet, and
    for an empty range, without reading the database (the web face asks that way at start)."""
    cfg = gateway.config.section("history")
    spec = gateway.catalog.get(ref.point)
    if not cfg["enabled"] or spec is None or not PointFilter(cfg["include"], cfg["exclude"])(spec):
        return None
    if end <= start:
        return []
    opened_here = service_for(gateway) is None  # no writer: history_for opens the file read-only for us
    db = history_for(gateway)
    if db is None:
        return []  # recording, nothing written yet
    try:
        series = db.query(ref.point, ref.string, ref.cell, ref.channel, start=start, end=end, max_points=max_points)
    finally:
        if opened_here:  # a page polling trends must not pile up open handles
            db.close()
    return list(zip(series.t, series.mean, strict=True))
