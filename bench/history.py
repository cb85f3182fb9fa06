"""History storage and query figures for the BM-BMS maximum (480 batteries), against a row-per-value baseline.

Fills a database with the series the default config records (raw samples for a day, 15 min roll-ups for 30
days, hourly and daily roll-ups for a simulated year), measures bytes per stored value per tier with SQLite's
dbstat, projects the size of 5 years under the default retention, and times one-year trend queries for one
battery and a whole string.  The baseline is the usual first design, one row per value
``(point_id, ts, value)`` keyed ``(point_id, ts)`` WITHOUT ROWID, filled with the same hourly year for one string.

    .venv/bin/python bench/history.py
"""
from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import Gateway
from gateway.history import open_history
from gateway.history.db import EPOCH, HistoryDB, axis_of, encode_vector
from gateway.history.recorder import PointFilter
from gateway.sim.model import new_unit_ohmic

DAY = 86400
YEAR_DAYS = 365
GB = 1e9


def recorded_series(gw: Gateway) -> list[dict]:
    """The series the default config records: (point, axis, string, width, scale, unit)."""
    cfg = gw.config.section("history")
    keep = PointFilter(cfg["include"], cfg["exclude"])
    out: dict[tuple, dict] = {}
    for e in gw.pointmap.entries:
        if not keep(e.spec):
            continue
        axis = axis_of(e.spec.scope, e.ref.channel)
        key = (e.ref.point, e.ref.string if axis == "cell" else None)
        s = out.setdefault(key, {"point": e.ref.point, "axis": axis, "string": key[1], "width": 0,
                                 "scale": e.spec.scale, "unit": e.spec.unit,
                                 "interval": cfg["raw"]["intervals"].get(e.ref.point, cfg["raw"]["interval_s"])})
        idx = {"cell": e.ref.cell, "string": e.ref.string, "channel": e.ref.channel}.get(axis) or 1
        s["width"] = max(s["width"], idx)
    return list(out.values())


def typical_values(gw: Gateway) -> dict[str, float]:
    """Values of the configured bank (its first string's batteries on float), the magnitudes the encoding stores."""
    s = gw.topology.strings[0]
    n, cells = s.battery.cells_per_unit, s.cells
    unit_float = 2.25 * n
    return {"cell.voltage": unit_float, "cell.temperature": 25.0,
            "cell.ohmic": new_unit_ohmic(s.battery.capacity_ah, n), "cell.emf": 2.14 * n,
            "string.voltage": cells * unit_float, "string.current": 0.0005 * s.battery.capacity_ah,
            "bank.voltage": cells * unit_float}


TYPICAL: dict[str, float] = {}


def typical(point: str) -> float:
    return TYPICAL.get(point, 50.0)


def blob_pool(series: dict, rollup: bool, rng: random.Random, n: int = 24) -> list[bytes]:
    """A few realistic rows per series (the encoding is fixed-width, so a pool gives the true size)."""
    scale = series["scale"] or 1.0
    base = typical(series["point"]) / scale
    out = []
    for _ in range(n):
        means = [round(base * (1 + rng.gauss(0, 0.003))) for _ in range(series["width"])]
        if rollup:
            lows = [m - rng.randint(0, 20) for m in means]
            highs = [m + rng.randint(0, 20) for m in means]
            out.append(encode_vector(lows + means + highs))
        else:
            out.append(encode_vector(means))
    return out


