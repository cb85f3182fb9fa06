"""PDF reports with reportlab: one section per string (bar charts, trends, alarms, IEEE 1188 items, forecasts)
and a discharge-event report (batteries ranked by voltage sag, delivered Ah against the rating)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.flowables import Flowable

from ..strings.states import string_states
from .data import Progress, ReportContext, fmt_ts

if TYPE_CHECKING:
    from ..topology import StringConfig

WIDTH = A4[0] - 36 * mm
_STYLES = getSampleStyleSheet()
H1, H2, BODY = _STYLES["Title"], _STYLES["Heading2"], _STYLES["BodyText"]
SMALL = ParagraphStyle("small", parent=BODY, fontSize=8, leading=10)
_TABLE = TableStyle([("FONT", (0, 0), (-1, -1), "Helvetica", 8), ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
                     ("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                     ("VALIGN", (0, 0), (-1, -1), "TOP")])
_OK, _WARN, _BAD = colors.HexColor("#3a7d44"), colors.HexColor("#e0a100"), colors.HexColor("#c0392b")


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}{(' ' + unit) if unit else ''}"


def _table(rows: list[list], widths: Sequence[float] | None = None) -> Table:
    wrapped = [[Paragraph(str(c), SMALL) if isinstance(c, str) and len(c) > 40 else c for c in row] for row in rows]
    t = Table(wrapped, colWidths=widths, repeatRows=1)
    t.setStyle(_TABLE)
    return t


def bar_chart(values: dict[int, float], title: str, unit: str, colour=None, height: float = 55 * mm,
              reference: float | None = None) -> Drawing:
    """One bar per battery; ``colour(cell, value)`` picks each bar's colour."""
    d = Drawing(WIDTH, height)
    d.add(String(0, height - 10, f"{title} ({unit})" if unit else title, fontName="Helvetica-Bold", fontSize=9))
    if not values:
        d.add(String(0, height / 2, "no data in this period", fontSize=8))
        return d
    cells = sorted(values)
    data = [values[c] for c in cells]
    chart = VerticalBarChart()
    # types-reportlab declares chart geometry as int; reportlab takes any number of points
    chart.x, chart.y, chart.width, chart.height = 30, 18, WIDTH - 40, height - 34  # type: ignore[assignment]
    chart.data = [data]
    lo, hi = min(data), max(data)
    pad = (hi - lo) * 0.15 or abs(hi) * 0.02 or 1.0
    chart.valueAxis.valueMin = lo - pad if lo > 0 and (lo - pad) > 0 and (hi - lo) < 0.5 * hi else min(0.0, lo - pad)
    chart.valueAxis.valueMax = hi + pad
    chart.valueAxis.labels.fontSize = 7
    chart.categoryAxis.categoryNames = [str(c) if (c == 1 or c % 10 == 0 or len(cells) <= 24) else "" for c in cells]
    chart.categoryAxis.labels.fontSize = 6
    chart.bars.strokeWidth = 0
    chart.barSpacing = 0.5  # type: ignore[assignment]  # a float too (see above)
    chart.groupSpacing = 1 if len(cells) > 60 else 3
    chart.bars[0].fillColor = _OK
    if colour is not None:
        for i, c in enumerate(cells):
            chart.bars[(0, i)].fillColor = colour(c, values[c])
    d.add(chart)
    return d


