"""Baselines (IEEE 1188), deviations, end-of-life forecast against the simulator's aging curve, and the
deterioration diagnosis on labelled simulated cases; all in simulated time."""
from __future__ import annotations

import datetime as dt
import random

import pytest

from gateway.analytics import set_baseline
from gateway.analytics.diagnosis import CONNECTION, DRY_OUT, FAILED_CELL, HEALTHY, LABELS, THERMAL, UNDERCHARGE
from gateway.analytics.forecast import forecast_crossing, huber_line, theil_sen
from gateway.analytics.simulate import run_days
from gateway.analytics.state import StateDB
from gateway.points import PointRef, Quality, Reading
from gateway.sim.model import YEAR, BankModel
from tests.analytics_support import make_analytics


def _date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def test_robust_fits_ignore_outliers():
    rng = random.Random(1)
    x = [i / 100 for i in range(100)]
    y = [2.0 + 3.0 * xi + rng.gauss(0, 0.01) for xi in x]
    for i in (5, 40, 77):
        y[i] += 50.0  # bad readings
    slope, intercept, lo, hi = theil_sen(x, y)
    assert slope == pytest.approx(3.0, abs=0.05) and lo <= slope <= hi
    hs, hi_ = huber_line(x, y)
    assert hs == pytest.approx(3.0, abs=0.05) and hi_ == pytest.approx(2.0, abs=0.05)


def test_a_steady_linear_rise_is_extrapolated_with_a_range():
    x = [-d / 365.25 for d in range(200, 0, -1)]
    y = [10.0 + 10.0 * xi for xi in x]  # +10 %/year, +10 % now
    f = forecast_crossing(x, y, 30.0, horizon_years=3)
    assert f.fit.model == "linear" and f.years == pytest.approx(2.0, abs=0.01)
    assert f.early <= f.years <= f.late
    flat = forecast_crossing(x, [1.0] * len(x), 30.0)
    assert flat.years is None  # never


# The sensors test each unit's ohmic value once a day and hold the result: each daily value carries the
# test's repeatability error (the BCS datasheet's 1 % +- 25 micro-ohm, read as 2 sigma: 0.6 % on a 4 milliohm
# 12 V unit), and nothing averages it away within a day.  Each sensor also reads its unit a little off
# (conformity, 1.5 % +- 25 micro-ohm): the truth a baseline is judged by is what that sensor reads on average.


def test_forecast_one_year_out_and_90_days_out_is_as_close_as_daily_tests_allow(tmp_path):
    model = BankModel([(1, 4, 100.0, 6)], seed=2, weak_cells=1, age_years=0.0)
    weak = next(b for b in model.strings[1].batteries if b.accel)
    an, store = make_analytics(tmp_path, model, install_date=_date(model.t0), jobs_delay_s=1e12)
    run_days(model, store, an, 100, per_day=8)
    assert not an.baselines  # still settling (180 days after installation)
    run_days(model, store, an, 100, per_day=8)
    base = an.baselines[(1, weak.cell)]
    assert base.source == "auto"
    # the baseline is the median of the last sample_days (7) daily results: without noise it lies between
    # what the sensor reads at the two ends of that window (the unit keeps aging); the median of n independent
    # tests adds about 1.25 sigma / sqrt(n) (0.28 %): allow 4 of those
    n = 7
    sigma = model.errors.ohmic_test_sigma(base.ohmic) / base.ohmic
    tol = 4 * 1.2533 * sigma / n ** 0.5
    first, last = (model.sensor_ohmic(1, weak.cell, base.ts - d * 86400) for d in (n + 2, 0))
    assert first * (1 - tol) <= base.ohmic <= last * (1 + tol)
    # the true date the sensor reads +30 % over its baseline, from the simulator's aging curve
    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if model.sensor_ohmic(1, weak.cell, model.t0 + mid * YEAR) >= base.ohmic * 1.3 else (mid, hi)
    t_true = model.t0 + hi * YEAR

    def forecast_at(lead_days):
        run_days(model, store, an, (t_true - lead_days * 86400 - model.t) / 86400, per_day=8)
        an.run_jobs(model.t)
        an.tick(model.t)
        return [store.value(PointRef(p, 1, weak.cell)) for p in ("cell.eol_date", "cell.eol_date_early",
                                                                  "cell.eol_date_late")]

    # How close can a forecast be?  Fitting c + m t + b exp(k t) to a year of daily results with 0.5 %
    # repeatability, the Cramer-Rao bound on the crossing date is about 100 days (sd) one year out, 21 days
    # 180 days out and 7 days 90 days out: the acceleration k is what a year of noisy data pins down badly.
    # Over 16 noise seeds this forecaster missed by sd 50 days (worst 114) one year out and by sd 8 days
    # (worst 18) 90 days out.  The limits below are 3 sd of that spread.
    eol, early, late = forecast_at(365)
    assert abs(eol - t_true) <= 150 * 86400, f"forecast off by {(eol - t_true) / 86400:.0f} days"
    assert early < eol < late
    # healthy units rise about 3 %/year: beyond the 3-year horizon, so no date is published
    healthy = [c for c in range(1, 5) if c != weak.cell]
    assert all(store.value(PointRef("cell.eol_date", 1, c)) is None for c in healthy)
    assert store.get(PointRef("cell.eol_date", 1, healthy[0])).quality is Quality.GOOD
    dev = store.value(PointRef("cell.ohmic_baseline_deviation", 1, weak.cell))
    assert 5 < dev < 30
    assert store.value(PointRef("cell.soh", 1, weak.cell)) == pytest.approx(100 - 20 * dev / 30, abs=1.5)
    eol90, early90, late90 = forecast_at(90)
    assert abs(eol90 - t_true) <= 25 * 86400, f"forecast off by {(eol90 - t_true) / 86400:.0f} days"
    assert early90 < eol90 < late90 and late90 - early90 < late - early  # more certain as the date nears


