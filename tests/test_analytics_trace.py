"""The analytics publish exactly what they published before their tick was reworked for CPU (issue 18): a
recorded trace of a small simulated bank's life (float, sensors that drop out or go bad, a discharge and its
recharge, a string at rest, hourly ohmic tests with EMF, baselines set and a battery replaced from outside,
weeks of aging with the forecast jobs and the day's aggregates flushed) is replayed and every tick's outputs
(point, value, time) are compared with the digest of the same tick recorded from the per-battery engine of main
da4bfed, then the state file's daily aggregates, life budget, SOC, events and forecasts.

Re-record (only for an intended change of the outputs): ``.venv/bin/python -m tests.test_analytics_trace``.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from gateway.analytics.simulate import Cadence, run, run_days
from gateway.analytics.state import Baseline
from gateway.points import PointRef, Quality, Reading
from gateway.sim.model import BankModel
from tests.analytics_support import make_analytics

TRACE = Path(__file__).parent / "testdata" / "analytics_trace.json"
INPUTS = ("cell.voltage", "cell.temperature", "cell.ohmic", "cell.emf")


def _digest(items) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def trace(tmp_path: Path) -> dict[str, list[str]]:
    """Every tick's outputs (sorted: their order within a tick is not an output) and the final state, digested."""
    rng = random.Random(18)
    model = BankModel([(1, 6, 100.0, 6), (2, 5, 100.0, 6)], seed=7, weak_cells=1, discharge_duration_s=1800)
    an, store = make_analytics(tmp_path, model, republish_s=60)
    ticks: list[str] = []
    cells = {1: 6, 2: 5}
    an_tick = an.tick

    def tick(t: float) -> None:
        # now and then a few inputs read bad, or without a value (the per-battery path), or a battery read again
        # out of turn (a column with some readings new, some counted already)
        if rng.random() < 0.4:
            extra = []
            for _ in range(rng.randint(1, 4)):
                sid = rng.choice((1, 2))
                ref = PointRef(rng.choice(INPUTS), sid, rng.randint(1, cells[sid]))
                old = store.get(ref)
                value = 1.0 if old is None or old.value is None else old.value
                if rng.random() < 0.4:
                    extra.append((ref, Reading(value * rng.uniform(0.99, 1.01), Quality.GOOD, t - rng.random())))
                    continue
                value = None if rng.random() < 0.3 else value
                quality = Quality.GOOD if value is None else rng.choice((Quality.STALE, Quality.COMM_FAIL))
                extra.append((ref, Reading(value, quality, t - rng.random())))
            store.put_many(extra)
        out = an_tick(t, publish=False)
        ticks.append(_digest(sorted((repr(ref), r.value, r.quality.value, r.ts) for ref, r in out)))
        store.put_many(out)

    def drive(until: float, **cadence) -> None:
        run(model, store, an, until, Cadence(**{"step_s": 5.0, "cells_s": 5.0, "ohmic_s": 600.0, "emf": True,
                                                **cadence}), tickers=[])

    # (run() ticks the analytics itself: it is given this recording tick instead)
    an.tick = tick  # type: ignore[method-assign]
    try:
        drive(model.t + 5400)  # on float: anchored at 100 % after an hour
        model.set_mode(1, "discharge", 25.0)
        drive(model.t + 1200)
        model.set_mode(1, "recharge")
        drive(model.t + 1800)
        model.set_mode(2, "rest")
        drive(model.t + 1800, cells_s=10.0)
        model.set_mode(2, "float")
        an.state.set_baseline(Baseline(1, 2, 0.004, model.t, "user"))
        an.state.record_replacement(2, 3, "trace: swollen case", model.t)
        drive(model.t + 900)
        run_days(model, store, an, 12, per_day=24, emf=True, jobs_every_days=3)
        drive(model.t + 1200, cells_s=60.0, ohmic_s=3600.0)
    finally:
        an.tick = an_tick  # type: ignore[method-assign]
    an.close(model.t)
    st = an.state
    final = [_digest(st._q(f"SELECT * FROM {table} ORDER BY 1, 2"))
             for table in ("daily", "life", "soc", "events", "forecasts", "diagnoses", "baselines")]
    st.close()
    return {"ticks": ticks, "state": final}


def test_every_tick_publishes_what_the_per_battery_engine_published(tmp_path):
    want = json.loads(TRACE.read_text())
    got = trace(tmp_path)
    assert len(got["ticks"]) == len(want["ticks"])
    differ = [i for i, (a, b) in enumerate(zip(got["ticks"], want["ticks"], strict=True)) if a != b]
    assert not differ, f"{len(differ)} of {len(want['ticks'])} ticks differ, the first at tick {differ[0]}"
    tables = ("daily", "life", "soc", "events", "forecasts", "diagnoses", "baselines")
    assert got["state"] == want["state"], [t for t, a, b in zip(tables, got["state"], want["state"], strict=True)
                                           if a != b]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        TRACE.write_text(json.dumps(trace(Path(tmp)), indent=0) + "\n")
    sys.exit(0)
