"""History: compact rows, roll-ups, retention, restart merge, queries at a resolution chosen from the range,
and the writer running inside the gateway."""
from __future__ import annotations

import math
import random
import sqlite3
import time

import pytest

from gateway.history import history_for, open_history
from gateway.history.db import HistoryDB, HistoryError, decode_vector, encode_vector
from gateway.history.recorder import PointFilter, Recorder
from gateway.points import PointRef, PointSpec, Quality, Reading
from tests.support import GatewayThread, small_bank, write_config

SPECS = {
    "cell.voltage": PointSpec("cell.voltage", "cell", "V", "", 0, scale=0.001),
    "cell.ohmic": PointSpec("cell.ohmic", "cell", "ohm", "", 2, dtype="uint32", scale=0.000001),
    "string.current": PointSpec("string.current", "string", "A", "", 1, dtype="int16", scale=0.1),
    "io.di": PointSpec("io.di", "bank", "", "", 4, kind="state", channels=4),
    "cell.eol_date": PointSpec("cell.eol_date", "cell", "unix_s", "", 23, dtype="uint32", source="derived"),
}
T0 = 1_750_000_000 - 1_750_000_000 % 86400  # a midnight


def feed(rec: Recorder, start: float, seconds: int, step: int = 5, cells: int = 12, dip: tuple = ()):
    rng = random.Random(3)
    for k in range(0, seconds, step):
        t = start + k
        discharging = dip and dip[0] <= k < dip[1]
        batch = [(PointRef("cell.voltage", 1, c),
                  Reading(13.5 + 0.01 * c - (1.0 if discharging else 0.0) + rng.gauss(0, 0.001), Quality.GOOD, t))
                 for c in range(1, cells + 1)]
        batch.append((PointRef("string.current", 1), Reading(-25.0 if discharging else 0.5, Quality.GOOD, t)))
        batch.append((PointRef("string.current", 2), Reading(0.3, Quality.GOOD, t)))
        batch.append((PointRef("cell.voltage", 1, cells + 1), Reading(None, Quality.COMM_FAIL, t)))
        if k % 300 == 0:
            batch += [(PointRef("cell.ohmic", 1, c), Reading(0.004 + 0.0001 * c, Quality.GOOD, t))
                      for c in range(1, cells + 1)]
        rec.add(batch)
        if k % 60 == 0:
            rec.flush(t)


def make(tmp_path, **kw) -> tuple[HistoryDB, Recorder]:
    db = HistoryDB(tmp_path / "h.sqlite", **kw)
    rec = Recorder(db, SPECS, PointFilter(["@measured"], []), raw_interval_s=60, intervals={"string.*": 5})
    return db, rec


def test_vector_encoding_is_compact_and_exact():
    vals = [13500, None, 12000, -5]
    blob = encode_vector(vals)
    assert len(blob) == 1 + 2 * 4  # int16 when it fits
    assert decode_vector(blob) == vals
    big = [4_000_000, None]
    assert len(encode_vector(big)) == 1 + 4 * 2 and decode_vector(encode_vector(big)) == big


def test_raw_and_rollups_hold_what_was_measured(tmp_path):
    db, rec = make(tmp_path)
    feed(rec, T0, 3 * 3600, dip=(3600, 5400))
    rec.flush(T0 + 4 * 3600, final=True)
    now = T0 + 4 * 3600
    raw = db.query("cell.voltage", 1, 3, start=T0, end=T0 + 3 * 3600, resolution="raw", now=now)
    assert raw.tier == "raw" and len(raw) == 180  # one sample a minute
    assert raw.mean[0] == pytest.approx(13.53, abs=0.005) and raw.unit == "V"
    q = db.query("cell.voltage", 1, 3, start=T0, end=T0 + 3 * 3600 - 1, resolution="15m", now=now)
    assert len(q) == 12
    # the discharge shows as a lower mean and as the minimum of the bucket it starts in
    assert q.mean[4] == pytest.approx(12.53, abs=0.005)
    assert q.min[0] == pytest.approx(13.53, abs=0.006)
    h = db.query("cell.voltage", 1, 3, start=T0, end=T0 + 3 * 3600 - 1, resolution="1h", now=now)
    assert h.t == [T0, T0 + 3600, T0 + 7200]
    assert h.mean[1] == pytest.approx(13.03, abs=0.01) and h.min[1] < 12.54 and h.max[1] > 13.52
    # string current: a string-axis series, 5 s raw samples
    cur = db.query("string.current", 1, start=T0 + 3600, end=T0 + 3660, resolution="raw", now=now)
    assert len(cur) == 13 and set(cur.mean) == {-25.0}
    cur2 = db.query("string.current", 2, start=T0, end=T0 + 600, resolution="raw", now=now)
    assert set(cur2.mean) == {0.3}
    # a whole string in one query; the cell that never answered has no data
    cells = db.query_string("cell.voltage", 1, start=T0, end=T0 + 3 * 3600, resolution="1h", now=now)
    assert sorted(cells) == list(range(1, 13))
    assert cells[12].mean[0] == pytest.approx(13.62, abs=0.005)
    ohm = db.query("cell.ohmic", 1, 2, start=T0, end=T0 + 3 * 3600, resolution="raw", now=now)
    assert len(ohm) == 36 and ohm.mean[0] == pytest.approx(0.0042)


