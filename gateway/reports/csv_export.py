"""CSV export: every stored value of a range (long format), and discharge events (one row per battery)."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import IO

from .data import Progress, ReportContext, fmt_ts

HISTORY_HEADER = ["time_utc", "unix_time", "point", "string", "cell", "channel", "value", "min", "max", "unit",
                  "resolution"]


def export_history(ctx: ReportContext, out: IO[str], strings: Sequence[int] | None = None,
                   points: Sequence[str] | None = None, resolution: str | int | None = "auto",
                   max_points: int = 100_000, progress: Progress | None = None) -> int:
    """Write the history of [start, end] as CSV; returns the rows written.  ``resolution="auto"`` picks the
    finest tier that gives at most ``max_points`` values per point over the range."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HISTORY_HEADER)
    if ctx.history is None:
        return 0
    tier = ctx.history.choose_tier(ctx.start, ctx.end, resolution, max_points, ctx.now)
    units = {s.point: s.unit for s in ctx.history.all_series()}
    rows = 0
    last_point = None
    for t, point, string, cell, channel, mean, lo, hi in ctx.history.iter_rows(
            ctx.start, ctx.end, tier.name, points=points, strings=strings, now=ctx.now):
        if point != last_point:
            last_point = point
            if progress is not None:
                progress(f"{point}: {rows} rows so far")
        w.writerow([fmt_ts(t, True).replace(" UTC", ""), int(t), point, _opt(string), _opt(cell), _opt(channel),
                    _num(mean), _num(lo), _num(hi), units.get(point, ""), tier.name])
        rows += 1
    return rows


def export_discharges(ctx: ReportContext, out: IO[str], strings: Sequence[int] | None = None) -> int:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["event", "string", "start_utc", "duration_s", "mean_current_a", "ah_delivered", "rated_ah",
                "delivered_pct", "capacity_test", "soh_pct", "rank", "cell", "v_before", "v_min", "sag_v"])
    rows = 0
    for s in ctx.strings(list(strings) if strings else None):
        for e in ctx.events(s.id):
            for rank, r in enumerate(e.get("sag", []), 1):
                w.writerow([e["id"], s.id, fmt_ts(e["start"], True).replace(" UTC", ""), round(e["duration_s"]),
                            _num(e["mean_current"]), _num(e["ah"]), e["rated_ah"], _num(e["delivered_pct_of_rating"]),
                            int(bool(e.get("capacity_test"))), _num(e.get("soh_pct")), rank, r["cell"],
                            _num(r.get("v_before")), _num(r["v_min"]), _num(r["sag"])])
                rows += 1
    return rows


def _opt(v) -> str:
    return "" if v is None else str(v)


def _num(v) -> str:
    return "" if v is None else f"{v:.6g}"