def line_chart(series: list[tuple[str, list[float], list[float]]], start: float, end: float, title: str, unit: str,
               height: float = 50 * mm) -> Drawing:
    """Lines over the report period; x in days from ``start``."""
    d = Drawing(WIDTH, height)
    d.add(String(0, height - 10, f"{title} ({unit})" if unit else title, fontName="Helvetica-Bold", fontSize=9))
    series = [(name, t, v) for name, t, v in series if t]
    if not series:
        d.add(String(0, height / 2, "no data in this period", fontSize=8))
        return d
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 40, 20, WIDTH - 120, height - 36  # type: ignore[assignment]  # int in the stubs
    plot.data = [[((ti - start) / 86400.0, vi) for ti, vi in zip(t, v, strict=True)] for _, t, v in series]
    span_days = max((end - start) / 86400.0, 1e-3)
    plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = 0.0, span_days
    step = _nice_step(span_days / 6)
    if span_days > 2:
        plot.xValueAxis.labelTextFormat = lambda x: fmt_ts(start + x * 86400.0)[5:]
    else:
        step = _nice_step(span_days * 24 / 6) / 24  # hours
        plot.xValueAxis.labelTextFormat = lambda x: fmt_ts(start + x * 86400.0, True)[11:16]
    plot.xValueAxis.valueStep = step
    plot.xValueAxis.labels.fontSize = 7
    plot.yValueAxis.labels.fontSize = 7
    vals = [v for _, _, vs in series for v in vs]
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.01 or 1.0
    plot.yValueAxis.valueMin, plot.yValueAxis.valueMax = lo - pad, hi + pad
    palette = [colors.HexColor(c) for c in ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")]
    for i, (name, _, _) in enumerate(series):
        plot.lines[i].strokeColor = palette[i % len(palette)]
        plot.lines[i].strokeWidth = 1
        d.add(String(WIDTH - 75, height - 24 - 10 * i, name, fontSize=7, fillColor=palette[i % len(palette)]))
    d.add(plot)
    return d


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _deviation_colour(warn: float, alarm: float):
    def pick(_cell, value):
        if value is None:
            return colors.lightgrey
        return _BAD if value >= alarm else _WARN if value >= warn else _OK
    return pick


def _page(canvas, doc) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica", 7)
    canvas.drawString(18 * mm, 10 * mm, doc.title)
    canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"page {doc.page}")
    canvas.restoreState()


def string_report(ctx: ReportContext, strings: list[int] | None, out_path: str, progress: Progress) -> int:
    """The periodic report, one section per string.  Returns the number of strings reported."""
    cfg = ctx.gateway.config.section("analytics")
    th = cfg["thresholds"]
    story: list[Flowable] = []
    selected = ctx.strings(strings)
    for k, s in enumerate(selected):
        progress(f"string {s.id}: reading history and analytics ({k + 1}/{len(selected)})")
        if k:
            story.append(PageBreak())
        story += _string_section(ctx, s, th)
    title = f"bmsgw battery report, {ctx.site}, {fmt_ts(ctx.start)} to {fmt_ts(ctx.end)}"
    doc = SimpleDocTemplate(out_path, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=15 * mm,
                            bottomMargin=18 * mm, title=title, author="bmsgw")
    progress("laying out the PDF")
    doc.build(story, onFirstPage=_page, onLaterPages=_page)
    return len(selected)


def _string_section(ctx: ReportContext, s: StringConfig, th: dict[str, Any]) -> list[Flowable]:
    """One string's pages: the summary, the bar charts, the trends, the period's alarms and discharges, the
    IEEE 1188 items, the replacement forecast with its diagnosis, and the replacements."""
    sid = s.id
    snap = {name: ctx.cell_snapshot(f"cell.{name}", sid)
            for name in ("voltage", "temperature", "ohmic", "ohmic_baseline_deviation")}
    events = ctx.events(sid)
    story: list[Flowable] = [Paragraph(f"{s.name}: battery report", H1),
             Paragraph(f"{ctx.site} &nbsp; | &nbsp; period {fmt_ts(ctx.start, True)} to {fmt_ts(ctx.end, True)} "
                       f"&nbsp; | &nbsp; {s.cells} x {s.battery.model} ({s.battery.nominal_voltage:g} V, "
                       f"{s.battery.capacity_ah:g} Ah) &nbsp; | &nbsp; generated {fmt_ts(ctx.now, True)}", SMALL),
             Spacer(1, 4 * mm)]
    story += _summary(ctx, s, snap, len(events))
    story += _bar_charts(s, snap, th)
    story += _trends(ctx, sid)
    story += _alarms(ctx)
    story += _discharges(events)
    story += _maintenance(ctx, s)
    story += _forecasts(ctx, ctx.forecasts(sid), th)
    story += _replacements(ctx, sid)
    return story


