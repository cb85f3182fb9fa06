"""The alarms, the store's put and the history recorder on what a running gateway's store really publishes:
a recording of a live default bank, replayed in-process.

``--record FILE``: the default bank (4 strings x 120 batteries, `fast_s: 5`) with the sensors in a process of
their own (`bmsgw simulate`) and the gateway in this one (every face on, MQTT off: no broker needed), real RTU
buses at 115200 baud; after a warm-up, every ``put_many`` and ``mark`` of the store for ``--seconds`` (what the
engine, the string supervision, the analytics and the alarms' levels write, in the order and the batches they
write it), pickled to FILE.

``--replay FILE`` (both may be given: record, then replay): each of ``--reps`` rounds builds a fresh gateway of
the recorded config (no port) with the string supervision's transforms on its store, an alarm manager driven on
the recorded clock, and a history ``Recorder`` flushed every 60 s as the writer does, then puts the recording
again, the first fifth unmeasured (slots, series and routes made), and prints the CPU time
(``time.process_time``) per 5 s of recording: the store's ``put_many``/``mark`` (transforms, change feed,
the listeners' hand-off), the alarm evaluation (``drive``), ``Recorder.add``, and its flushes (SQLite).  Also
printed: readings judged and alarm events, the same for any tree replaying the same file.  The minimum over
the rounds is the figure (the machine is shared).  Record at least two minutes: in a short recording the
points' first readings (slots, routes and series made) weigh on the figures.

Where bench/changed_work.py writes a synthetic pattern, this replays what the engine publishes (about 35
batches a cycle of about 85 readings, analytics republishes with None, temperatures that move with the
simulator's noise); run it from another checkout's ``bench/`` on the same FILE for a before/after.

    .venv/bin/python bench/recorded_work.py --record /tmp/bank.pkl --seconds 150
    .venv/bin/python bench/recorded_work.py --replay /tmp/bank.pkl [--reps 3]
    .venv/bin/python bench/recorded_work.py      # (both, on a file of its own that it removes)

Issue 18, CPU pass on alarms, history and the store (branch i18-cpu3 against main 8306170, one 150 s
recording, this file run from both trees alternately, twice each, load average 0.1-0.6), ms per 5 s cycle,
main -> branch:
    alarms 2.85-2.93 -> 2.09-2.23 (a cell temperature, whose over-ambient rule has a reference point, judged
        quiet in line from its two ranges; a voltage after readings of the same value too: 350 readings a
        cycle no longer reach ``_judge``); judged 30013 and 0 events on both;
    history ``add`` 2.63-2.64 -> 1.49-1.59 (the point looked up before its reading is read: two in three are of
        families not recorded; one range test for the open slot and bucket; ``float.__round__``);
    store 1.06-1.10 -> 1.00-1.06 (the transform check in C); flushes 0.10-0.11 both (one executemany a minute,
        about 55 rows: bench/changed_work.py's docstring);
    in all 6.6-6.7 -> 4.6-4.8 ms per cycle (0.13 -> 0.09-0.10 % of one core of this machine).

The last line printed is the headline: the components' ms per cycle and their sum.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import ROOT

CYCLE_S = 5.0


def record(path: Path, seconds: float, warmup: float) -> None:
    from controller_budget import bank, on_simulator  # (the issue-18 setup: every face on a free port)

    from tests.support import GatewayThread

    folder = Path(tempfile.mkdtemp(prefix="bmsgw-recorded-"))
    data = bank(4, 120, CYCLE_S)
    data["mqtt"]["enabled"] = False
    with on_simulator(data, folder) as config:
        gt = GatewayThread(config).start()
        try:
            store = gt.gateway.store
            records: list = []
            put_many, mark = store.put_many, store.mark

            def recording_put_many(items):
                items = list(items)
                records.append(("put", time.time(), items))
                return put_many(items)

            def recording_mark(refs, quality):
                refs = list(refs)
                records.append(("mark", time.time(), (refs, quality)))
                return mark(refs, quality)

            time.sleep(warmup)
            store.put_many, store.mark = recording_put_many, recording_mark  # type: ignore[method-assign]
            time.sleep(seconds)
            store.put_many, store.mark = put_many, mark  # type: ignore[method-assign]
        finally:
            gt.stop()
    with open(path, "wb") as f:
        pickle.dump({"config": data, "records": records}, f)
    n = sum(len(r[2]) for r in records if r[0] == "put")
    print(f"recorded {len(records)} batches, {n} readings in {seconds:.0f} s to {path}")


def replay_once(data: dict, records: list) -> dict[str, float]:
    from gateway.alarms.manager import AlarmManager
    from gateway.app import Gateway
    from gateway.history import open_history
    from gateway.history.recorder import PointFilter, Recorder
    from gateway.strings import make_supervisor

    with tempfile.TemporaryDirectory() as tmp:
        cfg_data = {**data, "gateway": {**data["gateway"], "state_dir": str(Path(tmp) / "var")}}
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(cfg_data, sort_keys=False))
        gw = Gateway(config, simulator=False, port_overrides={b["name"]: "(not opened)" for b in data["buses"]},
                     entry_points=False)
        make_supervisor(gw, persist=False)
        clock = {"now": records[0][1]}
        mgr = AlarmManager(gw, gw.config.section("alarms"), clock=lambda: clock["now"])
        mgr.start(driven=True)
        section = gw.config.section("history")
        recorder = Recorder(open_history(gw.config), gw.catalog, PointFilter(section["include"], section["exclude"]),
                            raw_interval_s=section["raw"]["interval_s"], intervals=section["raw"]["intervals"])
        queued: list = []
        gw.store.subscribe(queued.append)  # (the history writer's queue)
        Gateway.freeze_startup_objects()
        first = len(records) // 5
        seconds = dict.fromkeys(("store", "alarms", "history", "flush"), 0.0)
        clk = time.process_time
        next_flush = records[0][1] + 60.0
        for i, (kind, ts, payload) in enumerate(records):
            clock["now"] = ts
            t0 = clk()
            if kind == "put":
                gw.store.put_many(payload)
            else:
                gw.store.mark(*payload)
            t1 = clk()
            mgr.drive(ts)
            t2 = clk()
            for batch in queued:
                recorder.add(batch)
            queued.clear()
            t3 = t4 = clk()
            if ts >= next_flush:
                recorder.flush(ts)
                next_flush = ts + 60.0
                t4 = clk()
            if i >= first:
                for name, dt in (("store", t1 - t0), ("alarms", t2 - t1), ("history", t3 - t2), ("flush", t4 - t3)):
                    seconds[name] += dt
        recorder.flush(records[-1][1] + 3600.0, final=True)
        recorder.db.close()
        mgr.stop()
        cycles = (records[-1][1] - records[first][1]) / CYCLE_S
        out = {name: s / cycles * 1e3 for name, s in seconds.items()}
        out["judged"], out["events"] = mgr.evaluator.judged, mgr.events
        return out


def replay(path: Path, reps: int) -> None:
    with open(path, "rb") as f:
        rec = pickle.load(f)
    data, records = rec["config"], rec["records"]
    span = records[-1][1] - records[0][1]
    n = sum(len(r[2]) for r in records if r[0] == "put")
    print(f"{path}: {len(records)} batches, {n / span * CYCLE_S:.0f} readings per 5 s over {span:.0f} s "
          f"(measured from the first fifth on), gateway of {ROOT}")
    runs = [replay_once(data, records) for _ in range(reps)]
    best = {k: min(r[k] for r in runs) for k in ("store", "alarms", "history", "flush")}
    print(f"readings judged {runs[-1]['judged']:.0f}, alarm events {runs[-1]['events']:.0f}")
    print(f"ms per 5 s cycle (min of {reps}): " + ", ".join(f"{k} {v:.2f}" for k, v in best.items())
          + f"; in all {sum(best.values()):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, metavar="FILE", help="record a live default bank to FILE")
    ap.add_argument("--replay", type=Path, metavar="FILE", help="replay FILE (made with --record)")
    ap.add_argument("--seconds", type=float, default=120.0, help="recording length (default 120)")
    ap.add_argument("--warmup", type=float, default=45.0, help="seconds after start-up before recording (45)")
    ap.add_argument("--reps", type=int, default=3, help="replay rounds; the minimum is printed (3)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if args.record is None and args.replay is None:  # on its own (make bench): record, then replay, a temp file
        folder = Path(tempfile.mkdtemp(prefix="bmsgw-recorded-"))
        atexit.register(shutil.rmtree, folder, True)
        args.record = args.replay = folder / "bank.pkl"
    if args.record is not None:
        record(args.record, args.seconds, args.warmup)
    if args.replay is not None:
        if not args.replay.exists():
            sys.exit(f"{args.replay}: no such recording (make one with --record)")
        replay(args.replay, max(1, args.reps))


if __name__ == "__main__":
    main()
