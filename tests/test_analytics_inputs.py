"""The analytics read every battery's inputs each tick (a whole column at once when every battery has a GOOD
value, one by one otherwise): whatever the mix of readings, the voltage deviation put for each battery is its
voltage less the string's average of GOOD voltages, and each new GOOD temperature reading is counted once in
the battery's daily aggregates (a reading read again at the next tick is not counted again)."""
from __future__ import annotations

import math
import random

import pytest

from gateway.analytics.engine import Analytics
from gateway.analytics.state import StateDB
from gateway.points import PointRef, PointStore, Quality, Reading
from gateway.topology import BatteryConfig, StringConfig
from tests.analytics_support import analytics_config

CELLS = 6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_deviations_and_daily_aggregates_follow_every_new_good_reading(tmp_path, seed):
    rng = random.Random(seed)
    strings = [StringConfig(1, CELLS, "String 1", BatteryConfig(nominal_voltage=2.0, cells_per_unit=1,
                                                                   capacity_ah=500.0))]
    store = PointStore()
    now = 1_700_000_000.0
    an = Analytics(strings, analytics_config(), StateDB(tmp_path / "analytics.sqlite"), store, now=now)
    counted: dict[int, list[float]] = {}  # battery -> the temperatures a daily aggregate should hold
    last_ts: dict[int, float] = {}
    for step in range(60):
        now += 5
        mixed = rng.random() < 0.5  # else every battery GOOD (the whole-column path)
        batch = []
        for c in range(1, CELLS + 1):
            if mixed and rng.random() < 0.2:
                continue  # not read this cycle: the last reading stays (its time too)
            quality = rng.choice([Quality.STALE, Quality.COMM_FAIL]) if mixed and rng.random() < 0.2 else Quality.GOOD
            value = None if mixed and rng.random() < 0.1 else round(rng.uniform(2.20, 2.30), 3)
            ts = now - rng.random() if rng.random() < 0.8 or c not in last_ts else last_ts[c]  # or the same again
            batch.append((PointRef("cell.voltage", 1, c), Reading(value, quality, ts)))
            temp = round(rng.uniform(20, 30), 1)
            batch.append((PointRef("cell.temperature", 1, c), Reading(temp, quality, ts)))
            if quality is Quality.GOOD and (c not in last_ts or ts > last_ts[c]):
                counted.setdefault(c, []).append(temp)
            if quality is Quality.GOOD:
                last_ts[c] = max(ts, last_ts.get(c, -math.inf))
        store.put_many(batch)
        an.tick(now)
        volts = {c: r.value for c in range(1, CELLS + 1)
                 if (r := store.get(PointRef("cell.voltage", 1, c))) is not None and r.quality is Quality.GOOD
                 and r.value is not None}
        avg = sum(volts.values()) / len(volts) if volts else None
        for c in range(1, CELLS + 1):
            r = store.get(PointRef("cell.voltage_average_deviation", 1, c))
            want = volts[c] - avg if c in volts and avg is not None else None
            assert r is not None and (r.value == pytest.approx(want) if want is not None else r.value is None), \
                f"step {step} battery {c}"
        for c, temps in counted.items():
            total, count = an.acc[(1, c)]["temp"]
            assert count == len(temps) and total == pytest.approx(sum(temps)), f"step {step} battery {c}"