def _summary(ctx: ReportContext, s: StringConfig, snap: dict[str, dict], discharges: int) -> list[Flowable]:
    sid = s.id
    volts, temps, ohms = snap["voltage"], snap["temperature"], snap["ohmic"]
    baselines = {k: b for k, b in ctx.baselines().items() if k[0] == sid}
    state = ctx.string_value("string.state", sid)
    since = ctx.string_value("string.since_full_charge", sid)
    summary = [["", "at the end of the period", "", ""],
               ["SOC", _fmt(ctx.string_value("string.soc", sid), "%", 1),
                "SOH", _fmt(ctx.string_value("string.soh", sid), "%", 1)],
               ["state", string_states().name(state),
                "since full charge", _fmt(since / 3600 if since is not None else None, "h", 1)],
               ["string voltage", _fmt(ctx.string_value("string.voltage", sid), "V", 1),
                "string current", _fmt(ctx.string_value("string.current", sid), "A", 1)],
               ["battery voltage min / avg / max",
                " / ".join(_fmt(f(volts.values()) if volts else None, "", 3) for f in (min, _avg, max)) + " V",
                "hottest negative post", _fmt(max(temps.values()) if temps else None, "C", 1)],
               ["ohmic average", _fmt(_avg(ohms.values()) * 1000 if ohms else None, "mOhm", 3),
                "baselines taken", f"{len(baselines)} of {s.cells}"],
               ["discharges in the period", str(discharges),
                "alarms in the period", "no alarm log" if ctx.alarms is None else str(len(ctx.alarms))]]
    return [_table(summary, [45 * mm, 45 * mm, 40 * mm, 44 * mm]), Spacer(1, 4 * mm)]


def _bar_charts(s: StringConfig, snap: dict[str, dict], th: dict[str, Any]) -> list[Flowable]:
    volts, devs = snap["voltage"], snap["ohmic_baseline_deviation"]
    avg_v = _avg(volts.values()) if volts else None
    story: list[Flowable] = [
        bar_chart(volts, "Battery voltage", "V", colour=_voltage_colour(avg_v, s.battery.nominal_voltage)),
        bar_chart(snap["temperature"], "Negative-post temperature", "C"),
        bar_chart({c: v * 1000 for c, v in snap["ohmic"].items()}, "Ohmic value", "mOhm")]
    if devs:
        story.append(bar_chart(devs, "Ohmic change from the IEEE 1188 baseline", "%",
                               colour=_deviation_colour(th["warning_pct"], th["replace_pct"])))
    else:
        story.append(Paragraph("Ohmic change from baseline: no baselines yet (IEEE 1188: taken after the "
                               "settling period); no verdict without one.", SMALL))
    return story


def _trends(ctx: ReportContext, sid: int) -> list[Flowable]:
    story: list[Flowable] = [Paragraph("Trends over the period", H2)]
    for title, unit, items in (
            ("String voltage and current", "V, A", [("voltage", "string.voltage"), ("current", "string.current")]),
            ("Battery voltage: lowest, average, highest", "V", [("min", "string.cell_voltage_min"),
                                                                 ("avg", "string.cell_voltage_avg"),
                                                                 ("max", "string.cell_voltage_max")]),
            ("Hottest negative post", "C", [("max", "string.cell_temperature_max")]),
            ("Average ohmic value", "mOhm", [("avg", "string.cell_ohmic_avg")]),
            ("State of charge", "%", [("SOC", "string.soc")])):
        lines = []
        for name, point in items:
            tr = ctx.trend(point, sid)
            if tr is not None:
                factor = 1000.0 if unit == "mOhm" else 1.0
                lines.append((name, tr.t, [v * factor for v in tr.mean]))
        if title.startswith("String voltage") and len(lines) == 2:  # different scales: two charts
            story.append(line_chart(lines[:1], ctx.start, ctx.end, "String voltage", "V"))
            story.append(line_chart(lines[1:], ctx.start, ctx.end, "String current", "A"))
        else:
            story.append(line_chart(lines, ctx.start, ctx.end, title, unit))
    return story


def _alarms(ctx: ReportContext) -> list[Flowable]:
    story: list[Flowable] = [Paragraph("Alarms of the period", H2)]
    if ctx.alarms is None:
        story.append(Paragraph("no alarm log: no plugin keeps an alarm log on this gateway", SMALL))
    elif not ctx.alarms:
        story.append(Paragraph("no alarms in this period", SMALL))
    else:
        rows = [["raised", "cleared", "severity", "alarm"]]
        for a in ctx.alarms[:200]:
            rows.append([fmt_ts(a.get("raised"), True), fmt_ts(a.get("cleared"), True), a.get("severity", ""),
                         str(a.get("message", ""))])
        story.append(_table(rows, [32 * mm, 32 * mm, 18 * mm, 92 * mm]))
        if len(ctx.alarms) > 200:
            story.append(Paragraph(f"... and {len(ctx.alarms) - 200} more (CSV export has them all)", SMALL))
    return story