def test_resolution_is_chosen_from_the_range(tmp_path):
    db, _ = make(tmp_path)
    now = T0 + 400 * 86400
    assert db.choose_tier(now - 3600, now, now=now).name == "raw"
    assert db.choose_tier(now - 7 * 86400, now, now=now).name == "15m"
    assert db.choose_tier(now - 30 * 86400, now, now=now).name == "1h"
    assert db.choose_tier(now - 365 * 86400, now, now=now).name == "1d"
    # raw data is kept 30 days: an hour two months ago comes from the 15 min tier
    assert db.choose_tier(now - 60 * 86400, now - 60 * 86400 + 3600, now=now).name == "15m"
    assert db.choose_tier(now - 7 * 86400, now, max_points=20_000, now=now).name == "raw"
    assert db.choose_tier(now - 7 * 86400, now, resolution=3600, now=now).name == "1h"
    with pytest.raises(HistoryError, match="unknown resolution"):
        db.choose_tier(now - 10, now, resolution="5m")
    with pytest.raises(HistoryError, match="before start"):
        db.query("cell.voltage", 1, 1, start=now, end=now - 5)


def test_restart_inside_a_bucket_merges_instead_of_losing(tmp_path):
    db, rec = make(tmp_path)
    feed(rec, T0, 600)  # 10 minutes, then a stop: partial buckets written
    rec.flush(T0 + 600, final=True)
    db2 = HistoryDB(tmp_path / "h.sqlite")
    rec2 = Recorder(db2, SPECS, PointFilter(["@measured"], []), raw_interval_s=60)
    feed(rec2, T0 + 600, 600)
    rec2.flush(T0 + 1800, final=True)
    q = db2.query("cell.voltage", 1, 1, start=T0, end=T0 + 899, resolution="15m", now=T0 + 1800)
    assert len(q) == 1
    n = db2.conn().execute("SELECT n FROM roll_900 WHERE b=?", (T0 // 900,)).fetchall()
    assert max(r[0] for r in n) == 180  # both halves of the bucket counted
    assert len(db2.query("cell.voltage", 1, 1, start=T0, end=T0 + 1199, resolution="raw", now=T0)) == 20


def test_retention_deletes_old_rows_per_tier(tmp_path):
    db, rec = make(tmp_path, raw_retention_days=1, tiers=((900, 2), (3600, 3), (86400, 0)))
    feed(rec, T0, 3600, step=30)
    rec.flush(T0 + 3600, final=True)
    assert db.conn().execute("SELECT count(*) FROM raw").fetchone()[0] > 0
    rec.flush(T0 + 86400 + 1)  # the day is over: its daily row is rolled from the hourly ones
    assert db.conn().execute("SELECT count(*) FROM roll_86400").fetchone()[0] > 0
    db.expire(T0 + 1.5 * 86400)
    assert db.conn().execute("SELECT count(*) FROM raw").fetchone()[0] == 0
    assert db.conn().execute("SELECT count(*) FROM roll_900").fetchone()[0] > 0
    db.expire(T0 + 5 * 86400)
    assert db.conn().execute("SELECT count(*) FROM roll_900").fetchone()[0] == 0
    assert db.conn().execute("SELECT count(*) FROM roll_3600").fetchone()[0] == 0
    assert db.conn().execute("SELECT count(*) FROM roll_86400").fetchone()[0] > 0  # kept forever


def test_schema_is_compact(tmp_path):
    db, _ = make(tmp_path)
    sql = " ".join(r[0] for r in db.conn().execute("SELECT sql FROM sqlite_schema WHERE name LIKE 'r%'"))
    assert sql.count("WITHOUT ROWID") == 4
    assert db.conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_derived_families_are_left_out_unless_asked(tmp_path):
    f = PointFilter(["@measured", "cell.ohmic_baseline_deviation"], ["cell.ohmic"])
    assert f(SPECS["cell.voltage"]) and not f(SPECS["cell.ohmic"]) and not f(SPECS["cell.eol_date"])


def test_gateway_records_history_and_counts_writes(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=6),
                        overrides={"history": {"flush_s": 0.3, "raw": {"interval_s": 1}}})
    with GatewayThread(path) as gt:
        gw = gt.gateway
        gt.wait_for(lambda: (gw.store.value(PointRef("gateway.history_writes")) or 0) > 20, timeout=30,
                    what="history writes")
        db = history_for(gw)
        now = time.time()
        s = db.query("cell.voltage", 1, 4, start=now - 300, end=now + 5, resolution="raw")
        assert len(s) >= 1 and 12.0 < s.mean[-1] < 14.5
        assert gw.status()["history"]["values_written"] > 20
    ro = open_history(gw.config, readonly=True)
    cells = ro.query_string("cell.voltage", 1, start=now - 300, end=time.time() + 5, resolution="raw")
    assert sorted(cells) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(sqlite3.OperationalError):
        ro.conn().execute("DELETE FROM raw")


def test_queries_without_a_running_writer_leave_no_file_open(tmp_path):
    """The web face or a command asking a gateway whose history writer is not running (yet) reads the file
    read-only; a page polling trends must not pile up open database handles."""
    import os

    from gateway.cliargs import offline_gateway

    path = write_config(tmp_path, base=small_bank(strings=1, cells=4))
    gw = offline_gateway(str(path))
    open_history(gw.config).close()  # the file exists, nobody writes it
    ref = PointRef("cell.voltage", 1, 2)
    now = time.time()
    assert gw.pm.hook.bmsgw_history_query(gateway=gw, ref=ref, start=now - 3600, end=now, max_points=100) == []
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        assert gw.pm.hook.bmsgw_history_query(gateway=gw, ref=ref, start=now - 3600, end=now, max_points=100) == []
    assert len(os.listdir("/proc/self/fd")) <= before


def test_what_is_recorded_follows_a_filter_change_for_points_already_seen(tmp_path):
    """The recorder finds each point's series once; a new filter (a config reload) applies to points it has
    seen already, both ways; a point whose first readings are not finite gets no series until a finite one."""
    db, rec = make(tmp_path)
    volt, current = PointRef("cell.voltage", 1, 1), PointRef("string.current", 1)

    def write(t, **values):
        rec.add([(ref, Reading(v, Quality.GOOD, t)) for ref, v in ((volt, values.get("volt")),
                                                                   (current, values.get("current")))])

    write(T0, volt=13.0, current=float("nan"))
    assert "string.current" not in {p for p, _ in rec._states}  # a NaN made no series
    rec.set_filter(PointFilter(["@measured"], ["cell.voltage"]))
    write(T0 + 5, volt=14.0, current=2.0)  # the voltage is left out from now on
    rec.set_filter(PointFilter(["@measured"], []))
    write(T0 + 70, volt=15.0, current=3.0)
    rec.flush(T0 + 200, final=True)
    now = T0 + 300
    volts = db.query("cell.voltage", 1, 1, start=T0, end=T0 + 200, resolution="raw", now=now).mean
    currents = db.query("string.current", 1, start=T0, end=T0 + 200, resolution="raw", now=now).mean
    assert volts == [13.0, 15.0] and currents == [2.0, 3.0]


def _plain_add(rec, batch):
    """``Recorder.add`` as it was before the open slot's and bucket's time ranges (every reading's slot and
    bucket found by division): the reference for the differential test below."""
    from gateway.history.recorder import _grow
    for ref, reading in batch:
        value = reading.value
        if reading.quality is not Quality.GOOD or value is None:
            continue
        target = rec._targets.get(ref)
        if target is None:
            if not math.isfinite(value):
                continue
            target = rec._target(ref)
        if not target or not math.isfinite(value):
            continue
        st, idx = target
        iv = round(value / st.scale)
        ts = reading.ts
        slot = int(ts // st.interval)
        if slot != st.slot:
            if slot < st.slot:
                slot = -2
            else:
                rec._emit_raw(st)
                st.slot = slot
        if slot == st.slot:
            _grow(st.values, idx, None)
            st.values[idx] = iv
        if rec.finest:
            bucket = int(ts // rec.finest)
            if bucket != st.bucket:
                if bucket < st.bucket:
                    continue
                rec._emit_roll(st)
                st.bucket = bucket
            for lst, fill in ((st.lo, None), (st.hi, None), (st.total, 0), (st.count, 0)):
                _grow(lst, idx, fill)
            st.lo[idx] = iv if st.lo[idx] is None else min(st.lo[idx], iv)
            st.hi[idx] = iv if st.hi[idx] is None else max(st.hi[idx], iv)
            st.total[idx] += iv
            st.count[idx] += 1
        rec.readings += 1


def test_recording_rows_are_the_ones_of_the_plain_loop(tmp_path):
    """Random readings (in time order, late ones, on slot and bucket edges, bad, NaN, infinite, None, flushes between)
    give the same raw and roll-up rows and the same count through ``add`` as through the plain loop."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    db_a, rec = make(tmp_path / "a")
    db_b, plain = make(tmp_path / "b")
    rng = random.Random(11)
    refs = [PointRef("cell.voltage", 1, c) for c in range(1, 7)] + [PointRef("string.current", 1),
                                                                   PointRef("cell.ohmic", 1, 2)]
    refs += [PointRef("cell.eol_date", 1, 3), PointRef("cell.unknown", 1, 1)]  # not recorded: derived, no family
    t = float(T0)
    rows = []
    for step in range(400):
        t += rng.choice([0.5, 1, 5, 5, 30, 59.999, 60, 301, 900])
        batch = []
        for ref in rng.sample(refs, rng.randint(1, len(refs))):
            ts = rng.choice([t, t - rng.uniform(0, 4), t - 120, math.floor(t / 60) * 60.0, math.floor(t / 900) * 900.0])
            value = rng.choice([13.5 + rng.uniform(-1, 1), math.nan, None, 0.004, -25.0, math.inf, -math.inf,
                                5e12, -5e12])  # (the last two: cell.ohmic stores them beyond 2 ** 62)
            quality = Quality.GOOD if rng.random() < 0.9 else Quality.STALE
            batch.append((ref, Reading(value, quality, ts)))
        rec.add(batch)
        _plain_add(plain, batch)
        if step % 17 == 0:
            rec.flush(t)
            plain.flush(t)
            rows.append(rec.last_commit and (rec.last_commit.raw, rec.last_commit.roll))
            assert rows[-1] == (plain.last_commit and (plain.last_commit.raw, plain.last_commit.roll))
    rec.flush(t, final=True)
    plain.flush(t, final=True)
    assert rec.readings == plain.readings > 500
    for table in ("raw", *(tier.table for tier in db_a.tiers)):
        query = f"SELECT * FROM {table} ORDER BY 1, 2, 3"
        assert db_a.conn().execute(query).fetchall() == db_b.conn().execute(query).fetchall(), table


def test_a_late_slot_opened_after_a_flush_stays_out_of_the_newer_bucket(tmp_path):
    """A flush closes a raw slot, not its bucket; a late reading then opens an older raw slot (of the bucket
    before): readings in that slot are raw samples, not the open bucket's; as the plain loop has it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    db_a, rec = make(tmp_path / "a")
    db_b, plain = make(tmp_path / "b")
    ref = PointRef("cell.voltage", 1, 1)
    start = T0 + 900  # a bucket's first second
    for r in (rec, plain):
        add = rec.add if r is rec else (lambda batch: _plain_add(plain, batch))
        add([(ref, Reading(2.25, Quality.GOOD, start + 10))])
        r.flush(start + 70)  # the slot closes, the bucket stays open
        add([(ref, Reading(2.1, Quality.GOOD, start - 10))])  # late: the slot before, in the bucket before
        add([(ref, Reading(1.9, Quality.GOOD, start - 5))])
        add([(ref, Reading(2.3, Quality.GOOD, start + 20))])
        r.flush(start + 3600, final=True)
    for table in ("raw", *(tier.table for tier in db_a.tiers)):
        query = f"SELECT * FROM {table} ORDER BY 1, 2, 3"
        assert db_a.conn().execute(query).fetchall() == db_b.conn().execute(query).fetchall(), table
    assert db_a.conn().execute(f"SELECT count(*) FROM {db_a.tiers[0].table}").fetchone()[0] == 1
