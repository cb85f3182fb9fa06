"""Soak: `bmsgw run` on the default 480-battery config under every face's load at once, for minutes.

20 Modbus TCP clients reading the whole register map every second (2 of them pymodbus) plus mbpoll runs,
net-snmp snmpbulkwalk of the BMSGW MIB every 10 s, a real Prometheus scraping every 5 s, the web page open
(a scripted client and headless chromium).  First a minute of the gateway alone: the baseline for the poll
cycle time and each face's latency.  Measured: poll cycles done vs expected per bus, missed and late cycles
(the engine's fixed-schedule accounting, see tests/soak/load.py), RSS at start / after warm-up / end and its
slope, the gateway's CPU, latency p50/p99 and errors per face.  A progress line every minute on stderr; the
last line printed is the headline.  Exit status 1 when a cycle was missed, a face saw an error, or the
gateway logged an error.

    .venv/bin/python bench/soak.py [--minutes 10] [--baseline-s 60] [--warmup-min 2] [--no-browser] [--sim-process]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.soak.load import Plan, report, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    ap.add_argument("--baseline-s", type=float, default=60.0, help="seconds without load first (default 60)")
    ap.add_argument("--warmup-min", type=float, default=2.0,
                    help="minutes of load before RSS growth and slope are measured (default 2)")
    ap.add_argument("--clients", type=int, default=20, help="Modbus TCP clients (default 20)")
    ap.add_argument("--no-browser", action="store_true", help="no headless chromium, only the scripted web client")
    ap.add_argument("--sim-process", action="store_true",
                    help="the simulated sensors in a process of their own (`bmsgw simulate`), as real sensors are, "
                         "instead of the built-in simulator of config.yaml")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run's folder (config, logs) here")
    args = ap.parse_args()
    plan = Plan(baseline_s=args.baseline_s, load_s=args.minutes * 60, warmup_s=args.warmup_min * 60,
                modbus_clients=args.clients, browser=not args.no_browser, sim_process=args.sim_process)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    result = run(plan, args.keep)
    for line in report(result):
        print(line, flush=True)
    ok = result.missed == 0 and result.short_cycles == 0 and result.face_errors == 0 and not result.log_problems \
        and result.exit_code == 0 and not result.load_errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