def _discharges(events: list[dict]) -> list[Flowable]:
    story: list[Flowable] = [Paragraph("Discharges and capacity tests", H2)]
    if not events:
        return [*story, Paragraph("no discharge in this period", SMALL)]
    rows = [["start", "duration", "mean current", "Ah delivered", "of rating", "lowest battery", "capacity test"]]
    for e in events:
        cap = (f"SOH {e['soh_pct']:.1f} % ({e['capacity_ah']:.1f} Ah at 25 C)" if e.get("capacity_test")
               else e.get("not_a_capacity_test", "-"))
        rows.append([fmt_ts(e["start"], True), f"{e['duration_s'] / 60:.0f} min", _fmt(e["mean_current"], "A", 1),
                     _fmt(e["ah"], "Ah", 1), _fmt(e["delivered_pct_of_rating"], "%", 0),
                     _fmt(e.get("min_voltage"), "V", 2), cap])
    return [*story, _table(rows, [30 * mm, 16 * mm, 20 * mm, 20 * mm, 14 * mm, 20 * mm, 54 * mm])]


def _maintenance(ctx: ReportContext, s: StringConfig) -> list[Flowable]:
    rows = [["item", "every", "status", "detail"]]
    for item in ctx.maintenance(s):
        rows.append([item["title"], f"{item['interval_days']} d", item["status"], item.get("detail", "")])
    return [Paragraph("IEEE 1188 maintenance", H2), _table(rows, [75 * mm, 14 * mm, 20 * mm, 65 * mm])]


def _forecasts(ctx: ReportContext, forecasts: dict, th: dict[str, Any]) -> list[Flowable]:
    story: list[Flowable] = [Paragraph("Replacement forecast and diagnosis", H2)]
    horizon = ctx.gateway.config.section("analytics")["forecast"]["horizon_years"]
    dated = sorted(((k[1], f) for k, f in forecasts.items() if f.get("eol_ts")), key=lambda kv: kv[1]["eol_ts"])
    if dated:
        rows = [["battery", "replace by", "range", f"+{th['critical_pct']:g} %", "from", "trend", "diagnosis"]]
        for cell, f in dated:
            rows.append([str(cell), fmt_ts(f["eol_ts"]), f"{fmt_ts(f.get('early_ts'))} .. {fmt_ts(f.get('late_ts'))}",
                         fmt_ts(f.get("critical_ts")), f.get("source", "-"),
                         _fmt(f.get("slope_pct_per_year"), "%/y", 1), (f.get("diagnosis") or {}).get("label", "-")])
        story.append(_table(rows, [14 * mm, 22 * mm, 44 * mm, 22 * mm, 14 * mm, 18 * mm, 40 * mm]))
    else:
        story.append(Paragraph(f"no battery is forecast to need replacing within {horizon:g} years", SMALL))
    troubled = [(k[1], f["diagnosis"]) for k, f in sorted(forecasts.items())
                if (f.get("diagnosis") or {}).get("findings")]
    if troubled:
        rows = [["battery", "likely cause", "evidence"]]
        for cell, diag in troubled:
            for finding in diag["findings"]:
                rows.append([str(cell), finding["label"], "; ".join(finding["evidence"])])
        story += [Spacer(1, 3 * mm), _table(rows, [14 * mm, 32 * mm, 128 * mm])]
    else:
        story.append(Paragraph("all batteries healthy: no deterioration pattern found", SMALL))
    return story


def _replacements(ctx: ReportContext, sid: int) -> list[Flowable]:
    reps = ctx.replacements(sid)
    if not reps:
        return []
    rows = [["date", "battery", "reason", "old baseline"]]
    for r in reps:
        rows.append([fmt_ts(r.ts), str(r.cell), r.reason, _fmt(r.old_baseline * 1000 if r.old_baseline else None,
                                                               "mOhm", 3)])
    return [Paragraph("Replacements in the period", H2), _table(rows, [24 * mm, 16 * mm, 104 * mm, 30 * mm])]