def fill(db: HistoryDB, series: list[dict], end: float) -> dict[str, int]:
    """Raw for a day, 15 min for 30 days, 1 h and 1 d for a year; returns values stored per tier."""
    rng = random.Random(1)
    infos = [(db.series_for(s["point"], s["axis"], s["string"], s["scale"] or 1.0, s["unit"]), s) for s in series]
    values = {}
    c = db.conn()
    # raw: one day
    rows, n = [], 0
    for info, s in infos:
        pool = blob_pool(s, False, rng)
        step = int(s["interval"])
        for k, t in enumerate(range(int(end - DAY) // step * step, int(end), step)):
            rows.append((t - EPOCH, info.sid, pool[k % len(pool)]))
        n += (DAY // step) * s["width"]
    rows.sort()
    c.execute("BEGIN")
    c.executemany("INSERT OR REPLACE INTO raw VALUES (?,?,?)", rows)
    c.execute("COMMIT")
    values["raw"] = n
    for seconds, days in ((900, 30), (3600, YEAR_DAYS), (86400, YEAR_DAYS)):
        rows, n = [], 0
        b1 = int(end // seconds)
        b0 = b1 - days * DAY // seconds
        for info, s in infos:
            pool = blob_pool(s, True, rng)
            for k, b in enumerate(range(b0, b1)):
                rows.append((info.sid, b, 180, pool[k % len(pool)]))
            n += (b1 - b0) * s["width"]
        c.execute("BEGIN")
        c.executemany(f"INSERT OR REPLACE INTO roll_{seconds} VALUES (?,?,?,?)", rows)
        c.execute("COMMIT")
        db.set_meta(f"rolled_{seconds}", str(b1 - 1))  # as the recorder leaves it
        values[f"roll_{seconds}"] = n
    return values


def fill_baseline(path: Path, cells: int, end: float) -> tuple[object, int]:
    import sqlite3

    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE samples(pid INTEGER, ts INTEGER, value REAL, PRIMARY KEY(pid, ts)) WITHOUT ROWID")
    rng = random.Random(2)
    t0 = int(end // 3600 * 3600) - YEAR_DAYS * DAY
    volts = typical("cell.voltage")
    hours = range(t0, t0 + YEAR_DAYS * DAY, 3600)
    rows = [(pid, t, volts + rng.gauss(0, 0.01)) for pid in range(1, cells + 1) for t in hours]
    c.execute("BEGIN")
    c.executemany("INSERT INTO samples VALUES (?,?,?)", rows)
    c.execute("COMMIT")
    return c, len(rows)


def timed(fn, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    gw = Gateway(ROOT / "config.yaml", simulator=False, port_overrides={f"bus{i}": "(bench)" for i in range(1, 9)})
    TYPICAL.update(typical_values(gw))
    cfg = gw.config.section("history")
    series = recorded_series(gw)
    cell_series = [s for s in series if s["axis"] == "cell"]
    batteries = gw.topology.cell_count
    print(f"default config: {batteries} batteries, {len(series)} series recorded "
          f"({len(cell_series)} cell series: {sorted({s['point'] for s in cell_series})})")
    end = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        db = open_history(gw.config).__class__(Path(tmp) / "h.sqlite",
                                               raw_retention_days=cfg["raw"]["retention_days"],
                                               tiers=[(t["seconds"], t["retention_days"]) for t in cfg["tiers"]],
                                               raw_interval_s=cfg["raw"]["interval_s"], max_points=cfg["max_points"])
        t = time.perf_counter()
        values = fill(db, series, end)
        fill_s = time.perf_counter() - t
        sizes = db.table_bytes()
        print(f"filled in {fill_s:.1f} s: {sum(values.values()) / 1e6:.1f} M values, "
              f"{sum(sizes.values()) / 1e6:.0f} MB")
        per_value = {k: sizes.get(k, 0) / v for k, v in values.items()}
        days_filled = {"raw": 1, "roll_900": 30, "roll_3600": YEAR_DAYS, "roll_86400": YEAR_DAYS}
        per_day = {k: sizes.get(k, 0) / days_filled[k] for k in values}
        retention = {"raw": cfg["raw"]["retention_days"]}
        retention.update({f"roll_{t['seconds']}": t["retention_days"] for t in cfg["tiers"]})
        horizon = 5 * 365.25
        projected = {k: per_day[k] * min(retention.get(k, horizon) or horizon, horizon) for k in values}

        # baseline: one row per value, one string's cell voltages for the same hourly year
        base_conn, base_rows = fill_baseline(Path(tmp) / "b.sqlite", 120, end)
        base_bytes = dict(base_conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        base_per_value = base_bytes["samples"] / base_rows
        print(f"\n{'tier':<12}{'bytes/value':>12}{'vs row/value':>14}{'MB/day':>9}{'kept days':>10}{'5-year MB':>10}")
        for k in values:
            name = "raw" if k == "raw" else k.replace("roll_", "") + " s"
            print(f"{name:<12}{per_value[k]:>12.2f}{base_per_value / per_value[k]:>13.1f}x{per_day[k] / 1e6:>9.2f}"
                  f"{retention.get(k, 0):>10.0f}{projected[k] / 1e6:>10.0f}")
        print(f"(a roll-up value is one point's min+mean+max for a bucket)\n"
              f"row-per-value baseline: {base_per_value:.1f} bytes/value ({base_rows} rows)")

        # one-year trend queries (auto resolution from the range, and forced hourly)
        year0 = end - YEAR_DAYS * DAY
        q = {}
        q["cell auto"] = timed(lambda: db.query("cell.voltage", 2, 37, start=year0, end=end, now=end))
        q["string auto"] = timed(lambda: db.query_string("cell.voltage", 2, start=year0, end=end, now=end))
        q["cell 1h"] = timed(lambda: db.query("cell.voltage", 2, 37, start=year0, end=end, resolution="1h", now=end), 7)
        q["string 1h"] = timed(lambda: db.query_string("cell.voltage", 2, start=year0, end=end, resolution="1h",
                                                       now=end), 5)
        tier = db.choose_tier(year0, end, now=end).name
        n_cell = len(db.query("cell.voltage", 2, 37, start=year0, end=end, resolution="1h", now=end))
        b_cell = timed(lambda: base_conn.execute("SELECT ts, value FROM samples WHERE pid=37 AND ts BETWEEN ? AND ?",
                                                 (int(year0), int(end))).fetchall(), 7)
        b_string = timed(lambda: base_conn.execute("SELECT pid, ts, value FROM samples WHERE pid BETWEEN 1 AND 120 "
                                                   "AND ts BETWEEN ? AND ?", (int(year0), int(end))).fetchall(), 5)
        print(f"\none-year trend query, median ms (auto resolution = {tier}; 1h = {n_cell} points per battery):")
        print(f"  one battery:  auto {q['cell auto']:7.1f}   1h {q['cell 1h']:7.1f}   row-per-value 1h "
              f"{b_cell:7.1f}  ({b_cell / q['cell 1h']:.1f}x)")
        print(f"  whole string: auto {q['string auto']:7.1f}   1h {q['string 1h']:7.1f}   row-per-value 1h "
              f"{b_string:7.1f}  ({b_string / q['string 1h']:.1f}x)")
        db.close()
        base_conn.close()

    total = sum(projected.values())
    analytics_daily = batteries * 5 * 365.25 * 120  # daily aggregate rows of the analytics state, ~120 B each
    print(f"\nanalytics state (daily aggregates per battery, 5 years): about {analytics_daily / 1e6:.0f} MB")
    print(f"projected history for 5 years, {batteries} batteries, default retention: {total / GB:.2f} GB "
          f"(limit 2 GB; {2 * GB / total:.1f}x headroom)")


if __name__ == "__main__":
    main()
