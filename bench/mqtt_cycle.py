"""MQTT: the CPU of a publish cycle with everything the uploader runs (producer, queue, sender thread, paho's
network thread, the broker's acknowledgements), all threads counted, against a local mosquitto.

bench/changed_work.py times the payloads' composition alone, in one thread; this runs the uploader as the face
does (``MqttUploader.start``) on the default bank's store, written each cycle as the simulated bank writes it
(bench/changed_work.py's pattern: about half of the voltages new, every deviation new, a device's readings
sharing their time), and counts the process's CPU (user + system, every thread) over the cycles, less the same
cycles' store writes measured without the uploader.  A cycle every 0.25 s (``interval_s``), so that a run is
short; the work per cycle is the same as at 5 s.  Run it from another checkout's ``bench/`` for a before/after
(it measures the ``gateway`` of the tree it sits in).

    .venv/bin/python bench/mqtt_cycle.py [--cycles 80]

Issue 18, session 7 (branch i18-cpu4 against main 8306170, alternately, twice each, load average 0.1-1.0):
6.9-7.6 -> 5.3-5.8 ms of CPU per publish cycle (0.14-0.15 -> 0.11-0.12 % of one core at the default 5 s): the
payloads composed as text, their columns rounded in C, a column read with the values of its last read passed on
a list comparison (bench/changed_work.py: 5.3-5.5 -> 4.1-4.4 ms), the cycle queued on the event loop when it
needs no disk (no hand-off to a worker thread), the sender thread woken by an acknowledgement only when it waits
for one.

The last line printed is the headline: ms of CPU per publish cycle.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import random
import resource
import tempfile
import time
from pathlib import Path

from _common import ROOT  # noqa: F401  (the tree measured on the path first)
from changed_work import POLLED_CELLS, calm, gateway

from gateway.alarms.manager import AlarmManager
from gateway.app import Gateway
from gateway.outputs.mqtt.face import MqttUploader
from gateway.points import Quality, Reading
from tests.mqtt_peers import Mosquitto

INTERVAL_S = 0.25


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # (every thread of the process)
    return usage.ru_utime + usage.ru_stime


async def run(gw: Gateway, batches: list, uploader: MqttUploader | None) -> float:
    """The batches written one per interval (the uploader started first, connected and settled); CPU seconds."""
    if uploader is not None:
        await uploader.start()
        for _ in range(200):
            if uploader.connected:
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit("the uploader did not connect to the broker")
        await asyncio.sleep(1.0)  # (the first cycle and the discovery settings, if any, out of the way)
    t0 = cpu_s()
    for batch in batches:
        gw.store.put_many(batch)
        await asyncio.sleep(INTERVAL_S)
    spent = cpu_s() - t0
    if uploader is not None:
        await uploader.stop()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=80, help="publish cycles measured (default 80)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        try:
            gw = gateway(Path(tmp))
            mgr = AlarmManager(gw, gw.config.section("alarms"), clock=lambda: 0.0)
            refs = [e.ref for e in gw.pointmap.entries]
            values = {ref: calm(mgr, ref) for ref in refs}
            calm_values = dict(values)
            written = [r for r in refs if r.point in POLLED_CELLS or r.point.startswith(("string.", "gateway.bus_"))]
            rng = random.Random(1)
            now = time.time()
            gw.store.put_many([(ref, Reading(values[ref], Quality.GOOD, now)) for ref in refs])
            batches = []
            for k in range(args.cycles):
                for ref in written:
                    if ref.point == "cell.voltage" and rng.random() < 0.5:
                        values[ref] = (round(values[ref] * 1000) + rng.choice((-2, -1, 1, 2))) * 0.001
                    elif ref.point == "cell.voltage_average_deviation":
                        values[ref] = calm_values[ref] + rng.uniform(-0.003, 0.003)
                batches.append([(ref, Reading(values[ref], Quality.GOOD, now + k + (ref.string or 0) * 0.25))
                                for ref in written])  # (a string's devices: one time each)
            cfg = {**gw.config.section("mqtt"), "enabled": True, "host": "127.0.0.1", "port": broker.port,
                   "interval_s": INTERVAL_S}
            Gateway.freeze_startup_objects()
            without = asyncio.run(run(gw, batches, None))
            with_uploader = asyncio.run(run(gw, batches, MqttUploader(gw, cfg)))
        finally:
            if broker.proc is not None:
                broker.proc.terminate()
                broker.proc.wait(10)
    n = args.cycles
    print(f"{n} publish cycles of the default bank: {with_uploader:.2f} s of CPU with the uploader, {without:.2f} s "
          f"without (the store's writes)")
    print(f"MQTT uploader: {(with_uploader - without) / n * 1e3:.2f} ms of CPU per publish cycle (all threads)")


if __name__ == "__main__":
    main()
