"""The bank as JSON-able data, read from the point store through the point map (no hard-coded point lists)."""
from __future__ import annotations

import math
from collections import defaultdict

from gateway.pointmap import MappedPoint
from gateway.points import PointRef, Quality, Reading


def decimals(scale: float) -> int:
    return max(0, min(9, -math.floor(math.log10(scale)))) if 0 < scale < 1 else 0


def point_value(entry: MappedPoint, reading: Reading) -> dict:
    spec = entry.spec
    value = reading.value
    if value is not None:
        if not math.isfinite(value):
            value = None
        elif spec.scale < 1:
            value = round(value, decimals(spec.scale))
        elif value == int(value):
            value = int(value)
    out = {"value": value, "unit": spec.unit, "quality": reading.quality.value, "ts": round(reading.ts, 3)}
    if spec.states and value is not None:
        out["state"] = dict(spec.states).get(int(value), str(int(value)))
    return out


class BankView:
    """Indexes of the point map by string and cell, built once per gateway."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.topology = gateway.topology
        self.store = gateway.store
        self.by_string: dict[int, list[MappedPoint]] = defaultdict(list)
        self.by_cell: dict[tuple[int, int], list[MappedPoint]] = defaultdict(list)
        self.bank: list[MappedPoint] = []
        self.families: dict[str, object] = {}
        for e in gateway.pointmap:
            self.families[e.spec.id] = e.spec
            if e.spec.scope == "cell":
                self.by_cell[(e.ref.string, e.ref.cell)].append(e)
            elif e.spec.scope == "string":
                self.by_string[e.ref.string].append(e)
            elif e.spec.scope == "bank":
                self.bank.append(e)
        # what may be written (Gateway.write decides whether it is carried out): commands and writable points,
        # by their JSON path, which is also their REST path under /api/v1/points/
        self.writable: dict[str, MappedPoint] = {
            e.json_path.lstrip("/"): e for e in (*gateway.pointmap.commands,
                                                 *(e for e in gateway.pointmap if e.spec.writable))}

    def string_ids(self) -> list[int]:
        return [s.id for s in self.topology.strings]

    def has_string(self, sid: int) -> bool:
        return any(s.id == sid for s in self.topology.strings)

    def has_cell(self, sid: int, cell: int) -> bool:
        return any(s.id == sid and 1 <= cell <= s.cells for s in self.topology.strings)

    def _points(self, entries: list[MappedPoint]) -> dict:
        out = {}
        for e in entries:
            r = self.store.get(e.ref)
            if r is not None:
                out[e.spec.name] = point_value(e, r)
        return out

    def string(self, sid: int) -> dict:
        s = self.topology.string(sid)
        b = s.battery
        return {"id": s.id, "name": s.name, "cells": s.cells,
                "battery": {"model": b.model, "nominal_voltage": b.nominal_voltage, "capacity_ah": b.capacity_ah,
                            "chemistry": b.chemistry},
                "points": self._points(self.by_string.get(sid, []))}

    def strings(self) -> list[dict]:
        return [self.string(s.id) for s in self.topology.strings]

    def cell(self, sid: int, cell: int) -> dict:
        return {"string": sid, "cell": cell, "points": self._points(self.by_cell.get((sid, cell), []))}

    def cells(self, sid: int) -> list[dict]:
        return [self.cell(sid, c) for c in range(1, self.topology.string(sid).cells + 1)]

    def io(self) -> list[dict]:
        out = []
        for e in self.bank:
            r = self.store.get(e.ref)
            if r is None:
                continue
            out.append({"point": e.spec.id, "channel": e.ref.channel, "description": e.spec.description,
                        **point_value(e, r)})
        return out

    def commands(self, string: int | None = None) -> list[dict]:
        """The writable points a module here carries out (of one string, or the gateway's and the bank's when
        ``string`` is 0), with what they take and the least role that may write them."""
        owners = self.gateway.commands()
        out = []
        for path, e in self.writable.items():
            spec, cmd = e.spec, owners.get(e.spec.id)
            if cmd is None or (string is not None and (e.ref.string or 0) != string):
                continue
            item = {"path": path, "point": spec.id, **e.ref.keys(), "description": spec.description,
                    "role": cmd.role, "modbus_register": e.address}
            if spec.states:
                item["values"] = {str(v): label for v, label in spec.states}
            elif spec.valid_range:
                item["range"] = list(spec.valid_range)
            out.append(item)
        return out

    def resolve(self, point: str, string: int | None, cell: int | None, channel: int | None) -> MappedPoint | None:
        """The mapped point for API parameters; ``point`` may be a family id or, with string/cell, its name."""
        candidates = [point]
        if cell is not None:
            candidates.append(f"cell.{point}")
        elif string is not None:
            candidates.append(f"string.{point}")
        for pid in candidates:
            entry = self.gateway.pointmap.by_ref.get(PointRef(pid, string, cell, channel))
            if entry is not None:
                return entry
        return None

    def series_families(self, scope: str) -> list[dict]:
        """Families of a scope a trend can show (gauges), for the trend page's picker."""
        seen = {}
        for e in self.gateway.pointmap:
            if e.spec.scope == scope and e.spec.kind == "gauge" and e.spec.id not in seen:
                seen[e.spec.id] = {"id": e.spec.id, "name": e.spec.name, "unit": e.spec.unit,
                                   "description": e.spec.description}
        return list(seen.values())


