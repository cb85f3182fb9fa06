"""The lived-in demo: the first start of a simulated bank back-fills months of simulated history.

With ``simulator.backfill_days`` > 0 and every bus on the simulator (never with a real bus), the first start
runs the simulated bank from its installation ``backfill_days`` ago up to now, in simulated time, through the
gateway's own paths (``gateway.simrun``): the string supervision, the alarm manager and its log, the analytics
(daily aggregates, IEEE 1188 baselines after the settling period, discharge events, forecasts, diagnoses) and
the history recorder (raw samples, roll-ups, retention).  Nothing is pre-recorded: every value comes from the
simulated sensors, with their errors.  The story:

* the batteries age (each its own way; the seed's weak cells faster);
* one battery (string 2, battery 37 on the default bank) sits next to a heat source: it runs hot, dries out
  and its ohmic value rises towards the replacement threshold (diagnosis: thermal stress, dry-out);
* a short mains blip early on, a capacity test (C/4 for 45 minutes) after the baselines, a thermal runaway on
  the last string caught by its alarm and stopped, and a recent outage two days ago;
* readings every few days for old months, daily for the baselines' week and the last ten days, every three
  hours for the last day; each event step by step (work proportional to what the pages show).

The files are written to ``<state_dir>/.backfill`` and moved into place at the end; ``<state_dir>/backfill.json``
marks the run (``running``, then ``done``).  An interrupted back-fill starts again from scratch at the next start;
a state folder that already has a history, an analytics state or an alarm log is never back-filled.  The live
simulator continues the same batteries (the marker keeps the installation time and the story), so a restart
does not make the bank young again.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GatewayError
from .sim.model import YEAR, BankModel

if TYPE_CHECKING:
    from .config import Config
    from .simrun import SimulatedGateway

log = logging.getLogger(__name__)

DAY = 86400.0
MARKER = "backfill.json"
STAGING = ".backfill"
HOT_BATTERY = (2, 37)  # the battery that deteriorates (clipped to the bank)
HOT_OFFSET_C = 3.5  # it runs this much warmer than its neighbours
HOT_RISE = 0.24  # its ohmic value at the end of the back-fill over its baseline (warning at +20 %, replace at +30 %)
EVENT_S = 9 * 3600.0  # an event with its recharge and the SOC's anchoring on float takes at most this long


@dataclass
class Plan:
    """What the first start does: ``needed`` (back-fill now) and the bank's history (installation, end)."""

    days: float
    epoch: float  # when the simulated batteries were installed: the history's start
    end: float  # the history's end (the first start)
    needed: bool
    state_dir: Path
    story: dict[str, Any] = field(default_factory=dict)
    skip_reason: str = ""

    @property
    def marker(self) -> Path:
        return self.state_dir / MARKER


def source_problem(config: Config) -> str | None:
    """Why this config gets no back-fill (None: it gets one): the simulator off, ``backfill_days`` 0, a real bus."""
    sim = config.section("simulator")
    if not sim["enabled"] or not sim["backfill_days"]:
        return "simulator.backfill_days is 0 or the simulator is off"
    real = [b.name for b in config.topology.buses if b.port != "sim"]
    if real:
        return f"bus {real[0]} is a real serial port: history is only back-filled for a wholly simulated bank"
    return None


def state_targets(config: Config) -> dict[str, Path]:
    """Where each state file the back-fill writes lives in the running gateway."""
    from .alarms.manager import LOG_FILE
    from .analytics import state_path
    from .history import db_path
    from .strings.supervisor import STATE_FILE

    return {"history": db_path(config), "analytics": state_path(config), "alarms": config.state_dir / LOG_FILE,
            "strings": config.state_dir / STATE_FILE}


def _lived(config: Config) -> str | None:
    """A state file that already holds the gateway's own past (never overwritten by a back-fill)."""
    for name, path in state_targets(config).items():
        if path.exists() and path.stat().st_size > 0:
            return f"{name} ({path})"
    return None