def _avg(values) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")


def _voltage_colour(avg: float | None, nominal: float):
    warn = 0.2 * nominal / 12.0
    alarm = 0.4 * nominal / 12.0

    def pick(_cell, value):
        if avg is None:
            return _OK
        dev = abs(value - avg)
        return _BAD if dev >= alarm else _WARN if dev >= warn else _OK
    return pick


def discharge_report(ctx: ReportContext, strings: list[int] | None, out_path: str, progress: Progress,
                     event_id: int | None = None) -> int:
    """One section per discharge in the period (or just ``event_id``).  Returns the number of events."""
    story: list[Flowable] = []
    count = 0
    for s in ctx.strings(strings):
        for e in ctx.events(s.id):
            if event_id is not None and e["id"] != event_id:
                continue
            count += 1
            progress(f"discharge {e['id']} of string {s.id}")
            if story:
                story.append(PageBreak())
            story += _event_section(ctx, s, e)
    if not count:
        story.append(Paragraph("No discharge event in this period", H1))
        story.append(Paragraph(f"{ctx.site}: {fmt_ts(ctx.start, True)} to {fmt_ts(ctx.end, True)}", BODY))
    title = f"bmsgw discharge report, {ctx.site}"
    doc = SimpleDocTemplate(out_path, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=15 * mm,
                            bottomMargin=18 * mm, title=title, author="bmsgw")
    doc.build(story, onFirstPage=_page, onLaterPages=_page)
    return count


def _event_section(ctx: ReportContext, s: StringConfig, e: dict[str, Any]) -> list[Flowable]:
    story: list[Flowable] = [Paragraph(f"{s.name}: discharge of {fmt_ts(e['start'], True)}", H1)]
    rows = [["", "", "", ""],
            ["duration", f"{e['duration_s'] / 60:.1f} min", "mean / peak current",
             f"{_fmt(e['mean_current'], 'A', 1)} / {_fmt(e['max_current'], 'A', 1)}"],
            ["delivered", _fmt(e["ah"], "Ah", 1), "against the rating",
             f"{_fmt(e['delivered_pct_of_rating'], '%', 1)} of {e['rated_ah']:g} Ah"],
            ["SOC at start / end", f"{_fmt(e['soc_start'], '%', 0)} / {_fmt(e.get('soc_end_voltage'), '%', 0)}",
             "lowest battery voltage", _fmt(e.get("min_voltage"), "V", 3)],
            ["temperature", _fmt(e.get("temperature"), "C", 1), "capacity test",
             (f"{e['capacity_ah']:.1f} Ah at 25 C, SOH {e['soh_pct']:.1f} %" if e.get("capacity_test")
              else "no: " + e.get("not_a_capacity_test", "-"))]]
    story += [_table(rows, [35 * mm, 45 * mm, 40 * mm, 54 * mm]), Spacer(1, 3 * mm)]
    if ctx.history is not None:
        pad = 600.0
        for point, title, unit in (("string.voltage", "String voltage", "V"), ("string.current", "String current", "A"),
                                   ("string.cell_voltage_min", "Lowest battery voltage", "V")):
            tr = ctx.history.query(point, s.id, start=e["start"] - pad, end=e["end"] + pad, resolution="raw",
                                   now=ctx.now)
            story.append(line_chart([(point.split(".")[-1], tr.t, tr.mean)], e["start"] - pad, e["end"] + pad,
                                    title, unit, height=45 * mm))
    sag = {r["cell"]: r["sag"] for r in e.get("sag", [])}
    story.append(bar_chart(sag, "Voltage sag under load per battery", "V", height=50 * mm))
    rows = [["rank", "battery", "before", "lowest", "sag"]]
    for i, r in enumerate(e.get("sag", []), 1):
        rows.append([str(i), str(r["cell"]), _fmt(r.get("v_before"), "V", 3), _fmt(r["v_min"], "V", 3),
                     _fmt(r["sag"], "V", 3)])
    story.append(KeepTogether([Paragraph("Batteries ranked by voltage sag (largest first)", H2),
                               _table(rows, [16 * mm, 20 * mm, 30 * mm, 30 * mm, 30 * mm])]))
    return story
