"""Deterioration diagnosis: which cause best explains a battery's trends, with the evidence.

Rules over the battery's daily aggregates (see ``state.DailyRow``) and its string's, in order of precedence
(the first that holds is published as ``cell.diagnosis``; all that hold are kept with their evidence):

* failed cell: the unit floats about one cell's voltage (~2 V per 12 V unit) below the string average;
* connection fault: the ohmic value jumped in a step (not a trend) or scatters from day to day more than the
  string's batteries do (whose scatter is the sensors' own repeatability: 5 % a test on a 2 V cell);
* thermal stress: the negative post runs hotter than the ambient (or than the string) for days;
* dry-out or sulfation: the ohmic value rises (over the baseline, or fast: the trend's 99.9 % interval wholly
  above the rate), with the EMF or float voltage falling behind the string as supporting evidence;
* undercharge: the unit floats below the temperature-compensated setpoint.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from .state import DailyRow

HEALTHY, DRY_OUT, FAILED_CELL, THERMAL, UNDERCHARGE, CONNECTION = 0, 1, 2, 3, 4, 5
LABELS = {HEALTHY: "healthy", DRY_OUT: "dry-out or sulfation", FAILED_CELL: "failed cell",
          THERMAL: "thermal stress", UNDERCHARGE: "undercharge", CONNECTION: "connection fault"}
PRECEDENCE = (FAILED_CELL, CONNECTION, THERMAL, DRY_OUT, UNDERCHARGE)
# the ohmic rate is judged on the low end of this interval: a chance rise over a bank of 480 batteries then
# passes for fewer than one (3.3 sigma, one-sided)
RATE_EVIDENCE_ALPHA = 0.001


@dataclass(frozen=True, slots=True)
class DiagnosisParams:
    nominal_v: float = 12.0
    cells_per_unit: int = 6
    failed_cell_drop_fraction: float = 0.12  # of the nominal voltage, below the string average
    step_pct: float = 15.0  # ohmic step over the days before
    step_days: int = 3
    scatter_pct: float = 8.0  # day-to-day ohmic scatter (robust, % of the median)
    scatter_vs_string: float = 2.5  # ... and this many times the string's median scatter
    scatter_days: int = 14
    thermal_rise_c: float = 3.0
    thermal_days: int = 7
    ohmic_rise_pct: float = 20.0  # over the baseline
    ohmic_trend_pct_per_year: float = 10.0
    emf_behind_pct: float = 0.5  # EMF below the string's by this much supports dry-out/sulfation
    float_behind_v_per_cell: float = 0.02
    undercharge_v_per_cell: float = 0.05
    recent_days: int = 7


@dataclass(slots=True)
class Finding:
    code: int
    evidence: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.code]


@dataclass(slots=True)
class Diagnosis:
    code: int
    findings: list[Finding]

    @property
    def label(self) -> str:
        return LABELS[self.code]

    def to_dict(self) -> dict:
        return {"label": self.label,
                "findings": [{"code": f.code, "label": f.label, "evidence": f.evidence} for f in self.findings]}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ohmic_scatter_pct(rows: Sequence[DailyRow], days: int) -> float | None:
    """The day-to-day scatter of a battery's ohmic value over its last ``days`` days: the median of the
    differences between consecutive days, in % of the median value (None with fewer than 7 days)."""
    if not rows:
        return None
    last_day = rows[-1].day
    window = [r.ohmic for r in rows if r.ohmic is not None and r.day > last_day - days]
    if len(window) < 7:
        return None
    med = statistics.median(window)
    return 100.0 * statistics.median([abs(x - y) for x, y in pairwise(window)]) / med if med else None


def diagnose(rows: Sequence[DailyRow], string_days: dict[int, dict[str, float]], params: DiagnosisParams,
             baseline: float | None = None, trend_pct_per_year: float | None = None,
             trend_low_pct_per_year: float | None = None, string_scatter_pct: float | None = None) -> Diagnosis:
    """``rows``: the battery's daily rows, oldest first; ``string_days``: {day: {field: string median}};
    ``trend_pct_per_year``: the ohmic trend from the forecast, when there is one, and the low end of its
    ``RATE_EVIDENCE_ALPHA`` interval; ``string_scatter_pct``: the median of the string's
    batteries' ``ohmic_scatter_pct``."""
    p = params
    findings: list[Finding] = []
    if not rows:
        return Diagnosis(HEALTHY, [])
    last_day = rows[-1].day
    recent = [r for r in rows if r.day > last_day - p.recent_days]
    n = p.cells_per_unit

    # failed cell: the unit sits about a cell's voltage below the string
    v_dev = _mean([r.v_dev for r in recent[-2:]])
    if v_dev is not None and v_dev <= -p.failed_cell_drop_fraction * p.nominal_v:
        f = Finding(FAILED_CELL, [f"floats {-v_dev:.2f} V below the string average "
                                  f"(limit {p.failed_cell_drop_fraction * p.nominal_v:.2f} V: about one cell)"])
        emf_gap = _emf_gap(recent[-2:], string_days)
        if emf_gap is not None and emf_gap <= -p.failed_cell_drop_fraction * p.nominal_v * 0.5:
            f.evidence.append(f"EMF {-emf_gap:.2f} V below the string's")
        findings.append(f)

    # connection fault: a step in the ohmic value, or erratic readings
    ohm = [(r.day, r.ohmic) for r in rows if r.ohmic is not None]
    if len(ohm) >= p.step_days + 7:
        before = [v for d, v in ohm if last_day - p.step_days - 14 < d <= last_day - p.step_days]
        after = [v for d, v in ohm if d > last_day - p.step_days]
        if len(before) >= 5 and after:
            b, a = statistics.median(before), statistics.median(after)
            step = (a / b - 1.0) * 100.0
            expected = (trend_pct_per_year or 0.0) * (p.step_days + 7) / 365.25
            if step >= p.step_pct and step > 4 * max(expected, 0.5):
                findings.append(Finding(CONNECTION, [
                    f"ohmic value stepped {step:+.0f} % within {p.step_days} days "
                    f"({b * 1000:.2f} -> {a * 1000:.2f} mOhm): a step, not a trend; check the connection torque"]))
        scatter = ohmic_scatter_pct(rows, p.scatter_days)
        if scatter is not None and not any(f.code == CONNECTION for f in findings):
            # the sensors' own repeatability shows as the scatter of every battery of the string: only a
            # battery that scatters well beyond its neighbours has a contact problem
            limit, why = p.scatter_pct, f"limit {p.scatter_pct:g} %"
            if string_scatter_pct is not None and p.scatter_vs_string * string_scatter_pct > limit:
                limit = p.scatter_vs_string * string_scatter_pct
                why = f"{p.scatter_vs_string:g} x the string's {string_scatter_pct:.1f} %"
            if scatter >= limit:
                findings.append(Finding(CONNECTION, [f"ohmic readings scatter {scatter:.0f} % from day to day "
                                                     f"({why}): an unstable contact"]))

    # thermal stress: hotter than the room for days
    rise = [r.temp_rise for r in rows if r.day > last_day - p.thermal_days and r.temp_rise is not None]
    if len(rise) >= min(3, p.thermal_days):
        m = statistics.fmean(rise)
        if m >= p.thermal_rise_c:
            findings.append(Finding(THERMAL, [f"negative post {m:.1f} C above ambient over {len(rise)} days "
                                              f"(limit {p.thermal_rise_c:g} C)"]))

    # dry-out or sulfation: ohmic rise, with the EMF or float voltage falling behind
    dev = None
    if baseline and ohm:
        dev = (statistics.median([v for d, v in ohm if d > last_day - p.recent_days]) / baseline - 1.0) * 100.0
    # a rate is evidence only when the data rule out a slower one: a month of 2 V-cell tests that scatter 5 %
    # each gives a slope anywhere within +-25 %/year of the truth, and with 480 batteries a 95 % interval
    # misses for a dozen of them (RATE_EVIDENCE_ALPHA)
    rising = trend_pct_per_year is not None and trend_pct_per_year >= p.ohmic_trend_pct_per_year and (
        trend_low_pct_per_year is None or trend_low_pct_per_year >= p.ohmic_trend_pct_per_year)
    if (dev is not None and dev >= p.ohmic_rise_pct) or rising:
        ev = []
        if dev is not None:
            ev.append(f"ohmic value {dev:+.0f} % over the baseline (significant from +{p.ohmic_rise_pct:g} %)")
        if trend_pct_per_year is not None:
            low = "" if trend_low_pct_per_year is None else f" (at least {trend_low_pct_per_year:.1f})"
            ev.append(f"rising {trend_pct_per_year:.1f} %/year{low}")
        emf_gap = _emf_gap(recent, string_days)
        if emf_gap is not None:
            ref = _median([string_days.get(r.day, {}).get("emf") for r in recent]) or 1.0
            if emf_gap / ref * 100.0 <= -p.emf_behind_pct:
                ev.append(f"EMF {-emf_gap:.2f} V below the string's")
        if v_dev is not None and v_dev <= -p.float_behind_v_per_cell * n:
            ev.append(f"floats {-v_dev:.2f} V below the string average")
        findings.append(Finding(DRY_OUT, ev))

    # undercharge: below the compensated float setpoint
    gaps = [r.v_float - r.setpoint for r in recent if r.v_float is not None and r.setpoint is not None]
    if len(gaps) >= min(3, p.recent_days):
        gap = statistics.fmean(gaps)
        if gap <= -p.undercharge_v_per_cell * n:
            setpoint = _mean([r.setpoint for r in recent])
            findings.append(Finding(UNDERCHARGE, [f"floats {-gap:.2f} V below the temperature-compensated "
                                                  f"setpoint {setpoint:.2f} V ({len(gaps)}-day mean)"]))

    findings.sort(key=lambda f: PRECEDENCE.index(f.code))
    return Diagnosis(findings[0].code if findings else HEALTHY, findings)


def _emf_gap(rows: Sequence[DailyRow], string_days: dict[int, dict[str, float]]) -> float | None:
    gaps = [r.emf - string_days[r.day]["emf"] for r in rows
            if r.emf is not None and string_days.get(r.day, {}).get("emf") is not None]
    return statistics.fmean(gaps) if gaps else None
