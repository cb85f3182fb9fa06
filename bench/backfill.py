"""The lived-in demo's first start: back-filling `simulator.backfill_days` of simulated history on the default bank.

Runs the back-fill ``bmsgw run`` does at the first start of config.yaml (4 x 120 2 V cells, 540 days by default)
in a fresh state folder, through the same code (``gateway.backfill``), and prints what it made and how long it
took: wall seconds (the goal: <= 60 on the development machine) and CPU seconds (the same on an idle core; a
loaded machine stretches the wall time, never the CPU time).

    .venv/bin/python bench/backfill.py [--days N]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import write_config

from gateway.app import Gateway


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=None, help="back-fill this many days (default: config.yaml's)")
    args = ap.parse_args()
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    if args.days is not None:
        data["simulator"]["backfill_days"] = args.days
    data["gateway"]["log_level"] = "WARNING"
    gw = Gateway(write_config(data))
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(gw.backfill())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    s = gw.backfill_status or {}
    load = os.getloadavg()[0]
    print(f"made: {s.get('discharges')} mains failures ({s.get('capacity_tests')} capacity tests), "
          f"{s.get('alarm_log')} alarm log entries, {s.get('baselines')} baselines, {s.get('forecasts')} dated "
          f"forecasts; {s.get('hot_battery')} drying out")
    print(f"machine load average {load:.1f} on {os.cpu_count()} cores")
    print(f"back-fill of {s.get('days'):g} simulated days on the default bank (480 batteries): {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU (goal <= 60 s)")


if __name__ == "__main__":
    main()
