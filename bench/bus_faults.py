"""Bus faults vs the healthy sensors: how much slower are the sensors that still answer polled when some on
their bus do not (timeouts, CRC errors, garbage, late replies, a readdressed sensor) or another bus is unplugged?

Two buses like the default config's (a string sensor and 120 cell sensors each, 115200 baud, wire-time pacing,
timeout 100 ms, one retry, lost devices retried every 10 s), polled back to back (``fast_s: 0``: the bus busy
all the time, the worst case: no idle time between cycles to hide the faulty sensors' cost in).  The simulator
runs in its own process, driven through a pipe, so its work does not share this process's CPU.

For each fault: the healthy sensors' refresh period (from the timestamps of their readings) with every sensor
answering, then with N sensors faulty, once they are declared lost (steady state), the bus's cycle ratio;
also how long the detection took (in cycles) and how long recovery took.  The baseline is measured right
before each fault in the same run.  The last line is the headline: the worst steady-state slowdown.

    .venv/bin/python bench/bus_faults.py [--faulty N] [--window S]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time

from _common import direct_bank, write_config

from gateway.app import Gateway
from gateway.points import PointRef


def sim_process(config: str, conn) -> None:
    """The simulator in a child process: sends its ports, then obeys (method, args) until None."""
    from gateway.cli import _all_ports_dummy

    gw = Gateway(config, simulator=False, port_overrides=_all_ports_dummy(config))
    sim = gw.make_simulator()
    sim.start()
    conn.send(sim.ports())
    while True:
        msg = conn.recv()
        if msg is None:
            break
        name, args = msg
        getattr(sim, name)(*args)
        conn.send("ok")
    sim.stop()


class Sim:
    def __init__(self, config) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=sim_process, args=(str(config), child), daemon=True)
        self.proc.start()
        self.ports = self.conn.recv()

    def __call__(self, name: str, *args) -> None:
        self.conn.send((name, args))
        assert self.conn.recv() == "ok"

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


class Refresh:
    """Timestamps of every cell voltage reading, per sensor (the store's listener)."""

    def __init__(self, store) -> None:
        self.ts: dict[PointRef, list[float]] = {}
        store.subscribe(self.on_batch)

    def on_batch(self, batch) -> None:
        for ref, r in batch:
            if ref.point == "cell.voltage" and r.quality.value == "GOOD":
                self.ts.setdefault(ref, []).append(r.ts)

    def period(self, refs, t0: float, t1: float) -> float:
        """The mean interval between two readings of each of ``refs`` within [t0, t1] (wall clock)."""
        out = []
        for ref in refs:
            ts = [t for t in self.ts.get(ref, ()) if t0 <= t <= t1]
            if len(ts) >= 2:
                out.append((ts[-1] - ts[0]) / (len(ts) - 1))
        return statistics.mean(out)


async def until(pred, timeout: float) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("condition not reached")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def window(seconds: float) -> tuple[float, float]:
    t0 = time.time()
    await asyncio.sleep(seconds)
    return t0, time.time()


FAULTS = [  # (label, simulator call per faulty address, what the healthy sensors are measured on)
    ("no answer (timeout)", lambda a: ("set_fault", "bus1", a, "no_answer")),
    ("CRC errors", lambda a: ("set_fault", "bus1", a, "crc_error")),
    ("garbage replies", lambda a: ("set_fault", "bus1", a, "garbage")),
    ("late replies (150 ms > timeout)", lambda a: ("set_fault", "bus1", a, "slow", 150.0)),
    ("readdressed sensors", None),
    ("bus1 unplugged (bus2 measured)", None),
]


async def run(args, gw: Gateway, sim: Sim) -> list[tuple[str, float]]:
    engine = gw.engine
    refresh = Refresh(gw.store)
    await engine.start()
    bus1, bus2 = engine.buses["bus1"], engine.buses["bus2"]
    await until(lambda: bus1.cycles >= 3 and bus2.cycles >= 3, 60)
    step = 120 // args.faulty
    faulty = [2 + step // 2 + k * step for k in range(args.faulty)]  # cell sensors spread over the bus
    refs = {name: [ref for ds in bs.devices if ds.device.address not in faulty for ref in ds.refs
                   if ref.point == "cell.voltage"] for name, bs in engine.buses.items()}
    results = []
    for label, call in FAULTS:
        measured = "bus2" if label.startswith("bus1 unplugged") else "bus1"
        base = refresh.period(refs[measured], *await window(args.window / 2))
        c0 = bus1.cycles
        t0 = time.monotonic()
        if label.startswith("bus1 unplugged"):
            sim("set_fault", "bus1", None, "unplugged")
            want = len(bus1.devices)
        elif label.startswith("readdressed"):
            for k, a in enumerate(faulty):
                sim("readdress", "bus1", a, 200 + k)
            want = len(faulty)
        else:
            for a in faulty:
                sim(*call(a))
            want = len(faulty)
        await until(lambda: sum(d.lost for d in bus1.devices) >= want, 120)
        onset_s, onset_cycles = time.monotonic() - t0, bus1.cycles - c0
        w = await window(args.window)
        period = refresh.period(refs[measured], *w)
        if label.startswith("bus1 unplugged"):
            sim("set_fault", "bus1", None, "none")
        elif label.startswith("readdressed"):
            for k, a in enumerate(faulty):
                sim("readdress", "bus1", 200 + k, a)
        else:
            for a in faulty:
                sim("set_fault", "bus1", a, "none")
        back = await until(lambda: not any(d.lost for d in bus1.devices), 120)
        ratio = period / base
        results.append((label, ratio))
        print(f"{label:>34}: healthy sensors refreshed every {period * 1000:6.1f} ms vs {base * 1000:6.1f} ms all "
              f"healthy: x{ratio:.3f}; lost after {onset_cycles} cycles ({onset_s:.1f} s), recovered in {back:.1f} s",
              flush=True)
    await engine.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faulty", type=int, default=6, help="faulty cell sensors on bus1 (of 120)")
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured with the faults on")
    args = ap.parse_args()
    cfg = direct_bank(115200, strings=2, string_sensor=True)
    for b in cfg["buses"]:
        b["timeout_ms"] = 100
    cfg["gateway"]["poll"] = {"fast_s": 0, "slow_s": 3600, "stale_after_cycles": 3, "lost_retry_s": 10}
    path = write_config(cfg)
    sim = Sim(path)
    try:
        gw = Gateway(path, simulator=False, port_overrides=sim.ports)
        print(f"2 buses x (1 string sensor + 120 cell sensors) at 115200 baud, timeout 100 ms, 1 retry, polled back to "
              f"back; {args.faulty} faulty cell sensors on bus1; lost devices retried every 10 s", flush=True)
        results = asyncio.run(run(args, gw, sim))
    finally:
        sim.close()
    label, worst = max(results, key=lambda r: r[1])
    print(f"worst slowdown of the healthy sensors with {args.faulty} of 121 sensors faulty: "
          f"{(worst - 1) * 100:+.1f} % ({label}; target < 10 %)")


if __name__ == "__main__":
    main()
