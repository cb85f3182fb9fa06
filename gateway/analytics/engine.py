"""The analytics engine: reads the point store, publishes the derived families, remembers in ``StateDB``.

``observe(batch)`` is the store listener (quick: coulomb counting and discharge capture only);
``tick(now)`` computes and publishes every derived value (string aggregates, SOC and state, deviations,
baselines) and keeps the daily aggregates; ``run_jobs(now)`` (every few hours, off the event loop) fits the
trends: forecasts and diagnoses.  All of it takes ``now`` as an argument, so tests and benches drive it in
simulated time.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import sqlite3
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import chain, compress, repeat
from operator import add, itemgetter, lt, mul, ne, sub
from typing import Protocol

from ..points import PointRef, PointStore, Quality, Reading
from ..strings.states import StringStates, string_states
from ..topology import StringConfig
from . import diagnosis as dg
from .forecast import (
    YEAR_S,
    aging_factor,
    fit_trend,
    forecast_crossing,
    life_budget_years,
    plausible_curves,
    theil_sen,
    thin,
)
from .soc import SocParams, StringSoc, soc_from_ocv
from .state import DAY_S, Baseline, DailyRow, StateDB

log = logging.getLogger(__name__)

_GOOD = Quality.GOOD
_VALUE, _QUALITY, _TS = itemgetter(0), itemgetter(1), itemgetter(2)  # a Reading's fields (by index: quicker)
_READING = partial(tuple.__new__, Reading)  # Reading((value, quality, ts)) made in C (its __new__ is Python)
_NEVER = object()  # the last value put of an output never put: unequal to any value
CELL_INPUTS = ("cell.voltage", "cell.temperature", "cell.ohmic", "cell.emf")
# a battery's outputs worked out from its slow inputs (ohmic tests, EMF, baseline, forecast, verdict)
SLOW_POINTS = ("cell.ohmic_average_deviation", "cell.ohmic_baseline", "cell.ohmic_baseline_deviation", "cell.soh",
               "cell.soc", "cell.eol_date", "cell.eol_date_early", "cell.eol_date_late", "cell.diagnosis")
# the daily aggregates' fields counted every tick, and the sum each starts from: -0.0 + x is x for every x (0.0
# would turn a first -0.0 into 0.0)
_TICK_FIELDS = ("ohmic", "temp", "temp_rise", "v_float", "v_dev", "setpoint", "emf")
_ZERO_SUM = -0.0
SOH_TESTS = 7  # a battery's SOH from its ohmic rise: the median of this many tests (as the alarm rules judge)


def _same(ref: PointRef) -> PointRef:
    return ref


def parse_date(text: str | None) -> float | None:
    if not text:
        return None
    d = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    return d.timestamp()


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def soc_params(s: StringConfig, sc: dict) -> SocParams:
    """A string's SOC model from its battery and the ``analytics.soc`` settings."""
    return SocParams(
        capacity_ah=s.battery.capacity_ah, cells_per_unit=s.battery.cells_per_unit, units=s.cells,
        peukert=sc["peukert"], rated_hours=sc["rated_hours"], charge_efficiency=sc["charge_efficiency"],
        temp_coeff=sc["temp_coeff"], anchor_hold_s=sc["anchor_hold_s"], rest_hours=sc["rest_hours"],
        min_test_depth_pct=sc["min_test_depth_pct"], end_voltage_per_cell=sc["end_voltage_per_cell"])


class _Put(Protocol):
    def __call__(self, point: str, value: float | None, string: int, cell: int | None = None,
                 force: bool = False) -> None: ...


class _Outputs:
    """The readings of one tick: a value goes out when it changed, or when republish_s passed since it last
    went out (``force``: now anyway)."""

    __slots__ = ("canonical", "last", "now", "out", "refs", "republish")

    def __init__(self, now: float, last: dict, refs: dict, republish: float,
                 canonical: Callable[[PointRef], PointRef]) -> None:
        self.now, self.last, self.refs, self.republish = now, last, refs, republish
        self.canonical = canonical
        self.out: list[tuple[PointRef, Reading]] = []

    def put(self, point: str, value: float | None, string: int, cell: int | None = None, force: bool = False) -> None:
        key = (point, string, cell)  # plain tuples hash in C
        old = self.last.get(key)
        now = self.now
        if old is not None and old[0] == value and now - old[1] < self.republish and not force:
            return
        self.last[key] = (value, now)
        ref = self.refs.get(key)
        if ref is None:
            ref = self.refs[key] = self.canonical(PointRef(point, string, cell))
        self.out.append((ref, Reading(value, _GOOD, now)))


