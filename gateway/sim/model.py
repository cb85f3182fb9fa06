"""A physically plausible battery bank: the simulator's ground truth, and the sensors that measure it.

Per string: float charge with temperature compensation, discharge and recharge events, a coulomb-counted
true SOC (Peukert, charge efficiency), a voltage under load that falls through an end-of-discharge knee.
Per battery: a spread of float voltage, capacity and ohmic value, slow ohmic aging (a few weak units age
fast, exponentially), negative-post temperature above ambient.
A cell sensor measures the ohmic value in a test it runs once per ``ohmic_test_interval_s`` (daily, as real
BCS sensors do) and reports that result, unchanged, until its next test.

The sensors carry the datasheets' errors (``SensorErrors``, ../shared/DOMAIN.md section 9): a hall current
sensor's zero offset, gain error, noise floor and offset drift with temperature; a gain error and 1 mV steps
per voltage sensor; a temperature offset per sensor; the ohmic test's repeatability (per test) and
conformity (per sensor).  ``value`` and ``truth`` stay the physics; ``measure`` is what a sensor reports.

Scenarios a test or a user can start: a thermal runaway on one string (float current rising with
temperature), a sensor stuck at one value, a sensor reading out of its range.
Time is simulated time (seconds since the Unix epoch): ``advance_to(t)`` integrates the string states.
"""
from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field, replace
from itertools import pairwise

YEAR = 365.25 * 86400.0
PEUKERT = 1.25
CHARGE_EFFICIENCY = 0.95
# 12 V AGM resting voltage -> SOC (../shared/DOMAIN.md), per 2 V cell
_OCV_SOC = [(0.0, 11.80 / 6), (0.25, 12.00 / 6), (0.50, 12.30 / 6), (0.75, 12.60 / 6), (1.0, 12.85 / 6)]
FLOAT_V_PER_CELL = 2.25
TEMP_COMP_V_PER_C = -0.003  # per 2 V cell
FLOAT_CURRENT_PER_AH = 0.0005  # A per Ah: a healthy VRLA string floats at 0.5 mA per Ah
# Voltage under load, per 2 V cell: a polarisation drop that grows with the logarithm of the current (scaled
# by the unit's ohmic value against a new one's), and the end-of-discharge knee: the voltage falls steeply in
# the last few per cent, reaching the rate's end voltage (1.75 V/cell at the 15-minute rate, 1.80 V/cell at
# C/4 and below) when the Peukert-corrected charge is used up.
POLARISATION_V = 0.047
KNEE_WIDTH = 0.02  # of the capacity: the knee's e-folding depth
END_V_SLOW, END_V_FAST = 1.80, 1.75  # end voltage per cell at C/4 and at the 15-minute rate
KNEE_MIN_V = 0.05  # the knee is never shallower than this (V per cell)
CUTOFF_V_PER_CELL = 1.70  # the UPS drops its load here: the discharge ends
RUNAWAY_TAU_S = 720.0  # thermal runaway: the extra float current grows e-fold every 12 min
RUNAWAY_MAX_C = 0.2  # ... up to 0.2 C
RUNAWAY_HEAT_C_PER_A = 0.6  # cell temperature rise per ampere of runaway current (lagged)
RUNAWAY_HEAT_TAU_S = 300.0


def ocv_per_cell(soc: float) -> float:
    soc = min(max(soc, 0.0), 1.0)
    for (s0, v0), (s1, v1) in pairwise(_OCV_SOC):
        if soc <= s1:
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
    return _OCV_SOC[-1][1]


def new_unit_ohmic(capacity_ah: float, cells_per_unit: int) -> float:
    """A new unit's ohmic value (ohm): 0.67 milliohm per 2 V cell at 100 Ah, falling with the square root of
    the capacity (a 12 V 100 Ah block about 4 milliohm, a 2 V 500 Ah cell about 0.30 milliohm, as their
    datasheets give)."""
    return cells_per_unit * 0.000667 * math.sqrt(100.0 / capacity_ah)


