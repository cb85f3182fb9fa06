"""A physically plausible battery bank: the simulator's ground truth.

Per string: float charge with temperature compensation, discharge and recharge events, a coulomb-counted
true SOC (Peukert, charge efficiency).  Per battery: a spread of float voltage, capacity and ohmic value,
slow ohmic aging (a few weak units age fast, exponentially), negative-post temperature above ambient.
A cell sensor measures the ohmic value in a test it runs once per ``ohmic_test_interval_s`` (daily, as real
BCS sensors do) and reports that result, unchanged, until its next test.
Time is simulated time (seconds since the Unix epoch): ``advance_to(t)`` integrates the string states.
"""
from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import ClassVar

YEAR = 365.25 * 86400.0
PEUKERT = 1.25
CHARGE_EFFICIENCY = 0.95
# 12 V AGM resting voltage -> SOC (../shared/DOMAIN.md), per 2 V cell
_OCV_SOC = [(0.0, 11.80 / 6), (0.25, 12.00 / 6), (0.50, 12.30 / 6), (0.75, 12.60 / 6), (1.0, 12.85 / 6)]
FLOAT_V_PER_CELL = 2.25
TEMP_COMP_V_PER_C = -0.003  # per 2 V cell


def ocv_per_cell(soc: float) -> float:
    soc = min(max(soc, 0.0), 1.0)
    for (s0, v0), (s1, v1) in pairwise(_OCV_SOC):
        if soc <= s1:
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
    return _OCV_SOC[-1][1]


@dataclass(slots=True)
class Battery:
    string: int
    cell: int
    cells_per_unit: int
    float_offset: float  # V per unit, manufacturing spread
    capacity_factor: float  # true capacity / rated
    ohmic0: float  # ohm at t0
    aging_per_year: float  # linear fractional rise per year
    accel: float  # exponential acceleration per year (weak units)
    temp_offset: float  # C above ambient
    failed_cell: bool = False
    emf_drop: float = 0.0  # V per unit lost by sulfation/dry-out

    def ohmic_at(self, years: float) -> float:
        rise = self.aging_per_year * years
        if self.accel:
            rise += (math.exp(self.accel * years) - 1.0) * 0.05
        return self.ohmic0 * (1.0 + rise)

    def years_to_rise(self, fraction: float) -> float:
        """Years from t0 until the ohmic value is ``(1 + fraction)`` x ohmic0 (bisection on ohmic_at)."""
        lo, hi = 0.0, 60.0
        if self.ohmic_at(hi) < self.ohmic0 * (1 + fraction):
            return math.inf
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.ohmic_at(mid) >= self.ohmic0 * (1 + fraction):
                hi = mid
            else:
                lo = mid
        return hi


@dataclass(slots=True)
class StringState:
    id: int
    cells: int
    capacity_ah: float
    cells_per_unit: int
    soc: float = 1.0
    current: float = 0.05  # A, positive = charging
    mode: str = "float"  # float | discharge | recharge | rest
    mode_since: float = 0.0
    discharge_current: float = 25.0
    batteries: list[Battery] = field(default_factory=list)
    weakest: float = 1.0  # lowest capacity factor of its batteries (a string is as strong as its weakest)


def _position(value: int | None, point: str, key: str) -> int:
    """The string or cell number a family's value needs (a caller that leaves it out has a bug)."""
    if value is None:
        raise ValueError(f"{point}: a {key} number is needed")
    return value


