"""Engine capacity: sensor transactions per second on one core, against a zero-latency simulator.

The simulator (``bmsgw simulate --no-wire-time``, inter-frame silence 0) runs in its own process, so this
process's CPU time is the engine's alone: 4 buses x 120 directly addressed cell sensors, full scans (poll,
decode, quality, store) back to back.  Baseline in the same run: the bare transport (send a request, frame
and check the reply, nothing else) over the same pseudo-terminals.  Target: >= 5,000 transactions per
CPU-second of the engine (the controller is 15-25x slower; 4 buses at 115200 baud need ~500/s there).

    .venv/bin/python bench/engine_capacity.py [--seconds S]
"""
from __future__ import annotations

import argparse
import asyncio

from _common import SimProcess, cpu_seconds, direct_bank, now, write_config

from gateway.app import Gateway


async def run_engine(gw: Gateway, seconds: float) -> tuple[float, float, int]:
    engine = gw.engine
    await engine.poll_once(slow=True)
    start_req = sum(bs.transport.counters.requests for bs in engine.buses.values())
    t0, c0 = now(), cpu_seconds()
    while now() - t0 < seconds:
        await engine.poll_once(slow=False)
    wall, cpu = now() - t0, cpu_seconds() - c0
    requests = sum(bs.transport.counters.requests for bs in engine.buses.values()) - start_req
    return wall, cpu, requests


async def run_bare(gw: Gateway, seconds: float) -> tuple[float, float, int]:
    """The floor: the same requests through the same transports, replies not decoded or stored."""
    engine = gw.engine
    await engine.open()

    async def one_bus(bs) -> int:
        n = 0
        requests = [r for ds in bs.devices for r, b in zip(ds.requests, ds.blocks, strict=True) if b.poll == "fast"]
        while now() - t0 < seconds:
            results = await bs.transport.exchange([[r] for r in requests])  # one batch, as the engine's sweep
            n += sum(len(r.outcomes) for r in results)
        return n

    t0, c0 = now(), cpu_seconds()
    counts = await asyncio.gather(*(one_bus(bs) for bs in engine.buses.values()))
    return now() - t0, cpu_seconds() - c0, sum(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="how long to measure each case")
    args = ap.parse_args()
    cfg = write_config(direct_bank(115200, wire_time=False, silence_ms=0))
    results = {}
    with SimProcess(cfg, "--no-wire-time") as sim:
        for name, fn in (("bare transport", run_bare), ("engine", run_engine)):
            gw = Gateway(cfg, simulator=False, port_overrides=sim.ports)

            async def go(fn=fn, gw=gw):
                try:
                    return await fn(gw, args.seconds)
                finally:
                    await gw.engine.stop()

            wall, cpu, n = asyncio.run(go())
            bad = sum(c["timeouts"] + c["crc_errors"] for c in gw.engine.counters().values())
            results[name] = (n / cpu, n / wall)
            print(f"{name:>14}: {n} transactions in {wall:.2f} s wall, {cpu:.2f} s CPU: "
                  f"{n / cpu:,.0f} per CPU-second, {n / wall:,.0f} per second wall ({bad} errors)")
    eng, bare = results["engine"], results["bare transport"]
    print(f"engine / bare transport: {eng[0] / bare[0]:.2f}x per CPU-second")
    print(f"engine capacity: {eng[0]:,.0f} sensor transactions per CPU-second on one core "
          f"({eng[0] / 5000:.2f}x the 5,000/s target; {eng[1]:,.0f}/s wall with the simulator on the other core)")


if __name__ == "__main__":
    main()
