"""State of charge per string, and discharges analysed as capacity tests.

Coulomb counting on the string current (the offset-corrected one the point store holds): discharge with the
Peukert correction (exponent 1.25 unless configured; referred to the rated C20 current), charge with the charge
efficiency (95 %), against the usable capacity = rated x SOH x (1 + 0.005 x (T - 25)).  The string's state is
the string supervision's (``string.state``, gateway/strings): re-anchored to 100 % after an hour on float (float
means below the tail current); corrected from the resting voltage after 24 h at rest.  A discharge is tracked
from the state:
delivered Ah, voltage sag per battery, and (deep enough, from a trusted start) an estimate of the string's
capacity: the depth comes from the EMF at the end (voltage under load plus I x R, with R measured at the
start of the discharge, where the SOC is known), the capacity = Peukert Ah / depth.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ..strings.states import StringStates

# Resting voltage -> SOC for a 12 V AGM unit (../shared/DOMAIN.md); per 2 V cell divide by 6.
_OCV_12V = ((0.0, 11.80), (25.0, 12.00), (50.0, 12.30), (75.0, 12.60), (100.0, 12.85))
OCV_PER_CELL = tuple((s, v / 6.0) for s, v in _OCV_12V)

def ocv_per_cell(soc_pct: float) -> float:
    soc_pct = min(max(soc_pct, 0.0), 100.0)
    for (s0, v0), (s1, v1) in pairwise(OCV_PER_CELL):
        if soc_pct <= s1:
            return v0 + (v1 - v0) * (soc_pct - s0) / (s1 - s0)
    return OCV_PER_CELL[-1][1]


def soc_from_ocv(v_per_cell: float) -> float:
    """SOC (%) from an open-circuit voltage per 2 V cell, clamped to 0..100."""
    if v_per_cell <= OCV_PER_CELL[0][1]:
        return 0.0
    for (s0, v0), (s1, v1) in pairwise(OCV_PER_CELL):
        if v_per_cell <= v1:
            return s0 + (s1 - s0) * (v_per_cell - v0) / (v1 - v0)
    return 100.0


@dataclass(frozen=True, slots=True)
class SocParams:
    capacity_ah: float
    cells_per_unit: int = 6
    units: int = 1
    peukert: float = 1.25
    rated_hours: float = 20.0
    charge_efficiency: float = 0.95
    temp_coeff: float = 0.005
    anchor_hold_s: float = 3600.0  # on float this long: 100 %
    rest_hours: float = 24.0
    max_gap_s: float = 600.0  # current readings further apart are not integrated across
    min_test_depth_pct: float = 10.0
    end_voltage_per_cell: float = 1.75
    max_current_cv: float = 0.25  # a capacity test needs a steady current (coefficient of variation)
    min_test_s: float = 300.0
    trusted_anchor_s: float = 2 * 86400.0  # a discharge starting this soon after an anchor has a known SOC

    @property
    def c20_current(self) -> float:
        return self.capacity_ah / self.rated_hours

    def peukert_current(self, amps: float) -> float:
        """The C20-equivalent drain of a discharge current (A, positive)."""
        return amps * (amps / self.c20_current) ** (self.peukert - 1.0) if amps > 0 else 0.0

    def temp_factor(self, temp_c: float | None) -> float:
        return 1.0 + self.temp_coeff * ((25.0 if temp_c is None else temp_c) - 25.0)


@dataclass(slots=True)
class DischargeEvent:
    string: int
    start: float
    soc_start: float
    trusted: bool
    v_before: dict[int, float]
    v_min: dict[int, float] = field(default_factory=dict)
    # cell -> (V, I, SOC counted then) first under load: the cells may be read a while after the start
    v_first: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    v_last: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # (V, I, Peukert Ah drained then)
    ah: float = 0.0
    ah_peukert: float = 0.0
    seconds: float = 0.0
    i_sum: float = 0.0
    i_sq: float = 0.0
    i_max: float = 0.0
    temps: list[float] = field(default_factory=list)
    end: float | None = None
    last_current: float = 0.0

    def add_voltage(self, cell: int, volts: float, current: float, soc: float | None = None) -> None:
        amps = -current
        if amps <= 0:
            return
        if cell not in self.v_first:
            self.v_first[cell] = (volts, amps, self.soc_start if soc is None else soc)
        self.v_last[cell] = (volts, amps, self.ah_peukert)
        old = self.v_min.get(cell)
        if old is None or volts < old:
            self.v_min[cell] = volts

    def add_drain(self, amps: float, peukert_amps: float, dt: float) -> None:
        self.ah += amps * dt / 3600.0
        self.ah_peukert += peukert_amps * dt / 3600.0
        self.seconds += dt
        self.i_sum += amps * dt
        self.i_sq += amps * amps * dt
        self.i_max = max(self.i_max, amps)


class StringSoc:
    """SOC and discharge tracking of one string, following the state the string supervision publishes."""

    def __init__(self, string: int, params: SocParams, states: StringStates, saved: dict | None = None) -> None:
        self.string = string
        self.p = params
        self.codes = states
        self.soc = 100.0
        self.anchor_ts: float | None = None  # last 100 % anchor
        self.anchor_kind = "assumed"
        self.soh_capacity: float | None = None  # % from the last capacity test
        self.soh_ts: float | None = None
        self.last_discharge_current: float | None = None
        self.state = states.unknown
        self.state_since: float | None = None
        self._float_since: float | None = None
        self._rest_since: float | None = None
        self._last_i: float | None = None
        self._last_ts: float | None = None
        self.temp: float | None = None
        self.event: DischargeEvent | None = None
        if saved:
            self.soc = float(saved.get("soc", 100.0))
            self.anchor_ts = saved.get("anchor_ts")
            self.anchor_kind = saved.get("anchor_kind", "assumed")
            self.soh_capacity = saved.get("soh_capacity")
            self.soh_ts = saved.get("soh_ts")
            self.last_discharge_current = saved.get("last_discharge_current")

    def to_dict(self) -> dict:
        return {"soc": self.soc, "anchor_ts": self.anchor_ts, "anchor_kind": self.anchor_kind,
                "soh_capacity": self.soh_capacity, "soh_ts": self.soh_ts,
                "last_discharge_current": self.last_discharge_current}

    @property
    def soh_for_capacity(self) -> float:
        return self.soh_capacity if self.soh_capacity is not None else 100.0

    def usable_capacity(self, temp_c: float | None = None) -> float:
        """Ah the string can deliver at the C20 rate now (rated x SOH x temperature factor)."""
        return self.p.capacity_ah * self.soh_for_capacity / 100.0 * self.p.temp_factor(
            self.temp if temp_c is None else temp_c)

    # -- coulomb counting --------------------------------------------------------------------------------------
    def on_current(self, current: float, ts: float) -> None:
        """A string current reading (A, positive = charging): integrate since the previous one."""
        if self._last_ts is not None and self._last_i is not None:
            dt = ts - self._last_ts
            if 0 < dt <= self.p.max_gap_s:
                self._integrate(self._last_i, dt)
            elif dt <= 0:
                return
        self._last_i, self._last_ts = current, ts
        if self.event is not None and current < 0:
            self.event.last_current = current

    def _integrate(self, current: float, dt: float) -> None:
        cap = self.usable_capacity()
        if current < 0:
            amps = -current
            drain = self.p.peukert_current(amps)
            self.soc -= drain * dt / 3600.0 / cap * 100.0
            if self.event is not None:
                self.event.add_drain(amps, drain, dt)
        else:
            self.soc += current * self.p.charge_efficiency * dt / 3600.0 / cap * 100.0
        self.soc = min(max(self.soc, 0.0), 100.0)

    # -- state machine ------------------------------------------------------------------------------------------
    def update(self, now: float, state: int | None, v_per_cell: float | None, temp_c: float | None,
               cell_volts: dict[int, float]) -> dict | None:
        """Follow the string's state (``string.state``; None: not known).  Returns a finished discharge event's
        analysis, if one just ended."""
        codes = self.codes
        self.temp = temp_c
        state = codes.unknown if state is None else int(state)
        finished = None
        if state != self.state:
            if self.state == codes.discharging and self.event is not None:
                finished = self._finish(self.event, now)
            if state == codes.discharging:
                trusted = self.anchor_ts is not None and now - self.anchor_ts <= self.p.trusted_anchor_s
                self.event = DischargeEvent(self.string, now, self.soc, trusted, dict(cell_volts))
            self.state, self.state_since = state, now
        if state == codes.discharging and self.event is not None and temp_c is not None:
            self.event.temps.append(temp_c)
        if state == codes.floating:
            if self._float_since is None:
                self._float_since = now
            if now - self._float_since >= self.p.anchor_hold_s:
                self.soc, self.anchor_ts, self.anchor_kind = 100.0, now, "float"
        else:
            self._float_since = None
        if state == codes.rest and v_per_cell is not None:
            if self._rest_since is None:
                self._rest_since = now
            if now - self._rest_since >= self.p.rest_hours * 3600.0:
                self.soc, self.anchor_kind = soc_from_ocv(v_per_cell), "rest"
                if self.soc >= 99.5:
                    self.anchor_ts = now
        else:
            self._rest_since = None
        return finished

    def outputs(self, now: float) -> dict[str, float | None]:
        amps: float | None
        if self.state == self.codes.discharging and self._last_i is not None and self._last_i < 0:
            amps = -self._last_i
        else:
            amps = self.last_discharge_current
        runtime = None
        if amps:
            runtime = self.soc / 100.0 * self.usable_capacity() / self.p.peukert_current(amps) * 3600.0
        return {"soc": self.soc, "since_full_charge": (now - self.anchor_ts) if self.anchor_ts is not None else None,
                "runtime_remaining": runtime}

    # -- discharge analysis -------------------------------------------------------------------------------------
    def _finish(self, ev: DischargeEvent, now: float) -> dict[str, Any]:
        self.event = None
        ev.end = now
        result = analyse_discharge(ev, self.p, self.soc)
        if ev.seconds > 0:
            self.last_discharge_current = ev.i_sum / ev.seconds
        if result.get("capacity_test"):
            self.soh_capacity = result["soh_pct"]
            self.soh_ts = now
        if result.get("soc_end_voltage") is not None and result["depth_pct"] >= self.p.min_test_depth_pct:
            # the voltage says where the discharge was at the batteries' last reading; what was drained after it
            # comes off too
            after = result.get("ah_after_last_reading", 0.0) / max(self.usable_capacity(), 1e-9) * 100.0
            self.soc = min(max(result["soc_end_voltage"] - after, 0.0), 100.0)
        return result


def analyse_discharge(ev: DischargeEvent, p: SocParams, soc_counted: float) -> dict[str, Any]:
    """A finished discharge: delivered Ah, sag ranking and, when it qualifies, a capacity estimate."""
    if ev.end is None:
        raise ValueError("analyse_discharge: the discharge has not ended")
    mean_i = ev.i_sum / ev.seconds if ev.seconds else 0.0
    cv = math.sqrt(max(ev.i_sq / ev.seconds - mean_i ** 2, 0.0)) / mean_i if ev.seconds and mean_i else 1.0
    temp = statistics.fmean(ev.temps) if ev.temps else None
    sag = {c: ev.v_before[c] - v for c, v in ev.v_min.items() if c in ev.v_before}
    ranked = sorted(sag.items(), key=lambda kv: -kv[1])
    out: dict[str, Any] = {"string": ev.string, "start": ev.start, "end": ev.end, "duration_s": ev.end - ev.start,
           "ah": ev.ah, "ah_peukert": ev.ah_peukert, "mean_current": mean_i, "max_current": ev.i_max,
           "current_cv": cv, "temperature": temp, "soc_start": ev.soc_start, "soc_end_counted": soc_counted,
           "trusted_start": ev.trusted, "rated_ah": p.capacity_ah,
           "delivered_pct_of_rating": 100.0 * ev.ah / p.capacity_ah,
           "sag": [{"cell": c, "v_before": ev.v_before.get(c), "v_min": ev.v_min[c], "sag": s} for c, s in ranked],
           "min_voltage": min(ev.v_min.values()) if ev.v_min else None,
           "soc_end_voltage": None, "depth_pct": 0.0, "capacity_test": False, "end_voltage_reached": False}
    n = p.cells_per_unit
    common = [c for c in ev.v_first if c in ev.v_last]
    if common:
        v1 = statistics.fmean(ev.v_first[c][0] for c in common) / n
        i1 = statistics.fmean(ev.v_first[c][1] for c in common)
        soc1 = statistics.fmean(ev.v_first[c][2] for c in common)
        v2 = statistics.fmean(ev.v_last[c][0] for c in common) / n
        i2 = statistics.fmean(ev.v_last[c][1] for c in common)
        ah2 = statistics.fmean(ev.v_last[c][2] for c in common)  # what had been drained by those readings
        r = (ocv_per_cell(soc1) - v1) / i1 if i1 > 0 else 0.0  # ohm per 2 V cell, polarisation included
        emf_end = v2 + i2 * max(r, 0.0)
        soc_end = soc_from_ocv(emf_end)
        reached = v2 <= p.end_voltage_per_cell
        if reached:
            soc_end = 0.0
        depth = ev.soc_start - soc_end
        out.update(soc_end_voltage=soc_end, depth_pct=depth, end_voltage_reached=reached,
                   r_dynamic_per_cell=r, emf_end_per_cell=emf_end,
                   ah_after_last_reading=0.0 if reached else max(ev.ah_peukert - ah2, 0.0))
        reasons = []
        if not ev.trusted:
            reasons.append("the SOC at the start was not anchored")
        if depth < p.min_test_depth_pct:
            reasons.append(f"too shallow ({depth:.0f} % < {p.min_test_depth_pct:g} %)")
        if cv > p.max_current_cv:
            reasons.append(f"current not steady (variation {cv * 100:.0f} %)")
        if ev.seconds < p.min_test_s:
            reasons.append("too short")
        if not reasons:
            cap_t = (ah2 if not reached else ev.ah_peukert) / (depth / 100.0)
            cap_25 = cap_t / p.temp_factor(temp)
            out.update(capacity_test=True, capacity_ah=cap_25, soh_pct=100.0 * cap_25 / p.capacity_ah)
        else:
            out["not_a_capacity_test"] = "; ".join(reasons)
    else:
        out["not_a_capacity_test"] = "no battery voltages under load"
    return out