# the values of a string's data table, by point name (cell.<name>); ohmic values in ohm as the store has them
TABLE_POINTS = ("voltage", "temperature", "ohmic", "ohmic_baseline", "ohmic_baseline_deviation",
                "ohmic_average_deviation", "voltage_average_deviation", "soh", "eol_date", "eol_date_early",
                "eol_date_late")
MEASURED = ("voltage", "temperature", "ohmic")
THRESHOLD_DEFAULTS = {"warning_pct": 20.0, "replace_pct": 30.0, "critical_pct": 50.0}
VERDICTS = ("good", "warning", "replace", "critical", "no baseline")


def verdict(deviation_pct: float | None, thresholds: dict) -> str:
    """The IEEE 1188 verdict of an ohmic rise over the baseline, with the analytics' thresholds."""
    if deviation_pct is None:
        return "no baseline"
    if deviation_pct >= thresholds["critical_pct"]:
        return "critical"
    if deviation_pct >= thresholds["replace_pct"]:
        return "replace"
    if deviation_pct >= thresholds["warning_pct"]:
        return "warning"
    return "good"


class BatteryTable:
    """A string's batteries as rows (B-TEK's data table), from the point store: what the sensors read, what the
    analytics derive (baseline deviation, SOH, forecast dates, diagnosis) and the alarm engine's level."""

    def __init__(self, view: BankView) -> None:
        self.view = view
        self._entries: dict[int, list[tuple[int, dict[str, MappedPoint]]]] = {}  # per string, built once

    def thresholds(self) -> dict[str, float]:
        section = self.view.gateway.config.section("analytics") or {}
        found = section.get("thresholds") or {}
        return {k: float(found.get(k, v)) for k, v in THRESHOLD_DEFAULTS.items()}

    def _cell_entries(self, sid: int) -> list[tuple[int, dict[str, MappedPoint]]]:
        found = self._entries.get(sid)
        if found is None:
            found = self._entries[sid] = [
                (c, {e.spec.name: e for e in self.view.by_cell.get((sid, c), [])})
                for c in range(1, self.view.topology.string(sid).cells + 1)]
        return found

    def rows(self, sid: int, only: int | None = None) -> list[dict]:
        """Every battery's row (or battery ``only``'s)."""
        th = self.thresholds()
        get = self.view.store.get
        out = []
        for c, entries in self._cell_entries(sid):
            if only is not None and c != only:
                continue
            row: dict = {"cell": c, "alarm_level": None}
            stale = False
            for name in TABLE_POINTS:
                e = entries.get(name)
                r = get(e.ref) if e is not None else None
                value = r.value if r is not None and r.value is not None and math.isfinite(r.value) else None
                if name in MEASURED and (r is None or r.quality is not Quality.GOOD):
                    stale = True
                row[name] = value
            for name, labelled in (("alarm_level", "alarm"), ("diagnosis", "diagnosis")):
                e = entries.get(name)
                r = get(e.ref) if e is not None else None
                if e is None or r is None or r.value is None:
                    row[labelled] = None
                    continue
                row[labelled] = dict(e.spec.states).get(int(r.value), str(int(r.value))) if e.spec.states else r.value
                if name == "alarm_level":
                    row["alarm_level"] = int(r.value)
            row["verdict"] = verdict(row["ohmic_baseline_deviation"], th)
            row["stale"] = stale
            out.append(row)
        return out