class _Column:
    """One string's batteries as columns (index i: battery i + 1): what the tick reads, remembers and puts for each
    battery, kept as lists so that a bank's worth of batteries costs the tick a few passes in C, not a Python turn
    per battery."""

    __slots__ = ("acc_n", "acc_sum", "acc_whole", "all_seen", "cells", "dev_last", "dev_refs", "dev_ts", "keys",
                 "last", "life", "refs", "seen", "slow_due", "slow_inputs", "slow_keys", "slow_refs", "sohs")

    def __init__(self, sid: int, cells: int, refs: dict[str, dict[tuple[int, int], PointRef]],
                 canonical: Callable[[PointRef], PointRef]) -> None:
        self.cells = range(1, cells + 1)
        self.keys = [(sid, c) for c in self.cells]  # each battery's key in the per-battery tables
        self.refs = [[refs[p][key] for key in self.keys] for p in CELL_INPUTS]
        # per input: the time of each battery's reading last counted in the daily aggregates
        self.seen = [[-1.0] * cells for _ in CELL_INPUTS]
        # per input: the readings of the last tick and what was made of them (values, new ones, all GOOD)
        self.last: list[_Read | None] = [None] * len(CELL_INPUTS)
        self.dev_refs = [canonical(PointRef("cell.voltage_average_deviation", sid, c)) for c in self.cells]
        self.dev_last: list = [_NEVER] * cells  # the deviation last put, and when
        self.dev_ts = [-math.inf] * cells
        # the slow inputs of the string's batteries (columns) when their outputs were last worked out, the first
        # battery's deadline to put them all again, and their SOHs
        self.slow_inputs: tuple | None = None
        self.slow_due = -math.inf
        # each battery's slow outputs: their keys in _Outputs.last, and their refs
        self.slow_keys = [tuple((p, sid, c) for p in SLOW_POINTS) for c in self.cells]
        self.slow_refs = [tuple(canonical(PointRef(p, sid, c)) for p in SLOW_POINTS) for c in self.cells]
        self.sohs: list[float] = []
        # the open day's aggregates per field: each battery's sum, and its count: the whole columns counted (one
        # number for the string) plus its own
        self.acc_sum: dict[str, list[float]] = {}
        self.acc_whole: dict[str, int] = {}
        self.acc_n: dict[str, list[int]] = {}
        self.clear_day()
        self.all_seen = False  # every battery has its first_seen (life budget) entry
        self.life: list[float | None] = [None] * cells  # each battery's life used (None: not seen yet)

    def clear_day(self) -> None:
        for f in _TICK_FIELDS:
            self.acc_sum[f] = [_ZERO_SUM] * len(self.keys)
            self.acc_whole[f] = 0
            self.acc_n[f] = [0] * len(self.keys)

    def counts(self, field: str) -> list[int]:
        whole = self.acc_whole[field]
        return list(map(add, self.acc_n[field], repeat(whole))) if whole else self.acc_n[field]

    def count(self, field: str, values: Sequence[float | None], read: _Read, complete: bool) -> None:
        """Count in the open day each battery's value whose reading (``read``) is new; ``complete``: no value is
        None.  A None or a non-finite value is not counted."""
        if read.all_fresh and complete and math.isfinite(sum(values)):  # type: ignore[arg-type]  # (complete)
            # (every value finite: a nan or an infinity would make the sum one)
            self.acc_sum[field] = list(map(add, self.acc_sum[field], values))
            self.acc_whole[field] += 1
            return
        if read.fresh is None:
            return
        sums, counts = self.acc_sum[field], self.acc_n[field]
        isfinite = math.isfinite
        for i in compress(range(len(read.fresh)), read.fresh):
            value = values[i]
            if value is not None and isfinite(value):
                sums[i] += value
                counts[i] += 1

    def forget(self, i: int) -> None:
        """Battery i + 1 was replaced: its open day is the old unit's, its slow outputs are worked out again."""
        for f in _TICK_FIELDS:
            self.acc_sum[f][i] = _ZERO_SUM
            self.acc_n[f][i] = -self.acc_whole[f]  # (its count: the whole columns counted from now on, and its own)
        self.slow_inputs = None
        self.all_seen = False


class _Read:
    """One input of one string's batteries at a tick: their readings (None: never read), the values (None where
    a battery has no GOOD value; ``complete``: none is None), which readings are new since the daily aggregates
    last counted them (``fresh``; None: none; ``all_fresh``: every one)."""

    __slots__ = ("all_fresh", "complete", "fresh", "readings", "values")

    def __init__(self, readings: list, values: list, fresh: list[bool] | None, complete: bool,
                 all_fresh: bool = False) -> None:
        self.readings, self.values, self.fresh, self.complete, self.all_fresh = (readings, values, fresh, complete,
                                                                                 all_fresh)