def read_marker(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(state_dir: Path, data: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, state_dir / MARKER)


def baseline_days(config: Config) -> tuple[float, float]:
    """analytics.baseline: days a new battery settles before its baseline, days of readings the baseline takes."""
    bc = config.section("analytics")["baseline"]
    return float(bc["settle_days"]), float(bc["sample_days"])


def story_for(config: Config, epoch: float, days: float) -> dict[str, Any]:
    """The deteriorating battery of this bank and when its baseline is taken (kept in the marker)."""
    strings = {s.id: s for s in config.topology.strings}
    sid = HOT_BATTERY[0] if HOT_BATTERY[0] in strings else min(strings)
    cell = min(HOT_BATTERY[1], strings[sid].cells)
    settle, sample = baseline_days(config)
    return {"string": sid, "cell": cell, "hot_offset_c": HOT_OFFSET_C, "rise": HOT_RISE,
            "baseline_years": (settle + sample / 2) / 365.25, "end_years": days / 365.25}


def apply_story(model: BankModel, story: dict[str, Any]) -> None:
    """The deteriorating battery: warmer than the rest, drying out (its ohmic value accelerates so that it is
    ``rise`` over its baseline at the end of the back-fill, and crosses the replacement threshold some months
    later), floating a little low."""
    try:
        b = model.battery(int(story["string"]), int(story["cell"]))
    except (KeyError, IndexError, ValueError, TypeError):
        return
    b.temp_offset += float(story.get("hot_offset_c", HOT_OFFSET_C))
    b.float_offset -= 0.025 * b.cells_per_unit
    b.emf_drop = 0.02 * b.cells_per_unit
    base_y, end_y = float(story.get("baseline_years", 0.5)), float(story.get("end_years", 1.5))
    target = 1.0 + float(story.get("rise", HOT_RISE))
    if end_y - base_y < 60 / 365.25:  # no baseline in the back-fill: just age fast
        b.accel = 1.3
    else:
        lo, hi = 0.0, 20.0
        for _ in range(50):
            b.accel = (lo + hi) / 2
            if b.ohmic_at(end_y) / b.ohmic_at(base_y) >= target:
                hi = b.accel
            else:
                lo = b.accel
        b.accel = hi
    model.refresh()


def plan(config: Config, now: float | None = None) -> Plan | None:
    """The back-fill for this config at a start (reads the marker; writes nothing).  None: no back-fill and the
    simulator as it always was (the config wants none, or a bus is real)."""
    if source_problem(config) is not None:
        return None
    now = time.time() if now is None else now
    days = float(config.section("simulator")["backfill_days"])
    state_dir = config.state_dir
    marker = read_marker(state_dir)
    if marker is not None and marker.get("state") in ("done", "skipped", "failed") and "epoch" in marker:
        epoch = float(marker["epoch"])
        return Plan(float(marker.get("days", days)), epoch, float(marker.get("end", now)), False, state_dir,
                    dict(marker.get("story") or story_for(config, epoch, days)))
    epoch = now - days * DAY
    lived = _lived(config)
    reason = f"the state folder already holds {lived}" if lived else ""
    return Plan(days, epoch, now, not lived, state_dir, story_for(config, epoch, days), reason)


def live_model(config: Config, p: Plan, now: float | None = None) -> BankModel:
    """The simulator's bank for the live run: the back-filled batteries, as old as they are now."""
    from .sim.server import model_from_config

    now = time.time() if now is None else now
    model = model_from_config(config, scenarios=False, t0=now, age_years=max(0.0, (now - p.epoch) / YEAR))
    apply_story(model, p.story)
    return model


def skip(p: Plan) -> None:
    """Mark a state folder with a past of its own: the live simulator keeps this installation time from now on."""
    write_marker(p.state_dir, {"state": "skipped", "reason": p.skip_reason, "epoch": p.epoch, "end": p.end,
                               "days": p.days, "story": p.story})
    log.info("back-fill of simulated history skipped: %s", p.skip_reason)


def status_from_marker(p: Plan) -> dict[str, Any]:
    """What ``status()`` says of an earlier back-fill: its state, its summary, the simulated history's span."""
    marker = read_marker(p.state_dir) or {}
    out: dict[str, Any] = {**(marker.get("summary") or {}), "state": marker.get("state", "done")}
    if marker.get("state") == "done":
        out.update(simulated_from=_date(p.epoch), simulated_until=_date(p.end))
    for key in ("reason", "error"):
        if marker.get(key):
            out[key] = marker[key]
    return out


def failed(p: Plan, error: BaseException) -> None:
    """A back-fill that failed (a bug, a full card) is not tried at every start: delete the marker to retry."""
    shutil.rmtree(p.state_dir / STAGING, ignore_errors=True)
    write_marker(p.state_dir, {"state": "failed", "error": f"{type(error).__name__}: {error}", "epoch": p.epoch,
                               "end": p.end, "days": p.days, "story": p.story})


Progress = Callable[[dict[str, Any]], None]


class BackfillCancelled(GatewayError):
    """The gateway was asked to stop while back-filling."""


class Backfill:
    """One back-fill run (in a worker thread: it takes tens of seconds of CPU)."""

    def __init__(self, config: Config, p: Plan, progress: Progress | None = None) -> None:
        self.config = config
        self.plan = p
        self.progress = progress
        self.staging = p.state_dir / STAGING
        self.started = time.monotonic()
        self.cpu0 = time.process_time()
        self._done_units = 0.0
        self._total_units = 1.0
        self._last_report = -1e9
        self.summary: dict[str, Any] = {}
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop at the next step (SIGTERM, Ctrl-C): the next start begins the back-fill again."""
        self._cancel.set()

    # -- progress --------------------------------------------------------------------------------------------
    def _report(self, sim_t: float, units: float = 0.0, force: bool = False) -> None:
        if self._cancel.is_set():
            raise BackfillCancelled("stopped while back-filling the simulated history; the next start begins it "
                                    "again")
        self._done_units += units
        now = time.monotonic()
        if not force and now - self._last_report < 3.0:
            return
        self._last_report = now
        p = self.plan
        day = max(0.0, (sim_t - p.epoch) / DAY)
        pct = min(100.0, 100.0 * self._done_units / self._total_units)
        info = {"state": "running", "percent": round(pct), "day": int(day), "days": int(p.days),
                "simulated_date": _date(sim_t), "elapsed_s": round(now - self.started, 1)}
        log.info("back-filling simulated history: %d %% (simulated day %d of %d, %s), %.0f s; the faces start "
                 "when it is done", info["percent"], info["day"], info["days"], info["simulated_date"],
                 info["elapsed_s"])
        if self.progress is not None:
            self.progress(info)

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from .simrun import SimulatedGateway

        p = self.plan
        log.info("first start of the simulated bank: back-filling %g days of simulated history (%s .. %s) "
                 "through the recording, analytics and alarms; the faces start when it is done",
                 p.days, _date(p.epoch), _date(p.end))
        if self.staging.exists():
            shutil.rmtree(self.staging)  # an interrupted run: start again from scratch
        self.staging.mkdir(parents=True)
        write_marker(p.state_dir, {"state": "running", "epoch": p.epoch, "end": p.end, "days": p.days,
                                   "story": p.story, "started": time.time()})
        model = live_model(self.config, p, now=p.epoch)  # new batteries at the history's start
        settings: dict[str, dict] = {"history": {"path": "history.sqlite"}, "analytics": {"path": "analytics.sqlite"}}
        an = self.config.section("analytics")
        if not an.get("install_date") and not an.get("install_dates"):
            settings["analytics"]["install_date"] = _date(p.epoch)  # baselines after the settling period
        from .sim.drive import Cadence

        sim = SimulatedGateway(self.config.path, model=model, state_dir=self.staging, settings=settings,
                               forecasts=False, analytics_every_s=300.0,
                               cadence=Cadence(step_s=20.0, cells_s=120.0, ohmic_s=DAY, cells_idle_s=1800.0))
        recorder, db = self._recorder(sim)
        # the staged files are thrown away if the run is interrupted: no need to wait for the disk at every commit
        if sim.analytics is not None:
            sim.analytics.state.conn.execute("PRAGMA synchronous=OFF")
        if db is not None:
            db.conn().execute("PRAGMA synchronous=OFF")

        def flush(t: float, final: bool = False) -> None:
            if recorder is not None:
                recorder.flush(t, final=final)

        ok = False
        try:
            self._story(sim, flush)
            if sim.analytics is not None:
                sim.analytics.run_jobs(p.end)  # forecasts and diagnoses from the history
                sim.analytics.tick(p.end)
                if sim.alarms is not None:
                    sim.alarms.drive(p.end)
            flush(p.end, final=True)
            self._report(p.end, 10.0, force=True)
            self.summary = self._summarise(sim)
            ok = True
        finally:
            if recorder is not None:
                sim.gateway.store.unsubscribe(recorder.add)
            if db is not None:
                db.close()
            sim.close()
            if not ok:
                shutil.rmtree(self.staging, ignore_errors=True)
        os.sync()  # what was staged without waiting is on the card before the marker says done
        self._install()
        elapsed = time.monotonic() - self.started
        self.summary.update(state="done", percent=100, elapsed_s=round(elapsed, 1),
                            cpu_s=round(time.process_time() - self.cpu0, 1), days=p.days,
                            simulated_from=_date(p.epoch), simulated_until=_date(p.end))
        write_marker(p.state_dir, {"state": "done", "epoch": p.epoch, "end": p.end, "days": p.days,
                                   "story": p.story, "finished": time.time(), "summary": self.summary})
        log.info("back-fill done in %.0f s: %g simulated day%s, %d discharges (%d capacity tests), %d alarm log "
                 "entries, %d baselines, %d forecasts; starting the faces", elapsed, p.days, "" if p.days == 1 else "s",
                 self.summary["discharges"], self.summary["capacity_tests"], self.summary["alarm_log"],
                 self.summary["baselines"], self.summary["forecasts"])
        if self.progress is not None:
            self.progress(dict(self.summary))
        return self.summary

    def _recorder(self, sim: SimulatedGateway):
        from .history import open_history
        from .history.recorder import PointFilter, Recorder

        cfg = sim.gateway.config.section("history")
        if not cfg["enabled"]:
            return None, None
        db = open_history(sim.gateway.config)
        recorder = Recorder(db, sim.gateway.catalog, PointFilter(cfg["include"], cfg["exclude"]),
                            raw_interval_s=cfg["raw"]["interval_s"], intervals=cfg["raw"]["intervals"])
        sim.gateway.store.subscribe(recorder.add)
        return recorder, db

    def _install(self) -> None:
        """Move the staged files into the state folder (their configured places)."""
        staged = state_targets(_with_state_dir(self.config, self.staging))
        for name, target in state_targets(self.config).items():
            src = staged[name]
            if not src.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("-wal", "-shm"):
                extra = Path(str(src) + suffix)
                if extra.exists():
                    os.replace(extra, Path(str(target) + suffix))
            os.replace(src, target)
        shutil.rmtree(self.staging, ignore_errors=True)

    def _summarise(self, sim: SimulatedGateway) -> dict[str, Any]:
        a = sim.analytics
        events = a.events_finished if a is not None else []
        fcs = a.state.forecasts() if a is not None else {}
        return {"discharges": _failures(events), "capacity_tests": _failures([e for e in events
                                                                            if e.get("capacity_test")]),
                "alarm_log": len(sim.alarm_log()), "baselines": len(a.baselines) if a is not None else 0,
                "forecasts": sum(1 for f in fcs.values() if f.get("eol_ts") is not None),
                "hot_battery": f"string {self.plan.story.get('string')} battery {self.plan.story.get('cell')}"}

    # -- the story -------------------------------------------------------------------------------------------
    def _schedule(self) -> tuple[list[float], list[tuple[float, str]]]:
        """The reading times (jumps) and the events, in seconds since the epoch."""
        p = self.plan
        d = p.days
        settle, sample = baseline_days(self.config)
        days: set[float] = {1 / 24}
        # before the baselines only the trends and the life budget read them: every two weeks at most; after,
        # the forecasts fit them: about 75 over the whole history, at least weekly
        coarse = max(1.0, math.ceil((d - 10) / 75))
        has_baselines = settle + sample + 2 < d
        x = 1.0
        while x < d - 10:
            days.add(x)
            x += max(coarse, 14.0) if has_baselines and x < settle - 1 else coarse
        if has_baselines:  # the baselines' week, daily
            days.update(float(k) for k in range(int(settle) - 1, int(settle + sample) + 3))
        days.update(float(k) for k in range(max(1, int(d) - 10), int(d)))
        days.update(d - 1 + h / 24 for h in range(0, 24, 3) if d - 1 + h / 24 > 0)
        jumps = sorted(p.epoch + k * DAY for k in days if 0 < k < d)
        events: list[tuple[float, str]] = []
        if d >= 30:
            events.append((0.15 * d, "blip"))
        cap_day = settle + sample + 14 if settle + sample + 20 < d - 10 else 0.4 * d
        events.append((cap_day, "capacity_test"))
        events.append((0.8 * d if d >= 30 else 0.6 * d, "thermal"))
        events.append((max(0.8 * d + 0.5, d - 2) if d >= 5 else 0.85 * d, "outage"))
        return jumps, sorted((p.epoch + k * DAY, kind) for k, kind in events)

    def _story(self, sim: SimulatedGateway, record: Callable[[float], None]) -> None:
        jumps, events = self._schedule()
        event_units = 12.0
        self._total_units = len(jumps) + event_units * len(events) + 10.0
        a = sim.analytics
        if a is not None:  # readings every few days: the temperature life budget counts the whole gap
            a.max_gap_s = max(DAY, (max((b - a_ for a_, b in zip(jumps, jumps[1:], strict=False)), default=DAY)))
            a.republish_s = 366 * DAY  # an unchanged derived value is not put again (no face watches it go stale)
        last_flush = [sim.model.t]

        def flush(t: float) -> None:
            if t - last_flush[0] >= 3600.0:
                record(t)
                last_flush[0] = t

        self._report(sim.model.t, force=True)
        pending = list(events)

        def event(at: float, kind: str) -> None:
            at = max(at, sim.model.t)
            if at + EVENT_S <= self.plan.end:  # (a short back-fill may have no room left for the last ones)
                self._event(sim, at, kind, flush)
            self._report(sim.model.t, event_units)

        for t in jumps:
            while pending and pending[0][0] <= t:
                event(*pending.pop(0))
            if t <= sim.model.t:
                self._report(sim.model.t, 1.0)
                continue
            sim.jump(t)
            record(t)
            last_flush[0] = t
            self._report(t, 1.0)
        for at, kind in pending:
            event(at, kind)
        if sim.model.t < self.plan.end:
            sim.jump(self.plan.end)

    def _event(self, sim: SimulatedGateway, at: float, kind: str, flush: Callable[[float], None]) -> None:
        """One event step by step: the readings at the pace a page shows them (string values every step, the
        batteries every few minutes while something happens, every 15 minutes while the strings recharge)."""
        from .sim.drive import Cadence

        model = sim.model
        busy = Cadence(step_s=30.0, cells_s=300.0, ohmic_s=DAY, cells_idle_s=1800.0)
        slow = Cadence(step_s=600.0, cells_s=1800.0, ohmic_s=DAY, cells_idle_s=1800.0)
        hold = slow
        sim.jump(at - 300.0)
        sim.cadence, sim._analytics_every = slow, 900.0
        sim.run_for(300.0, on_step=flush)
        strings = sorted(model.strings)
        if kind == "thermal":
            sid = strings[-1]
            sim.cadence, sim._analytics_every = Cadence(step_s=30.0, cells_s=300.0, ohmic_s=DAY), 600.0
            model.start_thermal_runaway(sid)
            onset = model.t
            found: list[float] = []

            def watch(t: float) -> None:
                flush(t)
                if not found and any(al.key.rule == "string_thermal_runaway" for al in sim.alarm_table()):
                    found.append(t)
                    log.info("back-fill: thermal runaway on string %s on %s, critical alarm after %.0f min", sid,
                             _date(onset), (t - onset) / 60.0)
                # the operator comes 10 minutes after the alarm, finds the hot string, lowers its float voltage
                if found and t >= found[0] + 600.0 and model.strings[sid].runaway_since is not None:
                    model.stop_thermal_runaway(sid)

            sim.run_for(4200.0, on_step=watch)
            model.stop_thermal_runaway(sid)
            sim.cadence, sim._analytics_every = slow, 900.0
            sim.run_for(5400.0, on_step=flush)  # the heat goes, the alarms clear
            return
        amps, minutes = {"blip": (150.0, 4.0), "capacity_test": (None, 45.0), "outage": (150.0, 8.0)}[kind]
        sim.cadence, sim._analytics_every = busy, 300.0
        for sid in strings:
            st = model.strings[sid]
            model.set_mode(sid, "discharge", amps if amps is not None else st.capacity_ah / 4.0)
        sim.run_for(minutes * 60.0, on_step=flush)
        for sid in strings:
            if model.strings[sid].mode == "discharge":
                model.set_mode(sid, "recharge")
        sim.cadence, sim._analytics_every = slow, 900.0
        limit = model.t + 2 * DAY
        # (in long stretches: every run_for reads every battery once at its start)
        while model.t < limit and any(st.mode != "float" for st in model.strings.values()):
            sim.run_for(2 * 3600.0, on_step=flush)
        anchor = float(self.config.section("analytics")["soc"]["anchor_hold_s"])
        sim.cadence = hold
        sim.run_for(anchor + 900.0, on_step=flush)  # back on float long enough for the SOC to be anchored at 100 %


def _failures(events: list[dict]) -> int:
    """Every string discharges in a mains failure: the failures, counted once (their events start together)."""
    starts = sorted(e["start"] for e in events)
    return sum(1 for i, t in enumerate(starts) if i == 0 or t - starts[i - 1] > 3600.0)


def _with_state_dir(config: Config, state_dir: Path) -> Config:
    from .config import Config as _Config

    data = dict(config.data)
    data["gateway"] = {**data["gateway"], "state_dir": str(state_dir)}
    data["history"] = {**config.section("history"), "path": "history.sqlite"}
    data["analytics"] = {**config.section("analytics"), "path": "analytics.sqlite"}
    return _Config(path=config.path, data=data, topology=config.topology, profiles=config.profiles)


def _date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")