def end_voltage_per_cell(amps: float, capacity_ah: float, rated_hours: float = 20.0) -> float:
    """The end-of-discharge voltage per cell at a discharge current: 1.80 V at C/4 and below, 1.75 V at the
    15-minute rate, between them on the logarithm of the current."""
    c4 = capacity_ah / 4.0
    i20 = capacity_ah / rated_hours
    # the 15-minute rate of the Peukert capacity model: I x (I / I20)^(k - 1) x 0.25 h = C
    fast = (capacity_ah / 0.25 * i20 ** (PEUKERT - 1.0)) ** (1.0 / PEUKERT)
    if amps <= c4:
        return END_V_SLOW
    if amps >= fast:
        return END_V_FAST
    f = math.log(amps / c4) / math.log(fast / c4)
    return END_V_SLOW + (END_V_FAST - END_V_SLOW) * f


@dataclass(frozen=True, slots=True)
class SensorErrors:
    """The sensors' errors, from the datasheets (../shared/DOMAIN.md section 9); each can be set.

    A fixed error of a sensor (an offset, a gain error, conformity) is drawn once per sensor, uniformly within
    its datasheet bound; a random one (noise, an ohmic test's repeatability) is drawn per reading, with a
    standard deviation of half the datasheet bound (the bound read as a 95 % figure).
    ``current_offset_a`` None: each string sensor's hall clamp has its own zero offset within
    +-``current_offset_max_a``; a number: every string's; ``current_offsets`` overrides it per string.
    """

    current_offset_a: float | None = None
    current_offsets: tuple[tuple[int, float], ...] = ()
    current_offset_max_a: float = 3.0  # 0.3 % of the BM-SMD's +-1000 A
    current_gain_pct: float = 2.0
    current_noise_a: float = 0.1  # an absolute noise floor (1 sigma)
    current_drift_a_per_c: float = 0.02  # zero drift with the sensor's (the room's) temperature from 25 C
    voltage_gain_pct: float = 0.2  # BCS cell voltage
    voltage_step_v: float = 0.001
    voltage_noise_pct: float = 0.02  # per reading (1 sigma)
    string_voltage_gain_pct: float = 0.5  # BM-SMD
    bank_voltage_gain_pct: float = 0.25  # CMU
    temperature_offset_c: float = 0.5
    temperature_noise_c: float = 0.05
    ohmic_repeatability_pct: float = 1.0  # per test
    ohmic_repeatability_ohm: float = 25e-6
    ohmic_conformity_pct: float = 1.5  # per sensor
    ohmic_conformity_ohm: float = 25e-6

    @classmethod
    def none(cls) -> SensorErrors:
        """Perfect sensors: every reading is the physics (the ground truth)."""
        return cls(current_offset_a=0.0, current_offset_max_a=0.0, current_gain_pct=0.0, current_noise_a=0.0,
                   current_drift_a_per_c=0.0, voltage_gain_pct=0.0, voltage_step_v=0.0, voltage_noise_pct=0.0,
                   string_voltage_gain_pct=0.0, bank_voltage_gain_pct=0.0, temperature_offset_c=0.0,
                   temperature_noise_c=0.0, ohmic_repeatability_pct=0.0, ohmic_repeatability_ohm=0.0,
                   ohmic_conformity_pct=0.0, ohmic_conformity_ohm=0.0)

    @classmethod
    def from_config(cls, section: dict) -> SensorErrors:
        """The simulator section's ``sensor_errors`` (true/false, or a mapping of the fields above) and its
        ``current_offset_a`` / ``current_offsets``."""
        spec = section["sensor_errors"]
        base = cls.none() if spec is False else cls()
        if isinstance(spec, dict):
            base = replace(base, **{str(k): float(v) for k, v in spec.items()})  # type: ignore[arg-type]
        offset = section["current_offset_a"]
        if offset is not None:
            base = replace(base, current_offset_a=float(offset))
        per_string = section["current_offsets"]
        if per_string:
            base = replace(base, current_offsets=tuple(sorted((int(k), float(v)) for k, v in per_string.items())))
        return base

    def ohmic_test_sigma(self, ohm: float) -> float:
        """Standard deviation (ohm) of one ohmic test of a unit of ``ohm``: repeatability (1 % +- 25 micro-ohm)."""
        return math.hypot(self.ohmic_repeatability_pct / 200.0 * ohm, self.ohmic_repeatability_ohm / 2.0)