class Analytics:
    def __init__(self, strings: Sequence[StringConfig], cfg: dict, state: StateDB, store: PointStore,
                 now: float | None = None, states: StringStates | None = None,
                 canonical: Callable[[PointRef], PointRef] | None = None) -> None:
        """``states``: the codes of ``string.state`` (default: profiles/points.yaml's); ``canonical``: the
        PointRef object to read and put each point as (``PointMap.canonical``: the store's keys, found by
        identity)."""
        now = time.time() if now is None else now
        self.canonical = canonical = canonical or _same
        self.cfg = cfg
        self.codes = states or string_states()
        self.state = state
        self.store = store
        self.strings = {s.id: s for s in strings}
        self.install_ts: dict[int, float | None] = {}
        saved = state.load_soc()
        self.soc: dict[int, StringSoc] = {
            s.id: StringSoc(s.id, soc_params(s, cfg["soc"]), self.codes, saved.get(s.id)) for s in strings}
        self._take_settings(cfg)
        self.refs = {p: {(s.id, c): canonical(PointRef(p, s.id, c)) for s in strings for c in range(1, s.cells + 1)}
                     for p in CELL_INPUTS}
        self.string_refs = {(p, s.id): canonical(PointRef(p, s.id)) for s in strings
                            for p in ("string.voltage", "string.current", "string.state")}
        self.ambient_ref = canonical(PointRef("io.ambient_temperature"))
        # per string: its batteries as columns (every tick reads, counts and puts every battery)
        self._columns = {s.id: _Column(s.id, s.cells, self.refs, canonical) for s in strings}
        self._inbox: deque = deque()  # (point, string, cell, value, ts) queued by observe()
        # observe() queues battery voltages only while a discharge is open or a tick runs (it may open one):
        # between ticks with no discharge, _drain would drop them all
        self._capture_voltages = True
        self._aging: dict[float, float] = {}  # aging_factor by temperature, for _aging_halving
        self._aging_halving: float | None = None
        self._setpoint_cache: dict[tuple, dict[float | None, float]] = {}  # setpoint by temperature, by parameters
        self.lock = threading.RLock()  # tick, jobs and close run one at a time (tick may run in a thread)
        self._out_refs: dict[tuple, PointRef] = {}
        self._last_pub: dict[tuple, tuple[float | None, float]] = {}
        # per battery: (the slow inputs its outputs were worked out from, when all are put again, its SOH, the
        # outputs' values)
        self._slow: dict[tuple[int, int], tuple[tuple, float, float | None, tuple]] = {}
        self.acc_day = int(now // DAY_S)
        self.last_tick: float | None = None
        # the longest time between two ticks counted in the temperature life budget: beyond it the gateway was
        # off and the temperatures unknown (a back-fill that reads every few days raises it)
        self.max_gap_s = 86400.0
        self._gen = -1
        self._next_gen_check = 0.0
        self._next_baseline_check = 0.0
        self._next_soc_save = now + 60.0
        self._next_life_save = now + 600.0
        self.next_jobs = now + float(cfg.get("jobs_delay_s", 60.0))
        self.events_finished: list[dict] = []
        self.persist_errors = 0
        self._persist_failing = False
        fcs = state.forecasts()
        self.fc_pub = {k: (v.get("eol_ts"), v.get("early_ts"), v.get("late_ts")) for k, v in fcs.items()}
        self.dg_pub = {k: v["code"] for k, v in state.diagnoses().items()}
        self.replaced = state.last_replaced()
        life = state.life()
        self._life_other: dict[tuple[int, int], float] = {}  # the life used of batteries not in the topology
        for k, v in life.items():
            self._set_life(k, v[0])
        self.first_seen = {k: v[2] for k, v in life.items()}
        self.baselines: dict[tuple[int, int], Baseline] = state.baselines()
        self.recent_tests: dict[tuple[int, int], deque[float]] = {}  # the last ohmic test results per battery
        self._gen = state.generation()

    def _take_settings(self, cfg: dict) -> None:
        self.cfg = cfg
        for sid in self.strings:
            self.install_ts[sid] = parse_date(cfg.get("install_dates", {}).get(str(sid)) or cfg.get("install_date"))
        self.republish_s = float(cfg.get("republish_s", 60.0))  # unchanged values are put again this often

    def apply_config(self, cfg: dict) -> None:
        """A changed ``analytics`` section while running (thresholds, SOC parameters, install dates): taken
        between two ticks; what was learnt (SOC, open discharges, baselines, trends) carries on."""
        with self.lock:
            self._take_settings(cfg)
            for sid, soc in self.soc.items():
                soc.p = soc_params(self.strings[sid], cfg["soc"])
            self.next_jobs = min(self.next_jobs, time.time())  # forecasts and verdicts with the new thresholds

    # -- external changes (CLI, web) ----------------------------------------------------------------------------
    def _reload(self, now: float) -> None:
        """Baselines set and batteries replaced from outside: forget what belonged to a replaced unit."""
        old = self.replaced
        self.replaced = self.state.last_replaced()
        for key, ts in self.replaced.items():
            if old.get(key) != ts:
                for d in (self.first_seen, self.fc_pub, self.dg_pub, self.recent_tests, self._slow):
                    d.pop(key, None)
                self._set_life(key, None)
                column = self._columns.get(key[0])
                if column is not None and 1 <= key[1] <= len(column.keys):
                    column.forget(key[1] - 1)
                log.info("string %s battery %s was replaced: its baseline and trends start again", *key)
        self._persist("the life budget", self.save_life, now)
        self.baselines = self.state.baselines()
        self._gen = self.state.generation()

    def check_external(self, now: float) -> None:
        if self.state.generation() != self._gen:
            self._reload(now)

    # -- store listener ------------------------------------------------------------------------------------------
    def observe(self, batch: list[tuple[PointRef, Reading]]) -> None:
        """The store listener: only queues what the SOC needs (string currents, and battery voltages for a
        discharge's sag), in order; ``tick`` integrates it, so a slow tick never holds up the poller."""
        inbox = self._inbox
        voltages = self._capture_voltages
        for ref, r in batch:
            point = ref.point
            if (point == "string.current" or (voltages and point == "cell.voltage")) and r.quality is _GOOD \
                    and r.value is not None:
                inbox.append((point, ref.string, ref.cell, r.value, r.ts))

    def _drain(self) -> None:
        inbox = self._inbox
        socs = self.soc
        while inbox:
            point, string, cell, value, ts = inbox.popleft()
            soc = socs.get(string)
            if soc is None:
                continue
            if point == "string.current":
                soc.on_current(value, ts)
            elif soc.event is not None and ts >= soc.event.start:
                soc.event.add_voltage(cell, value, soc._last_i or 0.0, soc.soc)

    # -- the periodic computation ---------------------------------------------------------------------------------
    def _good(self, ref: PointRef) -> float | None:
        """The point's value when it is GOOD, else None."""
        r = self.store.get(ref)
        return r.value if r is not None and r.quality is _GOOD else None


    def tick(self, now: float | None = None, publish: bool = True) -> list[tuple[PointRef, Reading]]:
        """Compute every derived value at ``now`` and put the changed ones into the store (or, with
        ``publish=False``, only return them: the service computes in a worker thread and puts in the loop)."""
        self._capture_voltages = True  # (before the tick drains the inbox: see __init__)
        with self.lock:
            out = self._tick(time.time() if now is None else now)
        if publish:
            self.store.put_many(out)
        return out

    def _tick(self, now: float) -> list[tuple[PointRef, Reading]]:
        """One pass over the bank: each string's summary, state of charge and batteries; what changed (or is
        due again after republish_s) is returned to be put in the store."""
        self._housekeeping(now)
        dt_s = 0.0 if self.last_tick is None else min(max(now - self.last_tick, 0.0), self.max_gap_s)
        self.last_tick = now
        outputs = _Outputs(now, self._last_pub, self._out_refs, self.republish_s, self.canonical)
        ambient = self._good(self.ambient_ref)
        for sid, s in self.strings.items():
            self._tick_string(now, dt_s, sid, s, ambient, outputs)
        self._capture_voltages = any(soc.event is not None for soc in self.soc.values())
        self._save_due(now)
        return outputs.out

    def _housekeeping(self, now: float) -> None:
        """Take what other threads queued, notice state written by another process, close a day's aggregates."""
        self._drain()
        if now >= self._next_gen_check:
            self.check_external(now)
            self._next_gen_check = now + 1.0
        day = int(now // DAY_S)
        if day != self.acc_day:
            self._persist("the daily aggregates", self.flush_daily)
            self.acc_day = day

    def _cell_columns(self, w: _Column) -> list[_Read]:
        """Per input (voltage, temperature, ohmic, EMF): what the string's batteries read (see _Read)."""
        get_many = self.store.get_many
        columns = []
        for j, (refs, seen) in enumerate(zip(w.refs, w.seen, strict=True)):
            readings: list = get_many(refs)  # (Reading | None)
            last = w.last[j]
            if last is not None and readings == last.readings:
                # nothing read since the last tick (the ohmic tests and EMF, most ticks): the same values, and
                # nothing new to count
                if last.fresh is not None:
                    last = w.last[j] = _Read(readings, last.values, None, last.complete)
                columns.append(last)
                continue
            try:
                qualities = list(map(_QUALITY, readings))
            except TypeError:  # (a battery never read: None)
                qualities = []
            if qualities.count(_GOOD) == len(readings):
                # every battery read, GOOD (the usual case): the column in C, the new readings too
                values = list(map(_VALUE, readings))
                if None not in values:
                    stamps = list(map(_TS, readings))
                    fresh = list(map(lt, seen, stamps))
                    if False not in fresh:
                        w.seen[j] = stamps
                        read = _Read(readings, values, fresh, True, True)
                    else:  # (a reading not new leaves its older stamp)
                        w.seen[j] = list(map(max, seen, stamps))
                        read = _Read(readings, values, fresh if True in fresh else None, True)
                    columns.append(read)
                    w.last[j] = read
                    continue
            values, fresh = [], []
            for i, r in enumerate(readings):
                if r is not None and r.quality is _GOOD and r.value is not None:
                    values.append(r.value)
                    if seen[i] < r.ts:  # a reading not counted in the daily aggregates yet
                        seen[i] = r.ts
                        fresh.append(True)
                        continue
                else:
                    values.append(None)
                fresh.append(False)
            read = _Read(readings, values, fresh if True in fresh else None, None not in values)
            columns.append(read)
            w.last[j] = read
        return columns

    def _tick_string(self, now: float, dt_s: float, sid: int, s: StringConfig, ambient: float | None,
                     outputs: _Outputs) -> None:
        put = outputs.put
        w = self._columns[sid]
        columns = self._cell_columns(w)
        # each input's GOOD values in battery order
        volts, temps, ohms, _emfs = ((c.values if c.complete else [v for v in c.values if v is not None])
                                     for c in columns)
        v_avg = sum(volts) / len(volts) if volts else None
        o_avg = sum(ohms) / len(ohms) if ohms else None
        put("string.cell_voltage_avg", v_avg, sid)
        put("string.cell_voltage_min", min(volts) if volts else None, sid)
        put("string.cell_voltage_max", max(volts) if volts else None, sid)
        put("string.cell_temperature_max", max(temps) if temps else None, sid)
        put("string.cell_ohmic_avg", o_avg, sid)
        v_col = columns[0]
        by_cell = dict(zip(w.cells, v_col.values, strict=True)) if v_col.complete else {
            c: v for c, v in zip(w.cells, v_col.values, strict=True) if v is not None}
        soc = self._tick_soc(now, sid, s, ambient, by_cell, temps, v_avg, put)
        cell_sohs = self._tick_batteries(now, dt_s, w, s, ambient, columns, temps, v_avg, o_avg, soc.state, outputs)
        cap_soh = soc.soh_capacity if soc.soh_ts is not None and now - soc.soh_ts <= self.cfg["forecast"][
            "capacity_valid_days"] * DAY_S else None
        put("string.soh", cap_soh if cap_soh is not None else (min(cell_sohs) if cell_sohs else None), sid)

    def _tick_soc(self, now: float, sid: int, s: StringConfig, ambient: float | None, volts: dict[int, float],
                  temps: list[float], v_avg: float | None, put: _Put) -> StringSoc:
        """The string's state of charge, following its state (the string supervision's); a discharge that
        ended is recorded.  ``volts``: the GOOD battery voltages by battery; ``temps``: the GOOD temperatures."""
        n = s.battery.cells_per_unit
        soc = self.soc[sid]
        state = self._good(self.string_refs[("string.state", sid)])
        string_v = self._good(self.string_refs[("string.voltage", sid)])
        if string_v is not None:
            v_cell = string_v / (s.cells * n)
        elif v_avg is not None and len(volts) >= 0.8 * s.cells:
            v_cell = v_avg / n
        else:
            v_cell = None
        temp = ambient if ambient is not None else (_mean(temps))
        finished = soc.update(now, None if state is None else int(state), v_cell, temp, volts)
        if finished is not None:
            self._record_discharge(finished)
        o = soc.outputs(now)
        put("string.soc", o["soc"], sid)
        put("string.since_full_charge", o["since_full_charge"], sid)
        put("string.runtime_remaining", o["runtime_remaining"], sid)
        return soc

    def _tick_batteries(self, now: float, dt_s: float, w: _Column, s: StringConfig, ambient: float | None,
                        columns: list[_Read], good_temps: list[float],
                        v_avg: float | None, o_avg: float | None, soc_state: int | None,
                        outputs: _Outputs) -> list[float]:
        """Each battery's outputs, its daily aggregates and its temperature life budget; returns their SOHs."""
        r_v, r_t, r_o, r_e = columns
        volts, temps, ohms, emfs = r_v.values, r_t.values, r_o.values, r_e.values
        all_v, all_t = r_v.complete, r_t.complete
        cfg = self.cfg
        th = cfg["thresholds"]
        fl = cfg["float"]
        n = s.battery.cells_per_unit
        on_float = soc_state == self.codes.floating
        resting = on_float or soc_state == self.codes.rest
        # every battery's deviation from the string average: a column, most of it new every tick
        if v_avg is None:
            devs: list[float | None] = [None] * len(volts)
        elif all_v:
            devs = list(map(sub, volts, repeat(v_avg)))
        else:
            devs = [None if v is None else v - v_avg for v in volts]
        self._put_deviations(w, devs, outputs)
        # The rest follows the slow inputs (ohmic tests, EMF, baselines, forecasts, verdicts): worked out again
        # only for a battery one of them changed for, and every republish_s all put again (as unchanged values
        # are); in between a string costs a comparison of its columns here, not nine values per battery.
        keys = w.keys
        replace_pct = th["replace_pct"]
        bases = list(map(self.baselines.get, keys))
        fcs = list(map(self.fc_pub.get, keys))
        verdicts = list(map(self.dg_pub.get, keys))
        slow_inputs = (ohms, o_avg, bases, emfs, resting, fcs, verdicts, replace_pct)
        if now >= w.slow_due or slow_inputs != w.slow_inputs:
            slow_state = self._slow
            republish = self.republish_s
            sohs = []
            due = math.inf
            again: list[int] = []  # the batteries whose unchanged outputs are due to be put again
            for i, key in enumerate(keys):
                ohm, base, emf, fc, verdict = ohms[i], bases[i], emfs[i], fcs[i], verdicts[i]
                battery_inputs = (ohm, o_avg, base, emf, resting, fc, verdict, replace_pct)
                slow = slow_state.get(key)
                if slow is None or now >= slow[1]:
                    # the same inputs make the same values (a nan ohmic test, unequal to itself, is counted again)
                    if slow is not None and slow[0] == battery_inputs and ohm == ohm:
                        again.append(i)
                        slow = slow_state[key] = (battery_inputs, now + republish, slow[2], slow[3])
                    else:
                        slow = slow_state[key] = (battery_inputs, now + republish, *self._slow_outputs(
                            key, w, i, n, ohm, o_avg, base, emf, resting, fc, verdict, th, outputs, True))
                elif slow[0] != battery_inputs:
                    slow = slow_state[key] = (battery_inputs, slow[1], *self._slow_outputs(
                        key, w, i, n, ohm, o_avg, base, emf, resting, fc, verdict, th, outputs, False))
                if slow[2] is not None:
                    sohs.append(slow[2])
                if slow[1] < due:
                    due = slow[1]
            w.slow_inputs, w.slow_due, w.sohs = slow_inputs, due, sohs
            if again:  # (every republish_s, most of the bank: in C)
                values = list(chain.from_iterable(slow_state[keys[i]][3] for i in again))
                outputs.last.update(zip(chain.from_iterable(map(w.slow_keys.__getitem__, again)),
                                        zip(values, repeat(now)), strict=True))
                outputs.out.extend(zip(chain.from_iterable(map(w.slow_refs.__getitem__, again)),
                                       map(_READING, zip(values, repeat(_GOOD), repeat(now))), strict=True))
        # daily aggregates (each new reading once)
        count = w.count
        if r_o.fresh is not None:
            count("ohmic", ohms, r_o, r_o.complete)
        ref_t = ambient if ambient is not None else (statistics.median(good_temps) if good_temps else None)
        if r_t.fresh is not None:
            count("temp", temps, r_t, all_t)
            if ref_t is not None:
                rises = list(map(sub, temps, repeat(ref_t))) if all_t else [
                    None if t is None else t - ref_t for t in temps]
                count("temp_rise", rises, r_t, all_t)
        if on_float:
            if r_v.fresh is not None:
                count("v_float", volts, r_v, all_v)
                if v_avg is not None:
                    count("v_dev", devs, r_v, all_v)
                count("setpoint", self._setpoints(n, fl, temps), r_v, True)
            if r_e.fresh is not None:
                count("emf", emfs, r_e, r_e.complete)
        self._age(now, dt_s, w, temps, all_t)
        return w.sohs

    def _setpoints(self, n: int, fl: dict, temps: list[float | None]) -> list[float]:
        """Each battery's temperature-compensated float setpoint (per unit of ``n`` cells) from its temperature
        (25 C when it has none): a few hundred distinct temperatures in a bank, each worked out once."""
        params = (n, fl["v_per_cell"], fl["temp_comp_v_per_c"])
        cache = self._setpoint_cache.get(params)
        if cache is None or len(cache) > 100_000:
            cache = self._setpoint_cache[params] = {}
        setpoints = list(map(cache.get, temps))
        if None in setpoints:
            _, v_per_cell, temp_comp = params
            for i in compress(range(len(setpoints)), map(_is_none, setpoints)):
                t = temps[i]
                tc = min(max(t if t is not None else 25.0, 5.0), 40.0)
                setpoints[i] = cache[t] = n * (v_per_cell + temp_comp * (tc - 25.0))
        return setpoints  # type: ignore[return-value]  # (every None filled)

    def _put_deviations(self, w: _Column, devs: list[float | None], outputs: _Outputs) -> None:
        """``put`` of the string's voltage deviations as a column: each goes out when it changed, or when
        republish_s passed since it last went out."""
        now = outputs.now
        changed = list(map(ne, devs, w.dev_last))
        if False in changed:  # an unchanged value goes out again when due
            changed = [c or now - ts >= self.republish_s for c, ts in zip(changed, w.dev_ts, strict=True)]
            if True not in changed:
                return
        if False not in changed:  # (the usual case: the string's average moved, every deviation with it)
            outputs.out.extend(zip(w.dev_refs, map(_READING, zip(devs, repeat(_GOOD), repeat(now))),
                                   strict=True))
            w.dev_last, w.dev_ts = devs, [now] * len(devs)
            return
        last, stamps, refs, out = w.dev_last, w.dev_ts, w.dev_refs, outputs.out
        for i in compress(range(len(devs)), changed):
            last[i] = value = devs[i]
            stamps[i] = now
            out.append((refs[i], Reading(value, _GOOD, now)))

    def _age(self, now: float, dt_s: float, w: _Column, temps: list[float | None], all_t: bool) -> None:
        """The temperature life budget (25 C-equivalent years) of every battery with a temperature."""
        first_seen = self.first_seen
        keys = w.keys
        if not w.all_seen:
            for key, t in zip(keys, temps, strict=True):
                if t is not None and key not in first_seen:
                    self._first_seen(key, now)
            w.all_seen = all(map(first_seen.__contains__, keys))
        halving_c = self.cfg["halving_c"]
        aging = self._aging
        if halving_c != self._aging_halving or len(aging) > 100_000:
            aging.clear()
            self._aging_halving = halving_c
        life_step = dt_s / YEAR_S
        if all_t:
            factors: list[float | None] = list(map(aging.get, temps))  # type: ignore[arg-type]  # (no None: all_t)
            if None in factors:
                for i in compress(range(len(factors)), map(_is_none, factors)):
                    t = temps[i]
                    factors[i] = aging[t] = aging_factor(t, halving_c)  # type: ignore[index,arg-type]
            if w.all_seen:  # (every battery has its life: all_t saw them all)
                w.life = list(map(add, w.life, map(mul, repeat(life_step), factors)))
                return
        life = w.life
        for i, t in enumerate(temps):
            if t is not None:
                factor = aging.get(t)
                if factor is None:
                    factor = aging[t] = aging_factor(t, halving_c)
                life[i] = (life[i] or 0.0) + life_step * factor

    @property
    def acc(self) -> dict[tuple[int, int], dict[str, tuple[float, int]]]:
        """The open day's aggregates: ``{(string, battery): {field: (total, count)}}`` of what was counted."""
        out: dict[tuple[int, int], dict[str, tuple[float, int]]] = {}
        for w in self._columns.values():
            columns = {f: (w.acc_sum[f], w.counts(f)) for f in _TICK_FIELDS}
            for i, key in enumerate(w.keys):
                fields = {f: (sums[i], cnt) for f, (sums, counts) in columns.items() if (cnt := counts[i])}
                if fields:
                    out[key] = fields
        return out

    def _save_due(self, now: float) -> None:
        """Baselines checked hourly, the state of charge saved every minute, the life budget every 10 minutes."""
        if now >= self._next_baseline_check:
            self._persist("baselines", self.auto_baselines, now)
            self._next_baseline_check = now + 3600.0
        if now >= self._next_soc_save:
            self._persist("the state of charge", self.save_soc)
            self._next_soc_save = now + 60.0
        if now >= self._next_life_save:
            self._persist("the life budget", self.save_life, now)
            self._next_life_save = now + 600.0

    def _slow_outputs(self, key: tuple[int, int], w: _Column, i: int, n: int, ohm: float | None,
                      o_avg: float | None, base: Baseline | None, emf: float | None, resting: bool, fc: tuple | None,
                      verdict: float | None, th: dict, outputs: _Outputs, force: bool) -> tuple[float | None, tuple]:
        """A battery's outputs from its slow inputs (``force``: put them all, changed or not); returns its SOH and
        the outputs' values."""
        dev = (ohm / base.ohmic - 1.0) * 100.0 if base and ohm is not None else None
        # the SOH from the ohmic rise: the median of the last tests, never one (a 2 V cell's test scatters by
        # 5-10 %)
        tests = self.recent_tests.get(key)
        if ohm is not None and (tests is None or not tests or tests[-1] != ohm):
            if tests is None:
                tests = self.recent_tests[key] = deque(maxlen=SOH_TESTS)
            tests.append(ohm)
        soh = None
        if base and tests is not None and len(tests) >= min(3, SOH_TESTS):
            robust = (statistics.median(tests) / base.ohmic - 1.0) * 100.0
            soh = min(100.0, max(0.0, 100.0 - 20.0 * max(robust, 0.0) / th["replace_pct"]))
        eol, early, late = fc if fc is not None else (None, None, None)
        values = ((ohm / o_avg - 1.0) * 100.0 if ohm is not None and o_avg else None,  # (SLOW_POINTS' order)
                  base.ohmic if base else None, dev, soh,
                  soc_from_ocv(emf / n) if emf is not None and resting else None, eol, early, late, verdict)
        keys, refs = w.slow_keys[i], w.slow_refs[i]
        last, now = outputs.last, outputs.now
        if force:  # (every republish_s, every battery: in C)
            last.update(zip(keys, zip(values, repeat(now)), strict=True))
            outputs.out.extend(zip(refs, map(_READING, zip(values, repeat(_GOOD), repeat(now))), strict=True))
            return soh, values
        republish, out = outputs.republish, outputs.out
        for k, ref, value in zip(keys, refs, values, strict=True):  # (_Outputs.put, the key and ref made once)
            old = last.get(k)
            if old is not None and old[0] == value and now - old[1] < republish:
                continue
            last[k] = (value, now)
            out.append((ref, Reading(value, _GOOD, now)))
        return soh, values

    def _persist(self, what: str, fn, *args):
        """Save to the state database without stopping the computation: a full disk (or another write error)
        must not stop the derived values from being published.  Logged once per failing spell."""
        try:
            result = fn(*args)
        except (sqlite3.Error, OSError) as exc:
            self.persist_errors += 1
            if not self._persist_failing:
                log.error("analytics: cannot save %s in %s (%s); values are still computed and published, and "
                          "saving is retried", what, self.state.path, exc)
            self._persist_failing = True
            return None
        if self._persist_failing:
            log.warning("analytics: the state is saved again")
            self._persist_failing = False
        return result

    def _first_seen(self, key: tuple[int, int], now: float) -> None:
        self.first_seen[key] = now
        start = self.replaced.get(key) or self.install_ts.get(key[0])
        # before monitoring began the battery aged too: count it at 25 C
        self._set_life(key, max(0.0, (now - start) / YEAR_S) if start is not None and start < now else 0.0)

    def _set_life(self, key: tuple[int, int], used: float | None) -> None:
        """A battery's life used (25 C-equivalent years; None: forget it)."""
        column = self._columns.get(key[0])
        if column is not None and 1 <= key[1] <= len(column.life):
            column.life[key[1] - 1] = used
        elif used is None:
            self._life_other.pop(key, None)
        else:
            self._life_other[key] = used

    def _life_of(self, key: tuple[int, int]) -> float | None:
        column = self._columns.get(key[0])
        if column is not None and 1 <= key[1] <= len(column.life):
            return column.life[key[1] - 1]
        return self._life_other.get(key)

    @property
    def life_used(self) -> dict[tuple[int, int], float]:
        """Each battery's life used (25 C-equivalent years) by ``(string, battery)``, of those seen."""
        out = {key: used for w in self._columns.values() for key, used in zip(w.keys, w.life, strict=True)
               if used is not None}
        out.update(self._life_other)
        return out

    def _record_discharge(self, result: dict) -> None:
        sid = result["string"]
        self._persist("the discharge event", self.state.add_event, sid, "discharge", result["start"], result["end"],
                      result)
        self.events_finished.append(result)
        if result.get("capacity_test"):
            log.info("string %s: discharge of %.0f min analysed as a capacity test: %.1f Ah at 25 C, SOH %.1f %%",
                     sid, result["duration_s"] / 60, result["capacity_ah"], result["soh_pct"])
        else:
            log.info("string %s: discharge of %.0f min, %.1f Ah delivered (%s)", sid, result["duration_s"] / 60,
                     result["ah"], result.get("not_a_capacity_test", ""))
        self._persist("the state of charge", self.save_soc)

    def save_soc(self) -> None:
        self.state.save_socs({sid: soc.to_dict() for sid, soc in self.soc.items()})

    def save_life(self, now: float) -> None:
        self.state.save_life([(s, c, used, now, self.first_seen.get((s, c), now))
                              for (s, c), used in self.life_used.items()])

    def flush_daily(self) -> None:
        """Merge the open day's aggregates into the state (a later flush of the same day merges again)."""
        rows = [(s, c, self.acc_day, {f: (tot / cnt, cnt) for f, (tot, cnt) in fields.items()})
                for (s, c), fields in self.acc.items()]
        for w in self._columns.values():
            w.clear_day()  # a day that cannot be saved (a full disk) is not carried into the next one
        if rows:
            self.state.add_daily(rows)

    def close(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.lock:
            self._persist("the daily aggregates", self.flush_daily)
            self._persist("the state of charge", self.save_soc)
            self._persist("the life budget", self.save_life, now)

    # -- baselines ----------------------------------------------------------------------------------------------
    def auto_baselines(self, now: float) -> list[Baseline]:
        """IEEE 1188: take a baseline for every battery past its settling period that has none yet."""
        bc = self.cfg["baseline"]
        today = int(now // DAY_S)
        taken = []
        for sid, s in self.strings.items():
            missing = [c for c in range(1, s.cells + 1) if (sid, c) not in self.baselines]
            if not missing:
                continue
            rows_by_cell = self.state.daily_string(sid, since_day=today - bc["sample_days"])
            for c in missing:
                key = (sid, c)
                start = self.replaced.get(key) or self.install_ts.get(sid)
                if start is not None and now < start + bc["settle_days"] * DAY_S:
                    continue
                seen = self.first_seen.get(key)
                if seen is None or now - seen < bc["sample_days"] * DAY_S:
                    continue
                rows = [r for r in rows_by_cell.get(c, []) if r.ohmic is not None]
                ohmics = [r.ohmic for r in rows if r.ohmic is not None]
                if len(rows) < max(2, bc["sample_days"] // 2):
                    continue
                b = Baseline(sid, c, statistics.median(ohmics), now, "auto",
                             _mean(r.temp for r in rows if r.temp is not None),
                             _median_or_none([r.emf for r in rows]))
                taken.append(b)
        if taken:
            self.state.set_baselines(taken)  # one transaction: a whole bank settles on the same day
            for b in taken:
                self.baselines[(b.string, b.cell)] = b
            self._gen = self.state.generation()
            log.info("IEEE 1188 baselines taken for %d batteries", len(taken))
        return taken

    # -- trends: forecasts and diagnoses ----------------------------------------------------------------------
    def jobs_due(self, now: float) -> bool:
        return now >= self.next_jobs

    def run_jobs(self, now: float | None = None, flush: bool = True) -> dict[tuple[int, int], dict]:
        """Forecast and diagnose every battery from its daily aggregates (the open day merged in first unless
        ``flush`` is False).  Seconds of CPU for a full bank on the controller: the service runs it in a thread."""
        with self.lock:  # held throughout: close() waits for a job in flight
            return self._run_jobs(time.time() if now is None else now, flush)

    def _run_jobs(self, now: float, flush: bool) -> dict[tuple[int, int], dict]:
        if flush:
            self._persist("the daily aggregates", self.flush_daily)
        fcfg = self.cfg["forecast"]
        dparams = self._diagnosis_params
        since = int(now // DAY_S) - int(fcfg["window_days"]) - 30
        fc_items, dg_items, fc_pub, dg_pub, results = [], [], {}, {}, {}
        for sid, s in self.strings.items():
            rows_by_cell = self.state.daily_string(sid, since_day=since)
            string_days = _string_medians(rows_by_cell)
            params = dparams(s)
            scatters = [v for rows in rows_by_cell.values()
                        if (v := dg.ohmic_scatter_pct(rows, params.scatter_days)) is not None]
            string_scatter = statistics.median(scatters) if len(scatters) >= 3 else None
            for c in range(1, s.cells + 1):
                key = (sid, c)
                rows = rows_by_cell.get(c, [])
                base = self.baselines.get(key)
                fc = self._forecast(sid, c, rows, base, now)
                diag = dg.diagnose(rows, string_days, params, base.ohmic if base else None,
                                   fc.get("slope_pct_per_year"), fc.get("slope_low_pct_per_year"), string_scatter)
                fc["diagnosis"] = diag.to_dict()
                fc_items.append((sid, c, now, fc))
                fc_pub[key] = (fc.get("eol_ts"), fc.get("early_ts"), fc.get("late_ts"))
                if rows:
                    dg_items.append((sid, c, now, diag.code, diag.to_dict()))
                    dg_pub[key] = diag.code
                results[key] = fc
        self._persist("forecasts", self.state.save_forecasts, fc_items)
        self._persist("diagnoses", self.state.save_diagnoses, dg_items)
        self.fc_pub, self.dg_pub = fc_pub, dg_pub
        self.next_jobs = now + self.cfg["jobs_interval_h"] * 3600.0
        return results

    def _diagnosis_params(self, s: StringConfig) -> dg.DiagnosisParams:
        d = self.cfg["diagnosis"]
        th = self.cfg["thresholds"]
        return dg.DiagnosisParams(
            nominal_v=s.battery.nominal_voltage, cells_per_unit=s.battery.cells_per_unit,
            failed_cell_drop_fraction=d["failed_cell_drop_fraction"], step_pct=d["step_pct"],
            scatter_pct=d["scatter_pct"], scatter_vs_string=d["scatter_vs_string"],
            thermal_rise_c=d["thermal_rise_c"], thermal_days=d["thermal_days"],
            ohmic_rise_pct=th["warning_pct"], ohmic_trend_pct_per_year=d["ohmic_trend_pct_per_year"],
            emf_behind_pct=d["emf_behind_pct"], undercharge_v_per_cell=d["undercharge_v_per_cell"])

    def _forecast(self, sid: int, cell: int, rows: list[DailyRow], base: Baseline | None, now: float) -> dict:
        fcfg = self.cfg["forecast"]
        th = self.cfg["thresholds"]
        horizon = fcfg["horizon_years"]
        out: dict = {"evidence": []}
        cands = []
        if base is None:
            out["evidence"].append("no baseline: no ohmic verdict")
        else:
            # every row is the present unit's (a replacement clears the old one's)
            pts = [((r.day * DAY_S + DAY_S / 2 - now) / YEAR_S, (r.ohmic / base.ohmic - 1.0) * 100.0)
                   for r in rows if r.ohmic is not None]
            pts = [p for p in pts if p[0] >= -fcfg["window_days"] / 365.25]
            if len(pts) >= fcfg["min_days"] and (pts[-1][0] - pts[0][0]) * 365.25 >= 0.8 * fcfg["min_days"]:
                x, y = [p[0] for p in pts], [p[1] for p in pts]
                trend = fit_trend(x, y)
                curves = plausible_curves(x, y)
                f30 = forecast_crossing(x, y, th["replace_pct"], horizon, trend=trend, curves=curves)
                f50 = forecast_crossing(x, y, th["critical_pct"], horizon, trend=trend, curves=curves)
                if f30.fit is not None:
                    fit = f30.fit
                    out.update(model=fit.model, level_pct=fit.value(0.0), slope_pct_per_year=fit.slope(0.0),
                               slope_low_pct_per_year=theil_sen(*thin(x, y, 60), alpha=dg.RATE_EVIDENCE_ALPHA)[2],
                               days=len(pts))
                    # the curve itself (x: years from this run, y: % over the baseline), for a chart of it
                    out["fit"] = {"model": fit.model, "c": fit.c, "b": fit.b, "k": fit.k, "m": fit.m}
                out["critical_years"] = f50.years
                out["critical_ts"] = now + f50.years * YEAR_S if f50.years is not None else None
                out["evidence"] += f30.evidence
                cands.append(("ohmic", f30.years, f30.early, f30.late))
            else:
                out["evidence"].append(f"{len(pts)} days of ohmic data since the baseline; "
                                       f"a trend needs {fcfg['min_days']}")
            if base.emf:
                epts = [((r.day * DAY_S + DAY_S / 2 - now) / YEAR_S, (1.0 - r.emf / base.emf) * 100.0)
                        for r in rows if r.emf is not None]
                epts = [p for p in epts if p[0] >= -fcfg["window_days"] / 365.25]
                if len(epts) >= fcfg["min_days"]:
                    fe = forecast_crossing([p[0] for p in epts], [p[1] for p in epts], fcfg["emf_drop_pct"], horizon)
                    out["emf_drop_pct"] = fe.fit.value(0.0) if fe.fit else None
                    cands.append(("emf", fe.years, fe.early, fe.late))
        used = self._life_of((sid, cell))
        if used is not None:
            temps = [r.temp for r in rows[-30:] if r.temp is not None]
            factors = [aging_factor(t, self.cfg["halving_c"]) for t in temps]
            factor = sum(factors) / len(factors) if factors else 1.0
            left = life_budget_years(used, self.cfg["design_life_years"], factor)
            out.update(life_used_years=used, life_factor=factor, life_left_years=left)
            if left is not None:
                cands.append(("life", left, 0.9 * left, 1.1 * left))
        found = [(src, years, early, late) for src, years, early, late in cands if years is not None]
        if found:
            source, years, early, late = min(found, key=lambda cnd: cnd[1])
            out.update(source=source, years=years, early_years=early, late_years=late)
            out["eol_ts"] = now + years * YEAR_S if years <= horizon else None
            out["early_ts"] = now + early * YEAR_S if early is not None and early <= horizon else None
            out["late_ts"] = now + late * YEAR_S if late is not None and years <= horizon else None
        return out


def _is_none(value: object) -> bool:
    return value is None


def _median_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _string_medians(rows_by_cell: dict[int, list[DailyRow]]) -> dict[int, dict[str, float]]:
    per_day: dict[int, dict[str, list[float]]] = {}
    for rows in rows_by_cell.values():
        for r in rows:
            d = per_day.setdefault(r.day, {})
            for f in ("emf", "v_float", "ohmic"):
                v = getattr(r, f)
                if v is not None:
                    d.setdefault(f, []).append(v)
    return {day: {f: statistics.median(vs) for f, vs in d.items()} for day, d in per_day.items()}