class BankModel:
    def __init__(self, strings: list[tuple[int, int, float, int]], seed: int = 1, weak_cells: int = 3,
                 t0: float = 1.7e9, age_years: float = 1.0, discharge_every_s: float = 0.0,
                 discharge_duration_s: float = 1800.0, ohmic_test_interval_s: float = 86400.0) -> None:
        """``strings``: (id, cells, capacity_ah, cells_per_unit) per string.  The sensors ran an ohmic test
        at ``t0`` (just before the first reading) and run one every ``ohmic_test_interval_s`` after it."""
        if ohmic_test_interval_s <= 0:
            raise ValueError("ohmic_test_interval_s must be positive")
        self.rng = random.Random(seed)
        self.noise = random.Random(seed + 1)
        self.t0 = t0 - age_years * YEAR  # when the batteries were new
        self.t = t0
        self.lock = threading.RLock()
        self.discharge_every_s = discharge_every_s
        self.discharge_duration_s = discharge_duration_s
        self.next_discharge = t0 + discharge_every_s if discharge_every_s else math.inf
        self.ohmic_test_interval_s = ohmic_test_interval_s
        self._ohmic_schedule0 = t0
        self._ohmic_extra: dict[int, float] = {}  # string -> when a test was run on demand
        self._ohmic_held: dict[tuple[int, int], tuple[float, float]] = {}  # (string, cell) -> (test time, result)
        self.ambient_base = 24.0
        self.do_state = 0
        self.di_state = 0
        self.strings: dict[int, StringState] = {}
        self._avg_cache: dict[int, tuple[float, float]] = {}
        # (point, string, cell, channel) -> value a sensor reports instead of the physics (None: not available)
        self.overrides: dict[tuple, float | None] = {}
        for sid, cells, cap, cpu in strings:
            st = StringState(sid, cells, cap, cpu, mode_since=t0, discharge_current=cap / 4.0)
            for c in range(1, cells + 1):
                r = self.rng
                ohmic0 = (0.004 * (100.0 / cap) * (cpu / 6.0)) * r.uniform(0.93, 1.07)
                st.batteries.append(Battery(
                    sid, c, cpu, float_offset=r.gauss(0, 0.012 * cpu), capacity_factor=r.uniform(0.95, 1.02),
                    ohmic0=ohmic0, aging_per_year=r.uniform(0.025, 0.045), accel=0.0,
                    temp_offset=r.uniform(0.3, 1.2)))
            self.strings[sid] = st
        all_batteries = [b for st in self.strings.values() for b in st.batteries]
        for b in self.rng.sample(all_batteries, min(weak_cells, len(all_batteries))):
            b.accel = self.rng.uniform(0.6, 1.0)
            b.capacity_factor *= 0.85
            b.float_offset -= 0.03 * b.cells_per_unit
            b.temp_offset += 1.5
            b.emf_drop = 0.02 * b.cells_per_unit
        self.refresh()

    def refresh(self) -> None:
        """Recompute what is cached from the batteries (call after changing a battery's capacity)."""
        with self.lock:
            for st in self.strings.values():
                st.weakest = min((b.capacity_factor for b in st.batteries), default=1.0)

    # -- time ------------------------------------------------------------------------------------------------
    def years(self, t: float | None = None) -> float:
        return ((self.t if t is None else t) - self.t0) / YEAR

    def advance_to(self, t: float) -> None:
        with self.lock:
            while self.t < t:
                dt = min(10.0, t - self.t)
                self._step(dt)
                self.t += dt

    def _step(self, dt: float) -> None:
        if self.t >= self.next_discharge:
            for st in self.strings.values():
                self.set_mode(st.id, "discharge")
            self.next_discharge = self.t + self.discharge_every_s
        for st in self.strings.values():
            if st.mode == "discharge" and self.t - st.mode_since >= self.discharge_duration_s:
                self.set_mode(st.id, "recharge")
            if st.mode == "discharge" and st.soc <= 0.02:
                self.set_mode(st.id, "recharge")
            cap_ah = st.capacity_ah * self.capacity_factor(st)
            if st.mode == "discharge":
                st.current = -st.discharge_current
                rated_i = st.capacity_ah / 20.0
                i_eff = st.discharge_current * (st.discharge_current / rated_i) ** (PEUKERT - 1.0)
                st.soc -= i_eff * dt / 3600.0 / cap_ah
            elif st.mode == "recharge":
                st.current = min(st.capacity_ah / 10.0, max(0.2, (1.0 - st.soc) * st.capacity_ah))
                st.soc += st.current * CHARGE_EFFICIENCY * dt / 3600.0 / cap_ah
                if st.soc >= 0.999:
                    st.soc = 1.0
                    self.set_mode(st.id, "float")
            elif st.mode == "float":
                st.current = 0.0005 * st.capacity_ah
                st.soc = min(1.0, st.soc + st.current * CHARGE_EFFICIENCY * dt / 3600.0 / cap_ah)
            else:  # rest
                st.current = 0.0
            st.soc = min(max(st.soc, 0.0), 1.0)

    def set_mode(self, sid: int, mode: str, current: float | None = None) -> None:
        with self.lock:
            st = self.strings[sid]
            st.mode = mode
            st.mode_since = self.t
            if current is not None:
                st.discharge_current = abs(current)

    def capacity_factor(self, st: StringState) -> float:
        # a string is as strong as its weakest battery
        return st.weakest * self.temp_capacity_factor()

    def temp_capacity_factor(self) -> float:
        return 1.0 + 0.005 * (self.ambient() - 25.0)

    # -- values ----------------------------------------------------------------------------------------------
    def ambient(self) -> float:
        day = (self.t % 86400.0) / 86400.0
        return self.ambient_base + 1.5 * math.sin(2 * math.pi * (day - 0.25))

    def humidity(self) -> float:
        return 45.0 + 5.0 * math.sin(2 * math.pi * (self.t % 86400.0) / 86400.0)

    def battery(self, sid: int, cell: int) -> Battery:
        return self.strings[sid].batteries[cell - 1]

    def true_ohmic(self, sid: int, cell: int, t: float | None = None) -> float:
        return self.battery(sid, cell).ohmic_at(self.years(t))

    def cell_temperature(self, sid: int, cell: int) -> float:
        st = self.strings[sid]
        b = st.batteries[cell - 1]
        heating = (st.current ** 2) * b.ohmic_at(self.years()) * 0.02
        return self.ambient() + b.temp_offset + heating

    def cell_emf(self, sid: int, cell: int) -> float:
        st = self.strings[sid]
        b = st.batteries[cell - 1]
        emf = b.cells_per_unit * ocv_per_cell(st.soc) - b.emf_drop
        if b.failed_cell:
            emf -= ocv_per_cell(st.soc)
        return emf

    def cell_voltage(self, sid: int, cell: int) -> float:
        st = self.strings[sid]
        b = st.batteries[cell - 1]
        n = b.cells_per_unit
        temp = self.cell_temperature(sid, cell)
        r_eff = 3.0 * b.ohmic_at(self.years())  # polarisation makes the dynamic drop larger than the ohmic value
        if st.mode == "float" or (st.mode == "recharge" and st.soc > 0.97):
            v = n * (FLOAT_V_PER_CELL + TEMP_COMP_V_PER_C * (min(max(temp, 5.0), 40.0) - 25.0)) + b.float_offset
        elif st.mode == "recharge":
            v = min(n * 2.35, self.cell_emf(sid, cell) + 0.15 * n + st.current * r_eff)
        else:
            v = self.cell_emf(sid, cell) + st.current * r_eff
        if b.failed_cell:
            v -= 2.0 * n / 6.0
        return v

    # -- ohmic tests -----------------------------------------------------------------------------------------
    def last_ohmic_test(self, sid: int, t: float | None = None) -> float:
        """When the sensors of string ``sid`` last ran an ohmic test (scheduled or on demand), at or before ``t``."""
        t = self.t if t is None else t
        every = self.ohmic_test_interval_s
        scheduled = self._ohmic_schedule0 + math.floor((t - self._ohmic_schedule0) / every) * every
        extra = self._ohmic_extra.get(sid)
        return extra if extra is not None and scheduled < extra <= t else scheduled

    def run_ohmic_test(self, sid: int | None = None) -> None:
        """The sensors of one string (every string when None) run an ohmic test now, as a user may ask."""
        with self.lock:
            for s in (self.strings if sid is None else [sid]):
                self._ohmic_extra[s] = self.t

    def ohmic_reading(self, sid: int, cell: int) -> float:
        """What the unit's sensor reports: the result of its last ohmic test (the true value then, with the
        test's repeatability error), held until it tests again."""
        with self.lock:
            tested = self.last_ohmic_test(sid)
            held = self._ohmic_held.get((sid, cell))
            if held is None or held[0] != tested:
                v = self.true_ohmic(sid, cell, tested)
                held = (tested, v * (1.0 + self.noise.gauss(0, self._NOISE["cell.ohmic"])))
                self._ohmic_held[(sid, cell)] = held
            return held[1]

    def micro_discharge_voltage(self, sid: int, cell: int, pulse_a: float = 10.0) -> float:
        return self.cell_voltage(sid, cell) - pulse_a * self.true_ohmic(sid, cell)

    def _average_voltage(self, sid: int) -> float:
        # balancing compares each unit with the string average: cache it per simulated second, since a
        # full scan asks for it once per unit
        cached = self._avg_cache.get(sid)
        if cached is None or abs(cached[0] - self.t) >= 1.0:
            cached = (self.t, self.string_voltage(sid) / self.strings[sid].cells)
            self._avg_cache[sid] = cached
        return cached[1]

    def string_voltage(self, sid: int) -> float:
        return sum(self.cell_voltage(sid, c) for c in range(1, self.strings[sid].cells + 1))

    def value(self, point: str, string: int | None = None, cell: int | None = None,
              channel: int | None = None) -> float:
        """What a perfect sensor would read for a point (measurement noise is added by ``measure``)."""
        if point.startswith("cell."):
            return self._cell_value(point, _position(string, point, "string"), _position(cell, point, "cell"))
        if point.startswith("string."):
            return self._string_value(point, _position(string, point, "string"))
        if point == "bank.voltage":
            return self.string_voltage(min(self.strings))
        if point == "bank.charger_current":
            return max(0.0, sum(st.current for st in self.strings.values()))
        if point == "io.ambient_temperature":
            return self.ambient()
        if point == "io.ambient_humidity":
            return self.humidity()
        if point == "io.di":
            return float((self.di_state >> ((channel or 1) - 1)) & 1)
        if point == "io.do":
            return float(self.do_state & 1)
        raise KeyError(point)

    def _cell_value(self, point: str, string: int, cell: int) -> float:
        if point == "cell.voltage":
            return self.cell_voltage(string, cell)
        if point == "cell.temperature":
            return self.cell_temperature(string, cell)
        if point == "cell.ohmic":
            return self.true_ohmic(string, cell)
        if point == "cell.emf":
            return self.cell_emf(string, cell)
        if point == "cell.micro_discharge_voltage":
            return self.micro_discharge_voltage(string, cell)
        if point in ("cell.balancing", "cell.sensor_status"):
            st = self.strings[string]
            avg = self._average_voltage(string)
            return 1.0 if self.cell_voltage(string, cell) > avg + 0.05 * st.cells_per_unit / 6 else 0.0
        raise KeyError(point)

    def _string_value(self, point: str, string: int) -> float:
        if point == "string.voltage":
            return self.string_voltage(string)
        if point == "string.current":
            return self.strings[string].current
        if point == "string.sensor_soc":
            return self.strings[string].soc * 100.0
        raise KeyError(point)

    KNOWN_POINTS = frozenset({
        "cell.voltage", "cell.temperature", "cell.ohmic", "cell.emf", "cell.micro_discharge_voltage",
        "cell.balancing", "cell.sensor_status", "string.voltage", "string.current", "string.sensor_soc",
        "bank.voltage", "bank.charger_current", "io.ambient_temperature", "io.ambient_humidity", "io.di", "io.do"})

    def set_override(self, point: str, value: float | None, string: int | None = None, cell: int | None = None,
                     channel: int | None = None) -> None:
        """Make the sensor of one point report ``value`` (None: its not-available code) until cleared."""
        with self.lock:
            self.overrides[(point, string, cell, channel)] = value

    def clear_override(self, point: str | None = None, string: int | None = None, cell: int | None = None,
                       channel: int | None = None) -> None:
        """Back to the physics: one point, or every override when ``point`` is None."""
        with self.lock:
            if point is None:
                self.overrides.clear()
            else:
                self.overrides.pop((point, string, cell, channel), None)

    # relative standard deviation of one reading (of one test for ohmic values)
    _NOISE: ClassVar[Mapping[str, float]] = {
        "cell.voltage": 0.0005, "cell.temperature": 0.05, "cell.ohmic": 0.005, "string.current": 0.002,
        "string.voltage": 0.0005, "cell.emf": 0.0005}

    def measure(self, point: str, string=None, cell=None, channel=None) -> float:
        """A sensor's reading: the physics plus measurement noise (ohmic values: the last test's result)."""
        if point == "cell.ohmic":
            return self.ohmic_reading(string, cell)
        v = self.value(point, string, cell, channel)
        rel = self._NOISE.get(point)
        if rel:
            v += self.noise.gauss(0, rel) * (abs(v) if point != "cell.temperature" else 1.0)
        return v

    def write(self, point: str, value: float, channel: int | None = None) -> None:
        if point == "io.do":
            self.do_state = int(value) & 1
        else:
            raise KeyError(point)

    def truth(self) -> dict:
        """Ground truth for the analytics tests: SOC per string, ohmic value and capacity per battery."""
        with self.lock:
            return {
                "t": self.t,
                "strings": {
                    sid: {"soc": st.soc * 100.0, "mode": st.mode, "current": st.current,
                          "capacity_ah": st.capacity_ah * self.capacity_factor(st),
                          "cells": {b.cell: {"ohmic": b.ohmic_at(self.years()), "capacity_factor": b.capacity_factor,
                                             "weak": bool(b.accel), "failed_cell": b.failed_cell}
                                    for b in st.batteries}}
                    for sid, st in self.strings.items()},
            }