@dataclass(slots=True)
class SensorCalibration:
    """The fixed errors one sensor was built with (drawn once from ``SensorErrors``)."""

    gain: float = 0.0  # relative
    offset: float = 0.0  # in the unit of the value (A, C, ohm)


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
    failed_cell: bool = False  # one of its 2 V cells is shorted: the unit has one cell's voltage less
    emf_drop: float = 0.0  # V per unit lost by sulfation/dry-out
    step_rise: float = 0.0  # fractional ohmic rise on top of the aging (a connection fault, a scenario)

    def ohmic_at(self, years: float) -> float:
        rise = self.aging_per_year * years
        if self.accel:
            rise += (math.exp(self.accel * years) - 1.0) * 0.05
        return self.ohmic0 * (1.0 + rise) * (1.0 + self.step_rise)

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

    @property
    def working_fraction(self) -> float:
        """The share of the unit's cells that work: a shorted cell takes one cell's voltage, whatever the size."""
        return (self.cells_per_unit - 1) / self.cells_per_unit if self.failed_cell else 1.0


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
    over: float = 0.0  # charge drawn beyond empty (fraction of capacity): the knee's plunge
    batteries: list[Battery] = field(default_factory=list)
    weakest: float = 1.0  # lowest capacity factor of its batteries (a string is as strong as its weakest)
    ohmic_ratio: float = 1.0  # mean ohmic value of its batteries against new ones (refreshed as they age)
    runaway_since: float | None = None  # thermal runaway scenario: when it started
    runaway_current: float = 0.0  # A on top of the float current
    runaway_heat: float = 0.0  # C on top of every battery's temperature

    @property
    def float_current(self) -> float:
        return FLOAT_CURRENT_PER_AH * self.capacity_ah


def _position(value: int | None, point: str, key: str) -> int:
    """The string or cell number a family's value needs (a caller that leaves it out has a bug)."""
    if value is None:
        raise ValueError(f"{point}: a {key} number is needed")
    return value