CSV_COLUMNS = (
    ("string", "string", None), ("battery", "cell", None), ("voltage_V", "voltage", 3),
    ("temperature_C", "temperature", 1), ("ohmic_mOhm", "ohmic", 4), ("baseline_mOhm", "ohmic_baseline", 4),
    ("ohmic_vs_baseline_pct", "ohmic_baseline_deviation", 1), ("ohmic_vs_string_avg_pct", "ohmic_average_deviation", 1),
    ("voltage_vs_string_avg_V", "voltage_average_deviation", 3), ("soh_pct", "soh", 1),
    ("replace_by", "eol_date", "date"), ("replace_early", "eol_date_early", "date"),
    ("replace_late", "eol_date_late", "date"), ("verdict", "verdict", None), ("alarm", "alarm", None),
    ("diagnosis", "diagnosis", None), ("years_in_service", "age_years", 2),
)


def table_csv(sid: int, rows: list[dict]) -> str:
    """The data table as CSV (milliohm for the ohmic values, ISO dates, empty where there is no value)."""
    import csv
    import datetime as dt
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([title for title, _, _ in CSV_COLUMNS])
    for row in rows:
        out: list = []
        for _, key, fmt in CSV_COLUMNS:
            value = sid if key == "string" else row.get(key)
            if value is None:
                out.append("")
            elif fmt == "date":
                out.append(dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d"))
            elif isinstance(fmt, int):
                out.append(f"{value * (1000 if key in ('ohmic', 'ohmic_baseline') else 1):.{fmt}f}")
            else:
                out.append(value)
        w.writerow(out)
    return buf.getvalue()


def predicted_curve(table: BatteryTable, sources, sid: int, cell: int, now: float, max_points: int = 400) -> dict:
    """One battery's predicted curve: its measured ohmic values (the history), the analytics' fit of their rise
    over the baseline and its extrapolation to the replacement threshold, with the early-late range."""
    from gateway.analytics.forecast import YEAR_S, Fit

    gw = table.view.gateway
    section = gw.config.section("analytics") or {}
    window_days = float((section.get("forecast") or {}).get("window_days", 365))
    th = table.thresholds()
    row = table.rows(sid, only=cell)[0]
    base = row["ohmic_baseline"]
    source, samples = sources.history(PointRef("cell.ohmic", sid, cell), now - window_days * 86400.0, now, max_points)
    out: dict = {
        "string": sid, "cell": cell, "unit": "ohm", "now": now, "thresholds": th, "baseline": base,
        "replace_level": base * (1 + th["replace_pct"] / 100) if base else None,
        "critical_level": base * (1 + th["critical_pct"] / 100) if base else None,
        "eol": row["eol_date"], "early": row["eol_date_early"], "late": row["eol_date_late"],
        "verdict": row["verdict"], "deviation_pct": row["ohmic_baseline_deviation"], "ohmic": row["ohmic"],
        "source": None, "model": None, "fitted": None, "fit": [], "extrapolation": [],
        "history_source": source,
        "measured": [{"t": round(t, 3), "v": v} for t, v in samples if v is not None],
    }
    fc = sources.forecast(sid, cell)
    if fc is None:
        return out
    out["source"], out["model"], out["fitted"] = fc.get("source"), fc.get("model"), fc.get("ts")
    params = fc.get("fit")
    if not base or not isinstance(params, dict) or fc.get("ts") is None:
        return out
    try:
        fit = Fit(str(params["model"]), float(params["c"]), float(params["b"]), float(params.get("k", 0.0)), 0.0,
                  float(params.get("m", 0.0)))
    except (KeyError, TypeError, ValueError):
        return out
    fitted = float(fc["ts"])
    first = out["measured"][0]["t"] if out["measured"] else fitted - window_days * 86400.0
    ends = [t for t in (out["late"], out["eol"]) if t is not None]
    end = max(ends) if ends else fitted + float((section.get("forecast") or {}).get("horizon_years", 3)) * YEAR_S
    cap = base * (1 + 1.5 * th["critical_pct"] / 100)  # an exponential rise stops being drawn well past the limits

    def curve(a: float, b: float, n: int) -> list[dict]:
        pts = []
        for k in range(n + 1):
            t = a + (b - a) * k / n
            try:
                v = base * (1 + fit.value((t - fitted) / YEAR_S) / 100)
            except OverflowError:
                break
            if not math.isfinite(v):
                break
            pts.append({"t": round(t, 3), "v": v})
            if v > cap:
                break
        return pts

    out["fit"] = curve(min(first, fitted), fitted, 60)
    if end > fitted:
        out["extrapolation"] = curve(fitted, end, 60)
    return out