def test_baselines_wait_for_settling_and_restart_after_a_replacement(tmp_path):
    model = BankModel([(1, 3, 100.0, 6)], seed=5, weak_cells=0, age_years=0.0)
    an, store = make_analytics(tmp_path, model, install_date=_date(model.t0),
                               baseline={"settle_days": 30, "sample_days": 5})
    run_days(model, store, an, 20, per_day=6)
    assert store.value(PointRef("cell.ohmic_baseline_deviation", 1, 2)) is None  # no baseline: no verdict
    run_days(model, store, an, 15, per_day=6)
    assert set(an.baselines) == {(1, 1), (1, 2), (1, 3)}
    assert store.value(PointRef("cell.ohmic_baseline", 1, 2)) == pytest.approx(an.baselines[(1, 2)].ohmic)
    assert abs(store.value(PointRef("cell.ohmic_baseline_deviation", 1, 2))) < 3
    # the average deviation and the string aggregates
    avg = store.value(PointRef("string.cell_ohmic_avg", 1))
    assert store.value(PointRef("cell.ohmic_average_deviation", 1, 2)) == pytest.approx(
        (store.value(PointRef("cell.ohmic", 1, 2)) / avg - 1) * 100, abs=1e-6)
    volts = [store.value(PointRef("cell.voltage", 1, c)) for c in (1, 2, 3)]
    assert store.value(PointRef("string.cell_voltage_min", 1)) == min(volts)
    assert store.value(PointRef("cell.voltage_average_deviation", 1, 3)) == pytest.approx(volts[2] - sum(volts) / 3)
    # replace battery 2 (another process, e.g. `bmsgw battery replace`): its baseline is reset and logged
    old = an.baselines[(1, 2)].ohmic
    rep = an.state.record_replacement(1, 2, "ohmic +35 %, warranty claim", ts=model.t)
    assert rep.old_baseline == pytest.approx(old)
    model.strings[1].batteries[1].ohmic0 *= 0.9  # the new unit
    run_days(model, store, an, 1, per_day=6)
    assert (1, 2) not in an.baselines and store.value(PointRef("cell.ohmic_baseline", 1, 2)) is None
    run_days(model, store, an, 36, per_day=6)  # settles again, from the replacement date
    assert an.baselines[(1, 2)].ohmic == pytest.approx(old * 0.9, rel=0.03)
    assert [r.reason for r in an.state.replacements(1, 2)] == ["ohmic +35 %, warranty claim"]
    # set by the user
    b = set_baseline(an.state, 1, 3, 0.0051, ts=model.t)
    run_days(model, store, an, 0.5, per_day=6)
    assert an.baselines[(1, 3)].source == "user" and b.ohmic == 0.0051
    assert store.value(PointRef("cell.ohmic_baseline", 1, 3)) == 0.0051


def test_a_replacement_recorded_late_returns_its_own_record(tmp_path):
    state = StateDB(tmp_path / "analytics.sqlite")
    try:
        state.record_replacement(1, 2, "swollen case", ts=2_000_000.0)
        earlier = state.record_replacement(1, 2, "the first one, entered late", ts=1_000_000.0)
        assert (earlier.reason, earlier.ts) == ("the first one, entered late", 1_000_000.0)
        assert [r.reason for r in state.replacements(1, 2)] == ["the first one, entered late", "swollen case"]
    finally:
        state.close()


LABELLED = {1: HEALTHY, 2: FAILED_CELL, 3: THERMAL, 4: UNDERCHARGE, 5: DRY_OUT, 6: CONNECTION, 7: HEALTHY,
            8: HEALTHY}


def test_diagnosis_names_the_cause_on_labelled_cases(tmp_path):
    model = BankModel([(1, 8, 100.0, 6)], seed=9, weak_cells=0, age_years=1.5)
    bats = model.strings[1].batteries
    for b in bats:
        b.temp_offset = 0.8
        b.float_offset = 0.0
    bats[1].failed_cell = True
    bats[2].temp_offset = 6.0
    bats[3].float_offset = -0.45
    bats[4].accel, bats[4].emf_drop, bats[4].float_offset = 1.0, 0.12, -0.18
    t_step = model.t + 57 * 86400

    def loose_connection(t, batch):
        if t < t_step:
            return batch
        return [(ref, Reading(r.value * 1.35, r.quality, r.ts)) if ref == PointRef("cell.ohmic", 1, 6) else (ref, r)
                for ref, r in batch]

    an, store = make_analytics(tmp_path, model, baseline={"sample_days": 7}, jobs_delay_s=1e12)
    run_days(model, store, an, 60, per_day=8, emf=True, transform=loose_connection)
    results = an.run_jobs(model.t)
    an.tick(model.t)
    got = {c: store.value(PointRef("cell.diagnosis", 1, c)) for c in LABELLED}
    assert got == LABELLED, {c: LABELS[int(v)] for c, v in got.items()}
    evidence = {c: results[(1, c)]["diagnosis"]["findings"] for c in LABELLED}
    assert "below the string average" in evidence[2][0]["evidence"][0]
    assert "above ambient" in evidence[3][0]["evidence"][0]
    assert "setpoint" in evidence[4][0]["evidence"][0]
    dry = " ".join(evidence[5][0]["evidence"])
    assert "%/year" in dry and "EMF" in dry
    assert "step" in evidence[6][0]["evidence"][0]
    assert evidence[1] == []
    assert an.state.diagnoses(1)[(1, 3)]["label"] == "thermal stress"