class BankModel:
    def __init__(self, strings: list[tuple[int, int, float, int]], seed: int = 1, weak_cells: int = 3,
                 t0: float = 1.7e9, age_years: float = 1.0, discharge_every_s: float = 0.0,
                 discharge_duration_s: float = 1800.0, ohmic_test_interval_s: float = 86400.0,
                 errors: SensorErrors | None = None) -> None:
        """``strings``: (id, cells, capacity_ah, cells_per_unit) per string.  The sensors ran an ohmic test
        at ``t0`` (just before the first reading) and run one every ``ohmic_test_interval_s`` after it.
        ``errors``: the sensors' errors (default: the datasheets'; ``SensorErrors.none()``: perfect sensors)."""
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
        self._ohmic_extra_cell: dict[tuple[int, int], float] = {}  # (string, cell) -> a sensor asked on its own
        self._ohmic_held: dict[tuple[int, int], tuple[float, float]] = {}  # (string, cell) -> (test time, result)
        self.ambient_base = 24.0
        self.do_state = 0
        self.di_state = 0
        self.strings: dict[int, StringState] = {}
        self._avg_cache: dict[int, tuple[float, float]] = {}
        self._string_v_cache: dict[int, tuple[float, str, float]] = {}  # string -> (time, mode, volts)
        self.string_voltage_hold_s = 0.0  # > 0: a floating string's voltage is recomputed this often (long runs)
        # (point, string, cell, channel) -> value a sensor reports instead of the physics (None: not available)
        self.overrides: dict[tuple, float | None] = {}
        for sid, cells, cap, cpu in strings:
            st = StringState(sid, cells, cap, cpu, mode_since=t0, discharge_current=cap / 4.0)
            st.current = st.float_current
            for c in range(1, cells + 1):
                r = self.rng
                ohmic0 = new_unit_ohmic(cap, cpu) * r.uniform(0.93, 1.07)
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
        self.errors = SensorErrors() if errors is None else errors
        self.scenarios: list[tuple[float, str, dict]] = []  # (when, kind, arguments), by time
        self.calibration: dict[tuple, SensorCalibration] = {}
        self._calibrate(random.Random(seed + 2))
        self.refresh()

    def _calibrate(self, rng: random.Random) -> None:
        """Draw every sensor's fixed errors (its own random stream: the physics stay those of the seed)."""
        e = self.errors
        per_string = dict(e.current_offsets)

        def u(bound: float) -> float:
            return rng.uniform(-bound, bound) if bound else 0.0

        for sid, st in self.strings.items():
            drawn = u(e.current_offset_max_a)
            offset = per_string.get(sid, e.current_offset_a if e.current_offset_a is not None else drawn)
            self.calibration[("string.current", sid, None)] = SensorCalibration(u(e.current_gain_pct / 100.0), offset)
            self.calibration[("string.voltage", sid, None)] = SensorCalibration(u(e.string_voltage_gain_pct / 100.0))
            for b in st.batteries:
                self.calibration[("cell.voltage", sid, b.cell)] = SensorCalibration(u(e.voltage_gain_pct / 100.0))
                self.calibration[("cell.temperature", sid, b.cell)] = SensorCalibration(0.0, u(e.temperature_offset_c))
                self.calibration[("cell.ohmic", sid, b.cell)] = SensorCalibration(
                    u(e.ohmic_conformity_pct / 100.0), u(e.ohmic_conformity_ohm))
        self.calibration[("bank.voltage", None, None)] = SensorCalibration(u(e.bank_voltage_gain_pct / 100.0))

    def set_current_offset(self, sid: int, offset_a: float) -> None:
        """Give string ``sid``'s hall clamp another zero offset (A), e.g. after a test changed the setting."""
        with self.lock:
            cal = self.calibration[("string.current", sid, None)]
            cal.offset = offset_a

    def current_offset(self, sid: int) -> float:
        """The hall clamp's zero offset now (A): its fixed offset plus its drift with the room's temperature."""
        return self.calibration[("string.current", sid, None)].offset + \
            self.errors.current_drift_a_per_c * (self.ambient() - 25.0)

    def refresh(self) -> None:
        """Recompute what is cached from the batteries (call after changing a battery: its capacity, its float
        voltage ...)."""
        with self.lock:
            self._string_v_cache.clear()
            self._avg_cache.clear()
            years = self.years()
            for st in self.strings.values():
                st.weakest = min((b.capacity_factor for b in st.batteries), default=1.0)
                new = new_unit_ohmic(st.capacity_ah, st.cells_per_unit)
                st.ohmic_ratio = sum(b.ohmic_at(years) for b in st.batteries) / max(1, len(st.batteries)) / new

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
        while self.scenarios and self.scenarios[0][0] <= self.t:
            _, kind, args = self.scenarios.pop(0)
            self.start_scenario(kind, **args)
        if self.t >= self.next_discharge:
            for st in self.strings.values():
                self.set_mode(st.id, "discharge")
            self.next_discharge = self.t + self.discharge_every_s
        for st in self.strings.values():
            if st.mode == "discharge" and self.t - st.mode_since >= self.discharge_duration_s:
                self.set_mode(st.id, "recharge")
            if st.mode == "discharge" and (self.string_loaded_v_per_cell(st) <= CUTOFF_V_PER_CELL or st.over >= 0.05):
                self.set_mode(st.id, "recharge")  # the UPS dropped its load at its low-battery cut-off
            cap_ah = st.capacity_ah * self.capacity_factor(st)
            if st.mode == "discharge":
                st.current = -st.discharge_current
                rated_i = st.capacity_ah / 20.0
                i_eff = st.discharge_current * (st.discharge_current / rated_i) ** (PEUKERT - 1.0)
                st.soc -= i_eff * dt / 3600.0 / cap_ah
                if st.soc < 0.0:
                    st.over -= st.soc
            elif st.mode == "recharge":
                st.over = 0.0
                st.current = min(st.capacity_ah / 10.0, max(0.2, (1.0 - st.soc) * st.capacity_ah))
                st.soc += st.current * CHARGE_EFFICIENCY * dt / 3600.0 / cap_ah
                if st.soc >= 0.999:
                    st.soc = 1.0
                    self.set_mode(st.id, "float")
            elif st.mode == "float":
                st.current = st.float_current
                st.soc = min(1.0, st.soc + st.current * CHARGE_EFFICIENCY * dt / 3600.0 / cap_ah)
            else:  # rest
                st.current = 0.0
            self._runaway_step(st, dt)
            st.soc = min(max(st.soc, 0.0), 1.0)

    def _runaway_step(self, st: StringState, dt: float) -> None:
        if st.runaway_since is None:
            st.runaway_current = 0.0
        else:
            grown = st.float_current * (math.exp(min(50.0, (self.t - st.runaway_since) / RUNAWAY_TAU_S)) - 1.0)
            st.runaway_current = min(grown, RUNAWAY_MAX_C * st.capacity_ah)
            if st.mode in ("float", "rest"):
                st.current += st.runaway_current
        target = RUNAWAY_HEAT_C_PER_A * st.runaway_current
        st.runaway_heat += (target - st.runaway_heat) * min(1.0, dt / RUNAWAY_HEAT_TAU_S)

    def set_mode(self, sid: int, mode: str, current: float | None = None) -> None:
        with self.lock:
            st = self.strings[sid]
            st.mode = mode
            st.mode_since = self.t
            self._string_v_cache.pop(sid, None)
            if current is not None:
                st.discharge_current = abs(current)
            if mode == "discharge":
                self.refresh()

    def capacity_factor(self, st: StringState) -> float:
        # a string is as strong as its weakest battery
        return st.weakest * self.temp_capacity_factor()

    def temp_capacity_factor(self) -> float:
        return 1.0 + 0.005 * (self.ambient() - 25.0)

    # -- scenarios -------------------------------------------------------------------------------------------
    SCENARIOS = ("thermal_runaway", "stuck", "out_of_range", "mains_failure", "mains_return")

    def schedule_scenario(self, at: float, kind: str, **args) -> None:
        """Start scenario ``kind`` (one of ``SCENARIOS``, with ``start_scenario``'s arguments) at simulated time
        ``at``."""
        if kind not in self.SCENARIOS:
            raise ValueError(f"unknown scenario {kind!r}; expected one of {', '.join(self.SCENARIOS)}")
        with self.lock:
            self.scenarios.append((at, kind, dict(args)))
            self.scenarios.sort(key=lambda s: s[0])

    def start_scenario(self, kind: str, string: int | None = None, cell: int | None = None,
                       point: str | None = None, value: float | None = None) -> None:
        """``thermal_runaway`` of ``string``; ``stuck``: the sensor of ``point`` (``string``, ``cell``) freezes;
        ``out_of_range``: it reports ``value``, beyond its measuring range; ``mains_failure``: ``string`` (or
        every string) discharges, at ``value`` A (or its discharge current), until its end voltage or
        ``mains_return`` (the charger recharges it)."""
        if kind in ("mains_failure", "mains_return"):
            with self.lock:
                if string is not None and string not in self.strings:
                    raise ValueError(f"scenario {kind!r}: no string {string}")
                for sid in [string] if string is not None else list(self.strings):
                    if kind == "mains_failure":
                        self.set_mode(sid, "discharge", value)
                    else:
                        self.set_mode(sid, "recharge")
            return
        if kind == "thermal_runaway" and string is not None:
            self.start_thermal_runaway(string)
        elif kind == "stuck" and point is not None:
            self.stick_sensor(point, string, cell)
        elif kind == "out_of_range" and point is not None and value is not None:
            self.sensor_out_of_range(point, value, string, cell)
        else:
            raise ValueError(f"scenario {kind!r}: expected one of {', '.join(self.SCENARIOS)} with its string "
                             f"(thermal_runaway), point (stuck) or point and value (out_of_range)")

    def start_thermal_runaway(self, sid: int) -> None:
        """String ``sid`` goes into thermal runaway now: its float current grows e-fold every 12 minutes (up to
        0.2 C) and its batteries warm with it."""
        with self.lock:
            self.strings[sid].runaway_since = self.t

    def stop_thermal_runaway(self, sid: int) -> None:
        with self.lock:
            self.strings[sid].runaway_since = None

    def stick_sensor(self, point: str, string: int | None = None, cell: int | None = None,
                     channel: int | None = None) -> float:
        """The sensor of one point freezes at its present reading (a stuck value) until cleared; returns it."""
        with self.lock:
            value = self.measure(point, string, cell, channel)
            self.set_override(point, value, string, cell, channel)
            return value

    def sensor_out_of_range(self, point: str, value: float, string: int | None = None, cell: int | None = None,
                            channel: int | None = None) -> None:
        """The sensor of one point reports ``value``, beyond its measuring range (a broken lead, a short): the
        gateway must mark it OUT_OF_RANGE, not trust it."""
        self.set_override(point, value, string, cell, channel)

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
        heating = (st.current ** 2) * b.ohmic_at(self.years()) * 0.02 * (100.0 / st.capacity_ah)
        return self.ambient() + b.temp_offset + heating + st.runaway_heat

    def cell_emf(self, sid: int, cell: int) -> float:
        st = self.strings[sid]
        b = st.batteries[cell - 1]
        return self._unit_emf(st, b) * b.working_fraction

    @staticmethod
    def _unit_emf(st: StringState, b: Battery) -> float:
        """The unit's EMF were all its cells working (a failed cell's share comes off afterwards)."""
        return b.cells_per_unit * ocv_per_cell(st.soc) - b.emf_drop

    def _loaded_drop_per_cell(self, st: StringState, ohmic_ratio: float) -> float:
        """Voltage drop per 2 V cell under a discharge current, with the end-of-discharge knee."""
        amps = -st.current
        if amps <= 0:
            return 0.0
        drop = POLARISATION_V * math.log1p(amps / (st.capacity_ah / 20.0)) * ohmic_ratio
        knee0 = max(KNEE_MIN_V, ocv_per_cell(0.0) - POLARISATION_V * math.log1p(amps / (st.capacity_ah / 20.0))
                    - end_voltage_per_cell(amps, st.capacity_ah))
        remaining = st.soc - st.over  # below zero: past empty, the voltage plunges
        return drop + knee0 * math.exp(-remaining / KNEE_WIDTH)

    def string_loaded_v_per_cell(self, st: StringState) -> float:
        """The string's average voltage per 2 V cell under load (for the UPS's cut-off)."""
        return ocv_per_cell(st.soc) - self._loaded_drop_per_cell(st, st.ohmic_ratio)

    def cell_voltage(self, sid: int, cell: int) -> float:
        st = self.strings[sid]
        b = st.batteries[cell - 1]
        n = b.cells_per_unit
        if st.mode == "float" or (st.mode == "recharge" and st.soc > 0.97):
            temp = self.cell_temperature(sid, cell)
            v = n * (FLOAT_V_PER_CELL + TEMP_COMP_V_PER_C * (min(max(temp, 5.0), 40.0) - 25.0)) + b.float_offset
        elif st.mode == "recharge":
            r_eff = 3.0 * b.ohmic_at(self.years())
            v = min(n * 2.35, self._unit_emf(st, b) + 0.15 * n + st.current * r_eff)
        elif st.current < 0:
            ratio = b.ohmic_at(self.years()) / new_unit_ohmic(st.capacity_ah, n)
            v = self._unit_emf(st, b) - n * self._loaded_drop_per_cell(st, ratio)
        else:
            v = self._unit_emf(st, b)
        return v * b.working_fraction

    # -- ohmic tests -----------------------------------------------------------------------------------------
    def last_ohmic_test(self, sid: int, t: float | None = None, cell: int | None = None) -> float:
        """When the sensors of string ``sid`` (of its battery ``cell``: its sensor may have been asked on its
        own) last ran an ohmic test (scheduled or on demand), at or before ``t``."""
        t = self.t if t is None else t
        every = self.ohmic_test_interval_s
        last = self._ohmic_schedule0 + math.floor((t - self._ohmic_schedule0) / every) * every
        for extra in (self._ohmic_extra.get(sid), self._ohmic_extra_cell.get((sid, cell or 0))):
            if extra is not None and last < extra <= t:
                last = extra
        return last

    def run_ohmic_test(self, sid: int | None = None) -> None:
        """The sensors of one string (every string when None) run an ohmic test now, as a user may ask."""
        with self.lock:
            for s in (self.strings if sid is None else [sid]):
                self._ohmic_extra[s] = self.t

    def sensor_ohmic(self, sid: int, cell: int, t: float | None = None) -> float:
        """What the unit's sensor reads on average (its conformity error included): the truth it is judged by."""
        cal = self.calibration.get(("cell.ohmic", sid, cell))
        v = self.true_ohmic(sid, cell, t)
        return v * (1.0 + cal.gain) + cal.offset if cal is not None else v

    def ohmic_reading(self, sid: int, cell: int) -> float:
        """What the unit's sensor reports: the result of its last ohmic test (the truth then, with the sensor's
        conformity error and the test's repeatability error), held until it tests again."""
        with self.lock:
            tested = self.last_ohmic_test(sid, cell=cell)
            held = self._ohmic_held.get((sid, cell))
            if held is None or held[0] != tested:
                v = self.sensor_ohmic(sid, cell, tested)
                e = self.errors
                if e.ohmic_repeatability_pct or e.ohmic_repeatability_ohm:
                    v += self.noise.gauss(0, e.ohmic_repeatability_pct / 200.0) * v + \
                        self.noise.gauss(0, e.ohmic_repeatability_ohm / 2.0)
                held = (tested, max(v, 1e-6))
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
        st = self.strings[sid]
        if self.string_voltage_hold_s and st.mode in ("float", "rest") and st.runaway_since is None:
            # held by the charger (or at rest): it moves with the room's temperature only, by a few millivolts a
            # minute, far below what a string sensor resolves; a long simulated-time run asks every few seconds
            cached = self._string_v_cache.get(sid)
            if cached is not None and cached[1] == st.mode and 0.0 <= self.t - cached[0] < self.string_voltage_hold_s:
                return cached[2]
        v = sum(self.cell_voltage(sid, c) for c in range(1, st.cells + 1))
        self._string_v_cache[sid] = (self.t, st.mode, v)
        return v

    def value(self, point: str, string: int | None = None, cell: int | None = None,
              channel: int | None = None) -> float:
        """What a perfect sensor would read for a point (``measure`` adds the sensor's errors)."""
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

    def measure(self, point: str, string=None, cell=None, channel=None) -> float:
        """A sensor's reading: the physics with the sensor's errors (ohmic values: the last test's result)."""
        if point == "cell.ohmic":
            return self.ohmic_reading(string, cell)
        v = self.value(point, string, cell, channel)
        e = self.errors
        gauss = self.noise.gauss
        if point == "string.current":
            current = self.calibration[("string.current", string, None)]
            v = v * (1.0 + current.gain) + self.current_offset(string)
            if e.current_noise_a:
                v += gauss(0, e.current_noise_a)
        elif point in ("cell.voltage", "cell.emf", "cell.micro_discharge_voltage"):
            cal = self.calibration.get(("cell.voltage", string, cell))
            v *= 1.0 + (cal.gain if cal is not None else 0.0)
            if e.voltage_noise_pct:
                v += gauss(0, e.voltage_noise_pct / 100.0) * v
            if e.voltage_step_v:
                v = round(v / e.voltage_step_v) * e.voltage_step_v
        elif point in ("string.voltage", "bank.voltage"):
            cal = self.calibration.get((point, string if point == "string.voltage" else None, None))
            v *= 1.0 + (cal.gain if cal is not None else 0.0)
            if e.voltage_noise_pct:
                v += gauss(0, e.voltage_noise_pct / 100.0) * v
        elif point == "cell.temperature":
            cal = self.calibration.get(("cell.temperature", string, cell))
            v += cal.offset if cal is not None else 0.0
            if e.temperature_noise_c:
                v += gauss(0, e.temperature_noise_c)
        return v

    def write(self, point: str, value: float, channel: int | None = None, string: int | None = None,
              cell: int | None = None) -> None:
        """A master wrote a holding register: the relay, or a cell sensor asked to run an ohmic test now."""
        if point == "io.do":
            self.do_state = int(value) & 1
        elif point == "cell.ohmic_test" and string is not None and cell is not None:
            if int(value) == 1:
                with self.lock:
                    self._ohmic_extra_cell[(string, cell)] = self.t
        else:
            raise KeyError(point)

    def truth(self) -> dict:
        """Ground truth for the analytics tests: SOC per string, ohmic value and capacity per battery, and the
        sensors' own errors (each string's hall offset now)."""
        with self.lock:
            return {
                "t": self.t,
                "strings": {
                    sid: {"soc": st.soc * 100.0, "mode": st.mode, "current": st.current,
                          "capacity_ah": st.capacity_ah * self.capacity_factor(st),
                          "current_offset": self.current_offset(sid), "runaway_current": st.runaway_current,
                          "cells": {b.cell: {"ohmic": b.ohmic_at(self.years()), "capacity_factor": b.capacity_factor,
                                             "weak": bool(b.accel), "failed_cell": b.failed_cell}
                                    for b in st.batteries}}
                    for sid, st in self.strings.items()},
            }
