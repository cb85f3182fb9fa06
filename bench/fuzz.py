"""The fuzzers of tests/fuzz/ run long: every face's bad-input fuzzer with many more cases than ``make test``.

Runs the same tests (real servers on 127.0.0.1: Modbus TCP, SNMP with and without the fast path, the web
server; ``check-config`` and the profile loader) with ``BMSGW_FUZZ_EXAMPLES`` cases per fuzzer and fresh
random choices, and prints the cases each fuzzer ran (counted as hypothesis ran them), its time and rate.
A failure is printed with the input hypothesis shrank it to (and a @reproduce_failure blob to replay it).

    .venv/bin/python bench/fuzz.py [--examples 2000] [-k web]

The last line is the headline: the cases run in all, and how many fuzzers failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=int(os.environ.get("BMSGW_FUZZ_EXAMPLES") or 2000),
                    help="cases per fuzzer (default 2000; BMSGW_FUZZ_EXAMPLES)")
    ap.add_argument("-k", default=None, help="only the fuzz tests matching this pytest -k expression")
    args = ap.parse_args()
    os.environ["BMSGW_FUZZ_EXAMPLES"] = str(args.examples)  # read by tests/fuzz/cases.py when it is imported
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    import pytest

    def counts() -> dict:
        from tests.fuzz.cases import COUNTS  # imported by pytest's collection (so hypothesis is rewritten first)

        return COUNTS

    class Timing:
        def __init__(self) -> None:
            self.rows: dict[str, list[float]] = {}  # fuzzer -> [cases, seconds]
            self.failed: list[str] = []

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_call(self, item):
            before, t0 = dict(counts()), time.perf_counter()
            yield
            dt = time.perf_counter() - t0
            for name, n in counts().items():
                if n != before.get(name, 0):
                    row = self.rows.setdefault(name, [0, 0.0])
                    row[0] += n - before.get(name, 0)
                    row[1] += dt

        def pytest_runtest_logreport(self, report):
            if report.failed:
                self.failed.append(report.nodeid)

    timing = Timing()
    t0 = time.perf_counter()
    argv = ["tests/fuzz", "-q", "-p", "no:cacheprovider", "--tb=short"] + (["-k", args.k] if args.k else [])
    rc = pytest.main(argv, plugins=[timing])
    total_s = time.perf_counter() - t0
    print()
    print(f"{'fuzzer':<26}{'cases':>9}{'seconds':>10}{'cases/s':>10}")
    for name in sorted(timing.rows):
        cases, secs = timing.rows[name]
        print(f"{name:<26}{int(cases):>9}{secs:>10.1f}{cases / secs if secs else 0:>10.0f}")
    for nodeid in timing.failed:
        print(f"FAILED {nodeid}")
    total = int(sum(r[0] for r in timing.rows.values()))
    print(f"fuzz: {total} cases in {total_s:.0f} s over {len(timing.rows)} fuzzers "
          f"({args.examples} per fuzzer), {len(timing.failed)} failed")
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
