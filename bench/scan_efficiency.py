"""Scan efficiency: a full scan of 4 x 120 directly addressed cell sensors, 4 buses in parallel, against the
simulator answering at the pace of the baud rate (wire-time emulation), at 9600 and 115200 baud.

The baseline is the physical limit computed from the frames actually sent (request and reply characters,
two inter-frame silences and the slave's turnaround per transaction, summed per bus; the buses run in
parallel, so the limit is the busiest bus).  Target: measured / limit <= 1.10.

    .venv/bin/python bench/scan_efficiency.py [--scans N]
"""
from __future__ import annotations

import argparse
import asyncio

from _common import SimProcess, direct_bank, now, write_config

from gateway.app import Gateway


async def measure(gw: Gateway, scans: int) -> tuple[float, float, int]:
    engine = gw.engine
    await engine.poll_once(slow=True)  # warm-up: ports open, every device answered once
    best = None
    for _ in range(scans):
        before = {n: (bs.transport.counters.wire_time, bs.transport.counters.requests) for n, bs in engine.buses.items()}
        t0 = now()
        await engine.poll_once(slow=True)
        elapsed = now() - t0
        limit = max(bs.transport.counters.wire_time - before[n][0] for n, bs in engine.buses.items())
        requests = sum(bs.transport.counters.requests - before[n][1] for n, bs in engine.buses.items())
        if best is None or elapsed / limit < best[0] / best[1]:
            best = (elapsed, limit, requests)
    await engine.stop()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=3, help="scans per baud rate (the best one counts)")
    args = ap.parse_args()
    ratios = {}
    for baud in (9600, 115200):
        cfg = write_config(direct_bank(baud))
        with SimProcess(cfg) as sim:
            gw = Gateway(cfg, simulator=False, port_overrides=sim.ports)
            elapsed, limit, requests = asyncio.run(measure(gw, args.scans))
            bad = sum(c["timeouts"] + c["crc_errors"] for c in gw.engine.counters().values())
        ratios[baud] = elapsed / limit
        print(f"{baud:>6} baud: full scan {elapsed:.3f} s, wire-time limit {limit:.3f} s "
              f"({requests} transactions, {bad} timeouts/CRC errors): {ratios[baud]:.3f}x the limit")
    print("scan efficiency (measured / wire-time limit, target <= 1.10): "
          + ", ".join(f"{b} baud {r:.3f}x" for b, r in ratios.items()))


if __name__ == "__main__":
    main()
