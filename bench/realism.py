"""A real battery room in simulated time, the datasheets' sensor errors on: the numbers of issue 15.

Every figure comes from the gateway's own paths (``gateway.simrun.SimulatedGateway``: the string supervision,
the alarm manager on the simulated clock, the analytics) fed by the simulated default bank (2 V 500 Ah VRLA on
BCS-02 cell sensors, BM-SMD hall clamps), and is read the way a user reads it: the ``string.state`` point, the
alarm table and log, the UPS-MIB values the SNMP agent serves, the published forecast dates.

* SOC: max error (percentage points) over 30 days with a -3 A hall offset and 3 discharges (C/4, 1 h), once a
  discharge taught the capacity; the first discharge's error (capacity not known yet) for comparison.
* False states: 30 days of float, one string each with a -5, -3, +3 and +5 A offset: minutes classified as
  discharging, float-voltage alarms, runaway alarms, any alarm at all, seconds the UPS-MIB says on battery.
* Thermal runaway: minutes from onset to the critical alarm, with the zero learnt and before it is.
* Ohmic: daily tests of 120 2 V cells until a real +30 % rise (on 10 cells in turn) is flagged; false ohmic
  alarms over 365 daily tests of healthy cells.
* End of discharge: the end-voltage alarms' value against their setpoint per cell, at C/4 and the 15-minute
  rate.
* End of life: one year before a weak 2 V cell reaches +30 % over its baseline, does the published early-late
  range hold that date?  Coverage and median error of the central date over 20 seeds.

    .venv/bin/python bench/realism.py            # about 8.5 minutes of CPU
    .venv/bin/python bench/realism.py --quick    # shorter horizons, a few minutes (not the issue's numbers)
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.sim.drive import Cadence
from gateway.sim.model import YEAR, BankModel
from gateway.simrun import SimulatedGateway
from gateway.strings import string_states

STATES = string_states()
DAY = 86400.0
FLOAT_RULES = ("cell_voltage_float", "string_voltage_float", "cell_voltage_deviation")


def merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def config(folder: Path, strings: int = 4, cells: int = 120, **over) -> Path:
    """The repository's config.yaml (the default bank), ``strings`` x ``cells``, state in ``folder``."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["buses"], data["strings"] = data["buses"][:strings], data["strings"][:strings]
    for s in data["strings"]:
        s["cells"] = cells
        s["devices"][1]["count"] = cells
    data["gateway"]["state_dir"] = str(folder / "var")
    merge(data, over)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def soc_error(days: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = config(Path(tmp), strings=1, simulator={"current_offset_a": -3.0, "discharge_duration_s": 3600})
        with SimulatedGateway(path, cadence=Cadence(step_s=10, cells_s=60, cells_idle_s=1800),
                              analytics_every_s=120, forecasts=False) as sim:
            model, soc = sim.model, sim.analytics.soc[1]
            before: list[float] = []
            after: list[float] = []

            def check(t):
                err = abs(soc.soc - model.truth()["strings"][1]["soc"])
                (after if soc.soh_capacity is not None else before).append(err)

            start = model.t
            for frac in (1 / 6, 1 / 2, 5 / 6):
                sim.run(start + frac * days * DAY, on_step=check)
                model.set_mode(1, "discharge", 125.0)
            sim.run(start + days * DAY, on_step=check)
            events = sim.analytics.events_finished
            return {"max_after": max(after) if after else None, "max_before": max(before) if before else None,
                    "discharges": len(events), "capacity_tests": sum(bool(e.get("capacity_test")) for e in events),
                    "offset": sim.strings.classifiers[1].zero.offset, "truth_offset": model.current_offset(1)}


def false_states(days: float) -> dict:
    offsets = {"1": -5.0, "2": -3.0, "3": 3.0, "4": 5.0}
    with tempfile.TemporaryDirectory() as tmp:
        path = config(Path(tmp), simulator={"weak_cells": 0, "current_offsets": offsets})
        step = 30.0
        with SimulatedGateway(path, cadence=Cadence(step_s=step, cells_s=60, cells_idle_s=1800),
                              analytics_every_s=120, forecasts=False) as sim:
            discharging = dict.fromkeys(range(1, 5), 0.0)
            on_battery = [0]

            def look(t):
                for s in discharging:
                    if sim.value("string.state", s) == STATES.discharging:
                        discharging[s] += step / 60.0
                on_battery[0] = max(on_battery[0], sim.ups()["seconds_on_battery"] or 0)

            sim.run_for(days * DAY, on_step=look)
            log = sim.alarm_log()  # alarm records, as users read them: each names the rule that raised it
            return {"minutes_discharging": discharging, "float_alarms": sum(r["rule"] in FLOAT_RULES for r in log),
                    "runaway_alarms": sum(r["rule"] == "string_thermal_runaway" for r in log), "alarms": len(log),
                    "texts": [r["message"] for r in log][:5], "on_battery_s": on_battery[0],
                    "offsets": {s: (round(sim.strings.classifiers[int(s)].zero.offset, 2), o)
                                for s, o in offsets.items()}}


def runaway_minutes(learn_s: float) -> tuple[float | None, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = config(Path(tmp), strings=1, simulator={"current_offset_a": -3.0, "weak_cells": 0})
        with SimulatedGateway(path, analytics=False, cadence=Cadence(step_s=10, cells_s=30, cells_idle_s=1800)) as sim:
            sim.run_for(learn_s)
            onset = sim.model.t
            sim.model.start_thermal_runaway(1)
            found: list[float] = []

            def look(t):
                if not found and any(a.key.rule == "string_thermal_runaway" for a in sim.alarm_table()):
                    found.append((t - onset) / 60.0)

            while not found and sim.model.t - onset < 2 * 3600:
                sim.run_for(60, on_step=look)
            return (found[0] if found else None), int(sim.value("string.thermal_runaway", 1) or 0)


def ohmic(days: int, rises: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = config(Path(tmp), strings=1, simulator={"weak_cells": 0}, alarms={"rules": {}})
        with SimulatedGateway(path, forecasts=False) as sim:
            sim.fast_forward(8, per_day=1)  # the baselines: the median of 7 daily tests
            baselines = len(sim.analytics.baselines)
            sim.fast_forward(days, per_day=1)
            false = [r for r in sim.alarm_log() if r["point"].startswith("cell.ohmic")]
            tests_to_flag = []
            for cell in range(5, 5 + 10 * rises, 10):
                sim.model.battery(1, cell).step_rise = 0.30
                for n in range(1, 31):
                    sim.fast_forward(1, per_day=1)
                    if any(a.key.cell == cell and a.key.point.startswith("cell.ohmic") for a in sim.alarm_table()):
                        tests_to_flag.append(n)
                        break
                else:
                    tests_to_flag.append(None)
            return {"baselines": baselines, "false": len(false), "cells": 120, "tests": days, "to_flag": tests_to_flag}


def end_of_discharge() -> dict:
    out = {}
    for amps, rate in ((125.0, "C/4"), (835.0, "15-min")):
        with tempfile.TemporaryDirectory() as tmp:
            path = config(Path(tmp), strings=1, simulator={"discharge_duration_s": 1e6})
            with SimulatedGateway(path, analytics=False, cadence=Cadence(step_s=5, cells_s=5, ohmic_s=DAY)) as sim:
                sim.run_for(300)
                sim.model.set_mode(1, "discharge", amps)
                first: dict[tuple[str, str], float] = {}

                def look(t, sim=sim, first=first):
                    for a in sim.alarm_table():
                        if "discharge" in a.key.rule and (a.key.rule, a.key.severity) not in first:
                            per = 1 if a.key.cell else 120
                            first[(a.key.rule, a.key.severity)] = a.value / per - a.threshold / per

                while sim.model.strings[1].mode == "discharge":
                    sim.run_for(300, on_step=look)
                out[rate] = first
    return out


def end_of_life(seeds: int) -> dict:
    results = []
    for seed in range(1, seeds + 1):
        model = BankModel([(1, 6, 500.0, 1)], seed=seed, weak_cells=1, age_years=0.0)
        install = dt.datetime.fromtimestamp(model.t0, dt.UTC).strftime("%Y-%m-%d")
        with tempfile.TemporaryDirectory() as tmp:
            path = config(Path(tmp), strings=1, cells=6, alarms={"enabled": False},
                          analytics={"install_date": install})
            with SimulatedGateway(path, model=model, forecasts=False) as sim:
                weak = next(b for b in model.strings[1].batteries if b.accel)
                sim.fast_forward(200, per_day=2)
                base = sim.analytics.baselines[(1, weak.cell)].ohmic
                lo, hi = 0.0, 20.0
                for _ in range(60):
                    mid = (lo + hi) / 2
                    reached = model.sensor_ohmic(1, weak.cell, model.t0 + mid * YEAR) >= base * 1.3
                    lo, hi = (lo, mid) if reached else (mid, hi)
                t_true = model.t0 + hi * YEAR
                sim.fast_forward((t_true - 365 * DAY - model.t) / DAY, per_day=2)
                sim.analytics.run_jobs(model.t)
                sim.analytics.tick(model.t)
                eol, early, late = (sim.value(p, 1, weak.cell) for p in
                                    ("cell.eol_date", "cell.eol_date_early", "cell.eol_date_late"))
                covered = early is not None and early <= t_true and (late is None or t_true <= late)
                results.append({"seed": seed, "covered": covered, "error_days": (eol - t_true) / DAY if eol else None,
                                "early_days": (early - t_true) / DAY if early else None,
                                "late_days": (late - t_true) / DAY if late else None})
    errors = [abs(r["error_days"]) for r in results if r["error_days"] is not None]
    return {"seeds": seeds, "covered": sum(r["covered"] for r in results),
            "median_abs_error_days": statistics.median(errors) if errors else None,
            "median_signed_error_days": statistics.median(r["error_days"] for r in results
                                                          if r["error_days"] is not None) if errors else None,
            "median_width_days": statistics.median(r["late_days"] - r["early_days"] for r in results
                                                   if r["late_days"] is not None and r["early_days"] is not None)
            if results else None,
            "open_ended": sum(r["late_days"] is None for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short horizons (a few minutes; not the issue's numbers)")
    args = ap.parse_args()
    days = 6 if args.quick else 30
    t0 = time.perf_counter()
    print(f"bank: config.yaml's 2 V 500 Ah VRLA cells, BCS-02 and BM-SMD sensor errors on; {days} simulated days")

    s = soc_error(days)
    print(f"SOC, -3 A offset, {s['discharges']} discharges of C/4 x 1 h ({s['capacity_tests']} capacity tests): "
          f"max error {s['max_after']:.2f} pp once the capacity is learnt (goal <= 3; first discharge "
          f"{s['max_before']:.2f}); zero learnt {s['offset']:+.2f} A (sensor {s['truth_offset']:+.2f} A)")

    f = false_states(days)
    minutes = sum(f["minutes_discharging"].values())
    print(f"false states, {days} days of float, offsets -5/-3/+3/+5 A: {minutes:.0f} minutes discharging "
          f"{ {int(k): round(v) for k, v in f['minutes_discharging'].items()} }, {f['float_alarms']} float alarms, "
          f"{f['runaway_alarms']} runaway alarms, {f['alarms']} alarms in all, UPS-MIB on battery "
          f"{f['on_battery_s']} s; zeros learnt {f['offsets']}")
    if f["texts"]:
        print("   e.g. " + " | ".join(f["texts"]))

    learnt, state_l = runaway_minutes(6 * 3600)
    unknown, state_u = runaway_minutes(600)
    fmt = lambda m: f"{m:.1f} min" if m is not None else "not flagged"  # noqa: E731
    print(f"thermal runaway: critical alarm {fmt(learnt)} after onset with the zero learnt (state {state_l}), "
          f"{fmt(unknown)} before it is (state {state_u}; goal <= 30 min)")

    o = ohmic(60 if args.quick else 365, 3 if args.quick else 10)
    flagged = [n for n in o["to_flag"] if n is not None]
    print(f"ohmic, {o['cells']} 2 V cells: {o['false']} false ohmic alarms in {o['tests']} daily tests; a real +30 % "
          f"rise flagged after {o['to_flag']} daily tests (worst {max(flagged) if flagged else '-'}; goal <= 7)")

    e = end_of_discharge()
    worst = max(abs(v) for rate in e.values() for v in rate.values())
    for rate, first in e.items():
        parts = [f"{rule.replace('_voltage_discharge', '')} {sev} {diff:+.4f} V/cell"
                 for (rule, sev), diff in sorted(first.items())]
        print(f"end of discharge at {rate}: " + ", ".join(parts))

    seeds = 6 if args.quick else 20
    life = end_of_life(seeds)
    print(f"end of life one year out, {seeds} seeds (2 V cells): range holds the truth in {life['covered']}/{seeds}, "
          f"central date off by median {life['median_abs_error_days']:.0f} days (signed "
          f"{life['median_signed_error_days']:+.0f}), range median {life['median_width_days']:.0f} days wide, "
          f"{life['open_ended']} open-ended")
    print(f"(ran {time.perf_counter() - t0:.0f} s)")
    print(f"realism: SOC {s['max_after']:.2f} pp (goal 3); {minutes:.0f} min discharging / {f['float_alarms']} float / "
          f"{f['runaway_alarms']} runaway alarms in {days} days of float (goal 0); runaway flagged in "
          f"{fmt(max(m for m in (learnt, unknown) if m is not None) if learnt or unknown else None)} (goal 30); "
          f"+30 % ohmic rise in {max(flagged) if flagged else '-'} tests (goal 7), {o['false']} false; "
          f"end of discharge within {worst:.3f} V/cell (goal 0.02); "
          f"EOL coverage {100 * life['covered'] / seeds:.0f} % (goal 90)")


if __name__ == "__main__":
    main()
