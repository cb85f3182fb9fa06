"""Work proportional to what changed: an MQTT publish cycle and an alarm evaluation, incremental against plain,
and the rest of a cycle's work outside the engine (store, history, analytics, string supervision).

The default bank's point map (4 strings x 120 batteries, every face's points), no I/O: the store is written as
the simulated bank writes it every 5 s cycle (the cell sensors' voltage, temperature, balancing and status, the
analytics' voltage deviation, the string sensors and the bus figures: about 2500 of 8300 points; about half of
the voltages with a new value, each a register times its scale, and every deviation new, off the 3-decimal grid,
as the analytics compute it), then, in the same process, on the same store states:

  * MQTT: ``PayloadBuilder.messages`` from a snapshot (the plain path) against ``FeedPayloads.messages`` from
    the change feed, both encoded as the queue encodes them (and checked byte for byte equal);
  * alarms: an ``AlarmManager`` with ``incremental=False`` (every reading judged) against one with the default
    (only changed values, the delays in a heap), each fed the same batches on its own store, in simulated time;
  * the rest (``Components``, a third store with the string supervision's transforms and the analytics'
    listener on it): the store's ``put_many`` of the batch and of the analytics' outputs, the history
    recorder's ``add`` of what was stored, the analytics tick, the string supervision's tick every 10 s.  These
    have no plain path to compare with: run this file from another checkout's ``bench/`` (it measures the
    ``gateway`` of the tree it sits in) for a before/after.

CPU time per cycle (``time.process_time``) and the ratio plain / incremental; ``--every`` writes every point
each cycle instead (the worst case for the incremental paths).

    .venv/bin/python bench/changed_work.py [--cycles 30] [--every]

Measured on this machine (2 cores shared, load average 5-7): MQTT 18 ms -> 8 ms per cycle (2.3x), alarms
18 ms -> 11 ms (1.6x); with every point written each cycle, MQTT 25 -> 26 ms (0.9x), alarms 1.4x.

Issue 18, CPU pass outside the engine (branch i18-cpu against main 26bf38e, this file run from both trees,
alternately, twice each, load average 0.5-1.6), ms per 5 s cycle, main -> branch:
    MQTT from the change feed 8.5-9.2 -> 7.0-7.5 (a column of GOOD floats read in C, rounded again only
        when its values' bits changed);
    alarms incremental 11.9-12.3 -> 7.4-7.8 (plain 17.2-18.4 -> 15.7-16.3: a per-point route, the same value
        passed over without a call, float suppression from one time per string, the reference read once per
        batch, a new value within every setpoint judged quiet from two bounds);
    store 2.9-3.0 -> 2.0-2.4 (no store transform per battery temperature: the string supervision reads them
        at its tick), history 5.1-5.3 -> 3.4-3.7 (a point's series and index found once, a raw slot made
        whole), analytics 6.8 -> 6.2-6.4 (columns read in C, the deviations put as one column), strings
        0.1 -> 0.2;
    in all, 36 -> 27 ms per cycle (0.72 -> 0.55 % of one core of this machine).

Issue 18, second CPU pass (branch i18-cpu2 against main da4bfed, this file run from both trees, alternately,
twice each, 60 cycles, load average 1.2-1.6; the values as above since this pass: the voltages as registers
times their scale, the deviations new every tick, and a calm cell temperature that respects the over-ambient
rule: it sat under the low setpoint, and 480 alarms raised in the measured window weighed on both alarm paths),
ms per 5 s cycle, main -> branch:
    alarms incremental 4.2-4.3 -> 2.1 (the manager passes over a reading of the value last judged itself, for
        points judged by rules alone (float-only and over-ambient rules included), marks the points no rule
        needs once, sends a changed reading straight to the evaluator, and notes a new value within every
        setpoint of a point at rest as judged without the two calls);
    MQTT from the change feed 6.7-7.1 -> 6.2 (a column read in one zip; when at most three quarters of a
        column changed, each battery's text kept and only the changed ones rounded and written again: one
        column of 120 with half new 225-260 -> 174-206 us, a computed column new every tick as before);
    history 3.6-3.8 -> 3.5-3.6 (a reading inside its series' open slot and bucket placed without dividing);
    store 2.0-2.2 -> 1.9-2.0 (no change of its own: the analytics' listener is in it);
    in all (alarms, MQTT, history, store) 16.5-17.4 -> 13.7-13.9 ms per cycle (0.34 -> 0.28 % of one core).
    Tried and left out, measured no cheaper or dearer: the store's transform search in C (three chained maps:
    86 against 53 us for a 481-item batch), texts written without ``round`` for values already on the grid
    (2.2x dearer on the deviations' column), the intersection of a fully written column skipped.

Issue 18, analytics pass (branch i18-an against main da4bfed, this file run from both trees, alternately, load
average 0.4-1.8).  This file now has the analytics' gateway float (a float current, the state the string
supervision finds from it: the daily aggregates count float voltages, as on the simulated bank), counts the
analytics' store listener with the analytics, not the store, freezes the start-up objects as a running gateway
does (a full collection, ~0.1 s with three gateways built, had landed in whichever component allocated next) and
times the analytics' jobs once.  ms per 5 s cycle, ``--cycles 60``, main -> branch:
    analytics (tick and listener) 7.6-7.8 -> 3.5-3.6 (2.1-2.2x; before the listener was counted with it and
        without the freeze: 6.3-7.2 -> 2.9-3.4): a steady cycle 5.6-6.8 (median 6.0) -> 2.5-3.2 (median 2.7),
        a republish cycle (every republish_s, every battery's nine slow outputs put again) 19-30 -> 9-18.  A
        string's batteries are columns: an input column read again unchanged is taken as it was, a string
        whose slow-input columns are as before and not due skips its batteries, the daily sums and the life
        budget are added as whole columns (a whole column's count one number), the aging factor and the float
        setpoint worked out once per temperature, a republish puts the kept values of unchanged batteries in
        C, observe() queues battery voltages only while a discharge may be open;
    store 2.0 -> 1.6-1.7 with the listener counted in it (1.6 -> 1.4 without);
    analytics jobs 47-51 -> 43-48 ms per run (the day's flush: one query and one executemany, not a SELECT and
        an INSERT per battery; its cost in the forecasts' JSON is unchanged).
    Every tick's outputs are the same values at the same times (tests/test_analytics_trace.py replays a trace
    recorded from main's engine).  bench/controller_budget.py `--seconds 60 --warmup 75 --detail 40` (py-spy,
    about 200 busy samples a run, so a component's share is +-30 %), main (`--tree`) then branch, load average
    0.5-1.3: analytics 0.301 -> 0.153 % of a core (11.6 % -> 6.0 % of the gateway's CPU); the gateway 2.60 and
    2.57 % of a core (the engine's 1.34-1.41 % dominates the noise), RSS 78.3 MB both.

Issue 18, third CPU pass on alarms, history and the store (branch i18-cpu3 against main 8306170, this file run
from both trees, alternately, twice each, 60 cycles, load average 0.8-1.1), ms per 5 s cycle, main -> branch:
    alarms incremental 1.7-1.8 -> 1.4-1.5 (plain 10.9-11.0 -> 11.6-12.1: the plain path is unchanged, the
        machine is shared); readings judged 47696 both.  The gain is larger on a live bank, where the cell
        temperatures move: a cell temperature within its setpoints and its over-ambient ones is now judged
        quiet in line (its slot "ranged" with one reference point), and so is a voltage after readings of the
        same value (their conditions caught up in line): bench/recorded_work.py, on 150 s recorded from a live
        default bank, 2.85-2.93 -> 2.09-2.23, the readings sent to ``_judge`` about 350 -> 10 a cycle;
    history 2.9-3.0 -> 1.8-1.9 (the point looked up before its reading is read: two readings in three are of
        families not recorded; one range test for the open slot and bucket, where the two meet; the bucket's
        min and max from sentinels, not None; ``float.__round__`` instead of the builtin ``round``, which looks
        ``__round__`` up on every call);
    store 1.2 -> 1.2-1.3 (unchanged within the noise: the families with an ingest transform looked for in C
        from the refs; on the recorded batches 1.05-1.10 -> 0.95-1.06).
    The history writer's SQLite side (bench/recorded_work.py's replay, an hour of it: 150 s replayed 25 times,
    flushed every 60 s): one transaction a minute, one executemany of about 52 raw rows (a row per series and
    raw slot, a series' values as one vector: the string currents and voltages every 5 s, the cell families per
    string and the rest every minute) and 2 roll-up rows a minute (each series once per 15 min), 2 meta reads
    for the coarser tiers; once an hour the roll-up (a SELECT per series) and the retention (a DELETE per series
    and tier).  1.3 ms of CPU a minute: the writer thread's CPU is ``add`` (and its wake-ups, once a second).

The last line printed is the headline: both ratios.
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import ROOT

from gateway.alarms.manager import AlarmManager
from gateway.analytics import open_state
from gateway.analytics.engine import Analytics
from gateway.app import Gateway
from gateway.history import open_history
from gateway.history.recorder import PointFilter, Recorder
from gateway.outputs.mqtt.face import FeedPayloads, PayloadBuilder
from gateway.outputs.mqtt.queue import encode
from gateway.points import PointRef, Quality, Reading
from gateway.strings import make_supervisor, string_states

# what the simulated bank writes every cycle (bmsgw run on the default bank, counted from the change feed)
POLLED_CELLS = ("cell.voltage", "cell.temperature", "cell.balancing", "cell.sensor_status",
                "cell.voltage_average_deviation")
FLOAT_CURRENT_A = 0.4  # a 500 Ah string's float current: the simulated bank floats at steady state


def gateway(folder: Path) -> Gateway:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["gateway"]["state_dir"] = str(folder / "var")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return Gateway(path, simulator=False, port_overrides={b["name"]: "(not opened)" for b in data["buses"]},
                   entry_points=False)


def calm(mgr: AlarmManager, ref: PointRef) -> float:
    """A value no rule minds: between the warnings (a healthy bank on float raises nothing)."""
    if ref.point == "io.ambient_temperature":
        return 22.0
    highs, lows = [], []
    for rule in mgr.rules.rules_for(ref.point, ref.string):
        if rule.kind == "state":
            return 0.0
        # a rule against a reference point (cell over ambient temperature) compares the difference: its
        # setpoints in the point's own terms are the reference's calm value further
        offset = calm(mgr, PointRef(rule.reference)) if rule.reference else 0.0
        for side, _severity, threshold in rule.conditions():
            (highs if side == "high" else lows).append(threshold + offset)
    if highs and lows:
        return round((min(highs) + max(lows)) / 2, 3)
    if highs:
        return min(highs) - abs(min(highs)) / 2 - 1
    if lows:
        return max(lows) + abs(max(lows)) / 2 + 1
    return 1.0


class Components:
    """The rest of a running gateway's work on each cycle's batch, on a store of its own (the string supervision's
    transforms installed on it): the store's put (transforms, change feed, listeners), the history recorder's
    ``add`` of what was stored, the analytics tick and the string supervision's tick (every 10 s, as shipped)."""

    def __init__(self, gw: Gateway, now: float) -> None:
        self.gw = gw
        self.supervisor = make_supervisor(gw, persist=False)
        self.analytics = Analytics(gw.topology.strings, gw.config.section("analytics"), open_state(gw.config),
                                   gw.store, now=now, states=string_states(gw.catalog),
                                   canonical=gw.pointmap.canonical)
        cfg = gw.config.section("history")
        self.recorder = Recorder(open_history(gw.config), gw.catalog, PointFilter(cfg["include"], cfg["exclude"]),
                                 raw_interval_s=cfg["raw"]["interval_s"], intervals=cfg["raw"]["intervals"])
        self.stored: list[list[tuple[PointRef, Reading]]] = []
        self.listener_s = 0.0  # the analytics' store listener, counted as the analytics' (py-spy does too)
        gw.store.subscribe(self._observe)
        gw.store.subscribe(self.stored.append)  # (the history writer's queue)
        self.seconds = {"store": 0.0, "history": 0.0, "analytics": 0.0, "strings": 0.0}
        self.cycles = 0

    def _observe(self, batch: list[tuple[PointRef, Reading]]) -> None:
        t0 = time.process_time()
        self.analytics.observe(batch)
        self.listener_s += time.process_time() - t0

    def floating(self, batch: list[tuple[PointRef, Reading]]) -> list[tuple[PointRef, Reading]]:
        """The batch as a floating bank's: a small charge current, from which the string supervision finds the
        strings on float (the analytics' daily aggregates count float voltages then), no state written over it."""
        return [(ref, Reading(FLOAT_CURRENT_A, r.quality, r.ts)) if ref.point == "string.current" else (ref, r)
                for ref, r in batch if ref.point != "string.state"]

    def cycle(self, batch: list[tuple[PointRef, Reading]], now: float, measure: bool = True) -> None:
        clock = time.process_time
        l0, t0 = self.listener_s, clock()
        self.gw.store.put_many(batch)
        l1, t1 = self.listener_s, clock()
        while self.stored:
            self.recorder.add(self.stored.pop(0))
        t2 = clock()
        out = self.analytics.tick(now, publish=False)
        l3, t3 = self.listener_s, clock()
        self.gw.store.put_many(out)  # (recorded with the next cycle's batch, as the writer takes what is queued)
        l4, t4 = self.listener_s, clock()
        if self.cycles % 2 == 0:
            self.supervisor.tick(now)
        l5, t5 = self.listener_s, clock()
        self.cycles += 1
        if measure:
            for name, dt in (("store", t1 - t0 - (l1 - l0) + t4 - t3 - (l4 - l3)), ("history", t2 - t1),
                             ("analytics", t3 - t2 + l5 - l0), ("strings", t5 - t4 - (l5 - l4))):
                self.seconds[name] += dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=30, help="cycles measured (default 30)")
    ap.add_argument("--every", action="store_true", help="write every point every cycle (the worst case)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        folders = [Path(tmp) / "plain", Path(tmp) / "inc", Path(tmp) / "rest"]
        for folder in folders:
            folder.mkdir()
        plain_gw, inc_gw, rest_gw = (gateway(folder) for folder in folders)
        clock = {"now": 1_700_000_000.0}
        managers = [AlarmManager(gw, gw.config.section("alarms"), clock=lambda: clock["now"], incremental=inc)
                    for gw, inc in ((plain_gw, False), (inc_gw, True))]
        for m in managers:
            m.start(driven=True)
        refs = [e.ref for e in plain_gw.pointmap.entries]
        values = {ref: calm(managers[0], ref) for ref in refs}
        calm_values = dict(values)
        written = refs if args.every else [r for r in refs if r.point in POLLED_CELLS or r.point.startswith(
            ("string.", "gateway.bus_"))]
        builder = PayloadBuilder(inc_gw, "bmsgw", "string")
        feed = FeedPayloads(builder, inc_gw.store)
        now = clock["now"]
        for gw, m in zip((plain_gw, inc_gw), managers, strict=True):
            gw.store.put_many([(ref, Reading(values[ref], Quality.GOOD, now)) for ref in refs])
            m.drive(now)
        feed.messages(now)
        rest = Components(rest_gw, now)
        rest.cycle(rest.floating([(ref, Reading(values[ref], Quality.GOOD, now)) for ref in refs]), now,
                   measure=False)
        print(f"default bank: {len(refs)} points, {len(written)} written per cycle")
        # as a running gateway does after start-up: its long-lived objects out of the collector's way (else a
        # full collection, ~0.1 s here with three gateways built, lands in whichever component allocates next)
        Gateway.freeze_startup_objects()
        mqtt = {"plain": 0.0, "feed": 0.0}
        alarms = {"plain": 0.0, "incremental": 0.0}
        for _ in range(args.cycles):
            now += 5.0
            clock["now"] = now
            # about half of the voltages read a new value each cycle, as a register times its scale (1 mV: most,
            # not all, such floats are the nearest to a 3-decimal number); every deviation from the string's average
            # is new each tick, as the analytics compute it (a difference of floats, off that grid)
            for ref in written:
                if ref.point == "cell.voltage" and rng.random() < 0.5:
                    values[ref] = (round(values[ref] * 1000) + rng.choice((-2, -1, 1, 2))) * 0.001
                elif ref.point == "cell.voltage_average_deviation":
                    values[ref] = calm_values[ref] + rng.uniform(-0.003, 0.003)
            batch = [(ref, Reading(values[ref], Quality.GOOD, now - rng.uniform(0, 4))) for ref in written]
            for gw in (plain_gw, inc_gw):
                gw.store.put_many(batch)
            rest.cycle(rest.floating(batch), now)
            for name, m in zip(("plain", "incremental"), managers, strict=True):
                t0 = time.process_time()
                m.drive(now)
                alarms[name] += time.process_time() - t0
            t0 = time.process_time()
            expected = [encode(1, doc) for _, doc, _ in builder.messages(inc_gw.store.snapshot(), now)]
            t1 = time.process_time()
            got = [encode(1, doc) for _, doc, _ in feed.messages(now)]
            t2 = time.process_time()
            if got != expected:
                sys.exit("the payloads from the change feed differ from the plain ones")
            mqtt["plain"] += t1 - t0
            mqtt["feed"] += t2 - t1
        for m in managers:
            m.stop()
        # the analytics' jobs (every 6 h, the first a minute after start): the open day merged into the state
        # file, every battery's forecast and diagnosis worked out and saved
        t0 = time.process_time()
        rest.analytics.run_jobs(now)
        jobs_s = time.process_time() - t0
    n = args.cycles
    print(f"MQTT publish cycle: plain {mqtt['plain'] / n * 1e3:.1f} ms, from the change feed "
          f"{mqtt['feed'] / n * 1e3:.1f} ms")
    print(f"alarm evaluation:   plain {alarms['plain'] / n * 1e3:.1f} ms, incremental "
          f"{alarms['incremental'] / n * 1e3:.1f} ms (readings judged: {managers[0].evaluator.judged} and "
          f"{managers[1].evaluator.judged})")
    print("the rest, per cycle: " + ", ".join(f"{name} {sec / n * 1e3:.1f} ms" for name, sec in rest.seconds.items())
          + " (analytics: its tick and its store listener)")
    print(f"analytics jobs (forecasts and diagnoses, every 6 h): {jobs_s * 1e3:.0f} ms")
    print(f"work per cycle, plain / incremental: MQTT {mqtt['plain'] / mqtt['feed']:.1f}x, "
          f"alarms {alarms['plain'] / alarms['incremental']:.1f}x")


if __name__ == "__main__":
    main()
