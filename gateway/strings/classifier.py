"""One string's state, current zero and thermal-runaway watch: pure logic over (value, timestamp) pairs.

No I/O and no clock of its own (every call takes ``now``), so tests and the simulated-time runs drive it with
made-up or simulated time.

State (the only definition of it in the gateway; ``string.state``):

* the string's voltage per 2 V cell at or above ``float_min_v_per_cell`` means a charger holds it: a battery
  that delivers current sits below its open-circuit voltage (about 2.14 V per cell when full), so a string at
  float voltage is never discharging, whatever its current sensor says.  There it is *charging* while the
  corrected current is above ``charge_above_c`` (the recharge's tail), else *float* (and stays *float* while its
  float current runs away);
* below it: *discharging* when the corrected current is below minus ``discharge_below_c`` (and, while the
  sensor's zero is not known yet, the voltage falls or the current is beyond any zero offset the sensor may
  have), *charging* when it is above ``charge_above_c``, else *rest*;
* without a current reading: *discharging* when the voltage falls faster than ``falling_v_per_cell_h``,
  otherwise as above with no current.

Current zero (auto-zero, as battery monitors with hall clamps do): while the string floats, its voltage flat,
for ``float_settle_s`` after any charge or discharge, and nothing heats up, the hall clamp's offset is learnt
as the measured current minus the normal float current (``float_current_ma_per_ah`` x capacity, or the
float current measured after a manual zero), window by window, moving at most ``learn_rate_a_per_h`` until
it is known and ``track_rate_a_per_h`` after (its drift with temperature), never beyond ``max_offset_a``.
A discharge is never learnt: learning needs the float voltage.  A manual zero (the string's breaker open, or
the clamp off the cable) sets the offset to the present reading.

Thermal runaway: on float, the float current (corrected, averaged over two minutes) above
``float_current_factor`` x its normal and not falling (once the zero is known), or the float current and
the batteries' temperature over ambient rising together over ``window_s`` -- unless the charger raised the
voltage meanwhile (a boost charge draws more current too).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .states import StringStates

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class ClassifierParams:
    capacity_ah: float
    cells: int  # 2 V cells in the string (units x cells per unit)
    float_min_v_per_cell: float = 2.18
    charge_above_c: float = 0.01
    discharge_below_c: float = 0.005
    falling_v_per_cell_h: float = 0.02
    trend_window_s: float = 600.0
    deadband_a: float = 0.3
    auto_zero: bool = True
    max_offset_a: float = 10.0
    learn_rate_a_per_h: float = 6.0
    track_rate_a_per_h: float = 0.1
    float_settle_s: float = 3600.0
    learn_window_s: float = 300.0
    flat_v_per_cell_h: float = 0.005
    float_current_ma_per_ah: float = 0.5
    runaway: bool = True
    runaway_factor: float = 3.0
    runaway_min_excess_c: float = 0.001
    runaway_window_s: float = 1800.0
    runaway_current_rise_c: float = 0.0005
    runaway_temperature_rise_c: float = 0.5
    relearn_after_s: float = 86400.0  # the zero stays away from its learnt value this long without heat: relearn

    @property
    def nominal_float_current(self) -> float:
        return self.float_current_ma_per_ah / 1000.0 * self.capacity_ah

    @property
    def runaway_min_excess_a(self) -> float:
        return self.runaway_min_excess_c * self.capacity_ah

    @property
    def zero_band_a(self) -> float:
        """How far the learnt zero may be from a window's reading and still be followed: half the smallest
        float-current excess the runaway watch looks for."""
        return 0.5 * self.runaway_min_excess_a


@dataclass(slots=True)
class ZeroState:
    """What is kept across restarts."""

    offset: float = 0.0  # A, taken off the measured current
    known: bool = False  # learnt (or set by hand) and confirmed by a window close to it
    manual: bool = False  # set by hand: the float current measured after it is the normal one
    normal: float | None = None  # A: the learnt normal float current (after a manual zero)
    by: str = ""  # who set it by hand
    ts: float | None = None  # when it was set by hand

    def to_dict(self) -> dict:
        return {"offset": self.offset, "known": self.known, "manual": self.manual, "normal": self.normal,
                "by": self.by, "ts": self.ts}

    @classmethod
    def from_dict(cls, d: dict) -> ZeroState:
        def num(key: str) -> float | None:
            v = d.get(key)
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

        return cls(offset=num("offset") or 0.0, known=bool(d.get("known")), manual=bool(d.get("manual")),
                   normal=num("normal"), by=str(d.get("by") or "")[:64], ts=num("ts"))


class ZeroRefused(ValueError):
    """A manual zero that would take a real current for the sensor's offset."""


class StringClassifier:
    """State, current zero and runaway watch of one string."""

    def __init__(self, string: int, params: ClassifierParams, states: StringStates,
                 saved: ZeroState | None = None) -> None:
        self.string = string
        self.p = params
        self.codes = states
        self.zero = saved or ZeroState()
        self.zero.offset = max(-params.max_offset_a, min(params.max_offset_a, self.zero.offset))
        self.state = states.unknown
        self.state_since: float | None = None
        self.discharge_since: float | None = None
        self.float_since: float | None = None  # on float, settled from this time (after any charge/discharge)
        self.v_cell: float | None = None
        self.v_ts: float | None = None
        self._volts: deque[tuple[float, float]] = deque()  # (ts, V per cell) over the trend window
        self._trend: float | None = None
        self._trend_at: float | None = None
        self.raw: float | None = None  # last measured current
        self.raw_ts: float | None = None
        self.corrected: float | None = None  # last corrected current (before the deadband)
        self._recent: deque[tuple[float, float, float]] = deque()  # (ts, raw, corrected) over 2 minutes
        self._win_sum = 0.0
        self._win_n = 0
        self._win_start: float | None = None
        self._away_since: float | None = None  # the readings sit beyond the band around the known zero
        self._normal_windows = 0
        # (ts, float current, temperature rise, V per cell) over the runaway window
        self._watch: deque[tuple[float, float, float | None, float | None]] = deque()
        self.runaway = 0  # 0 none, 1 float current high, 2 current rising with temperature
        self.heating = False  # the batteries warm over ambient: no learning
        self.float_v: float | None = None  # V per cell the string settled at on float (learning windows)
        self.learning = False

    # -- inputs ------------------------------------------------------------------------------------------------
    def on_voltage(self, v_per_cell: float | None, ts: float) -> None:
        """The string's voltage per 2 V cell (None: not available now)."""
        self.v_cell, self.v_ts = v_per_cell, ts
        if v_per_cell is None:
            self._volts.clear()
            self._trend = self._trend_at = None
            return
        vs = self._volts
        vs.append((ts, v_per_cell))
        horizon = ts - self.p.trend_window_s
        while vs and vs[0][0] < horizon:
            vs.popleft()

    def trend(self) -> float | None:
        """Least-squares slope of the voltage per cell over the trend window, V per hour (None: too little);
        recomputed at most every 30 s."""
        vs = self._volts
        last = vs[-1][0] if vs else None
        if last is not None and self._trend_at is not None and 0.0 <= last - self._trend_at < 30.0:
            return self._trend
        self._trend_at = last
        self._trend = self._slope()
        return self._trend

    def _slope(self) -> float | None:
        vs = self._volts
        if len(vs) < 4 or vs[-1][0] - vs[0][0] < 0.5 * self.p.trend_window_s:
            return None
        t0 = vs[0][0]
        n = len(vs)
        mx = sum(t - t0 for t, _ in vs) / n
        my = sum(v for _, v in vs) / n
        sxx = sum((t - t0 - mx) ** 2 for t, _ in vs)
        if sxx <= 0:
            return None
        return sum((t - t0 - mx) * (v - my) for t, v in vs) / sxx * HOUR_S

    def correct(self, raw: float) -> float:
        """The measured current with the zero offset taken off (no deadband)."""
        return raw - self.zero.offset

    def published(self, corrected: float) -> float:
        """What ``string.current`` shows: the corrected current, 0 inside the deadband."""
        return 0.0 if abs(corrected) < self.p.deadband_a else corrected

    def on_current(self, raw: float | None, ts: float) -> float | None:
        """A measured current (None: not available): classify, learn the zero; returns the corrected current."""
        if raw is None:
            self.raw = self.corrected = None
            self.classify(ts)
            return None
        self.raw, self.raw_ts = raw, ts
        corrected = self.corrected = self.correct(raw)
        rec = self._recent
        rec.append((ts, raw, corrected))
        while rec and rec[0][0] < ts - 120.0:
            rec.popleft()
        self.classify(ts)
        self._learn(raw, ts)
        return corrected

    # -- state -------------------------------------------------------------------------------------------------
    def _uncertainty(self) -> float:
        """How far the corrected current may be off: the largest offset while the zero is not known."""
        return 0.0 if self.zero.known else self.p.max_offset_a

    def classify(self, now: float) -> int:
        p, codes = self.p, self.codes
        cap = p.capacity_ah
        charge, discharge = p.charge_above_c * cap, p.discharge_below_c * cap
        unc = self._uncertainty()
        i = self.corrected
        v = self.v_cell
        if v is not None and self.v_ts is not None and self.raw_ts is not None and self.raw_ts - self.v_ts > 60.0:
            v = None  # the voltage is too old to tell with
        trend = self.trend()
        if v is None:
            if i is None:
                state = codes.unknown
            elif i < -(discharge + p.max_offset_a):
                state = codes.discharging
            elif i > charge + p.max_offset_a:
                state = codes.charging
            else:
                state = codes.unknown
        else:
            margin = 0.01 if self.state in (codes.floating, codes.charging) else 0.0  # no flicker at the limit
            if v >= p.float_min_v_per_cell - margin:
                limit = (0.8 if self.state == codes.charging else 1.0) * charge + unc
                if self.runaway and self.state == codes.floating:
                    state = codes.floating  # a runaway's current, not a recharge: the string stays on float
                else:
                    state = codes.charging if i is not None and i > limit else codes.floating
            elif i is None:
                falling = trend is not None and trend < -p.falling_v_per_cell_h
                state = codes.discharging if falling else codes.rest
            else:
                falling = trend is not None and trend < -p.falling_v_per_cell_h
                if i < -(discharge + unc) or (i < -discharge and falling):
                    state = codes.discharging
                elif i > charge + unc:
                    state = codes.charging
                else:
                    state = codes.rest
        self._set_state(state, now)
        return state

    def _set_state(self, state: int, now: float) -> None:
        codes = self.codes
        if state != self.state:
            self.state, self.state_since = state, now
            self.discharge_since = now if state == codes.discharging else None
            if state != codes.floating:
                self.float_since = None
                self._reset_window()
        if state == codes.floating and self.float_since is None:
            self.float_since = now

    def on_battery_time(self, now: float) -> float:
        return now - self.discharge_since if self.discharge_since is not None else 0.0

    # -- current zero ------------------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self._win_sum, self._win_n, self._win_start = 0.0, 0, None

    def _may_learn(self, now: float) -> bool:
        p = self.p
        if not p.auto_zero or self.state != self.codes.floating or self.float_since is None:
            return False
        if now - self.float_since < p.float_settle_s or self.heating or self.runaway or self.boosted():
            return False
        trend = self.trend()
        return trend is not None and abs(trend) <= p.flat_v_per_cell_h

    def _learn(self, raw: float, now: float) -> None:
        self.learning = self._may_learn(now)
        if not self.learning:
            self._reset_window()
            return
        if self._win_start is None:
            self._win_start = now
        self._win_sum += raw
        self._win_n += 1
        if now - self._win_start < self.p.learn_window_s:
            return
        mean_raw = self._win_sum / self._win_n
        hours = (now - self._win_start) / HOUR_S
        self._reset_window()
        self._apply_window(mean_raw, hours, now)

    def normal_float_current(self) -> float:
        """The float current the zero is learnt against, and the runaway watch compares with."""
        if self.zero.manual and self.zero.normal is not None:
            return max(self.zero.normal, 0.2 * self.p.nominal_float_current)
        return self.p.nominal_float_current

    def _apply_window(self, mean_raw: float, hours: float, now: float) -> None:
        p, z = self.p, self.zero
        if z.manual and self._normal_windows < 12:
            # after a manual zero the first hour of settled float says what this string's float current is
            measured = mean_raw - z.offset
            z.normal = measured if z.normal is None else z.normal + (measured - z.normal) / (self._normal_windows + 1)
            self._normal_windows += 1
            return
        target = mean_raw - self.normal_float_current()
        delta = target - z.offset
        if z.known and abs(delta) > p.zero_band_a:
            # far from the known zero: a rising float current is for the runaway watch, not to be learnt;
            # only a shift that lasts a day with nothing warming is the sensor's zero moving
            if self._away_since is None:
                self._away_since = now
            if now - self._away_since < p.relearn_after_s:
                return
            z.known = False
        self._away_since = None
        if self.v_cell is not None:  # the charger's float voltage, followed slowly (temperature compensation)
            self.float_v = self.v_cell if self.float_v is None else self.float_v + 0.2 * (self.v_cell - self.float_v)
        rate = p.track_rate_a_per_h if z.known else p.learn_rate_a_per_h
        step = max(-rate * hours, min(rate * hours, delta))
        z.offset = max(-p.max_offset_a, min(p.max_offset_a, z.offset + step))
        if abs(target - z.offset) <= p.zero_band_a:
            z.known = True

    def zero_now(self, now: float, by: str) -> float:
        """A manual zero: the string carries no current now.  Sets the offset to the mean measured current of
        the last two minutes and returns it; raises ``ZeroRefused`` during a discharge or a charge, or when
        the sensor reads more than any zero offset could be."""
        if self.state in (self.codes.discharging, self.codes.charging):
            raise ZeroRefused(f"string {self.string} is {self.codes.name(self.state)}: a zero needs no current "
                              f"through the sensor (breaker open or clamp off the cable)")
        recent = [raw for ts, raw, _ in self._recent if ts >= now - 120.0]
        if not recent:
            raise ZeroRefused(f"string {self.string}: no current reading in the last two minutes")
        mean = sum(recent) / len(recent)
        if abs(mean) > self.p.max_offset_a:
            raise ZeroRefused(f"string {self.string}: the sensor reads {mean:+.1f} A, more than a zero offset can "
                              f"be ({self.p.max_offset_a:g} A): that is a current")
        self.zero = ZeroState(offset=mean, known=True, manual=True, normal=None, by=by, ts=now)
        self._normal_windows = 0
        self._away_since = None
        self._reset_window()
        if self.raw is not None:
            self.corrected = self.correct(self.raw)
        return mean

    def boosted(self, v_before: float | None = None) -> bool:
        """The charger raised its voltage over the float it settled at (or over ``v_before``): a boost charge."""
        v = self.v_cell
        if v is None:
            return False
        return (v_before is not None and v - v_before > 0.02) or (self.float_v is not None and v - self.float_v > 0.03)

    # -- thermal runaway ---------------------------------------------------------------------------------------
    def float_current(self) -> float | None:
        """The corrected current averaged over the last two minutes (None: no reading)."""
        rec = self._recent
        return sum(c for _, _, c in rec) / len(rec) if rec else None

    def watch(self, now: float, temperature_rise: float | None) -> int:
        """The runaway watch at ``now``; ``temperature_rise``: the batteries' mean temperature over ambient
        (or their mean temperature when there is no ambient sensor)."""
        p = self.p
        current = self.float_current()
        w = self._watch
        if self.state != self.codes.floating or current is None or not p.runaway:
            w.clear()
            self.runaway = 0
            self.heating = False
            return 0
        w.append((now, current, temperature_rise, self.v_cell))
        while len(w) > 2 and w[1][0] <= now - p.runaway_window_s:
            w.popleft()
        t_old, i_old, temp_old, v_old = w[0]
        boosted = self.boosted(v_old)
        span = now - t_old
        rising_i = current - i_old
        rising_t = temperature_rise - temp_old if temperature_rise is not None and temp_old is not None else None
        self.heating = rising_t is not None and rising_t > 0.5 * p.runaway_temperature_rise_c
        normal = self.normal_float_current()
        limit = max(p.runaway_factor * normal, normal + p.runaway_min_excess_a)
        state = 0
        settled = span >= 0.5 * p.runaway_window_s  # sustained, and not the tail of a recharge (that falls)
        if boosted:
            state = 0  # the charger raised its voltage (a boost charge): more current is what it asked for
        elif self.zero.known and settled and current > limit and rising_i >= -0.1 * p.runaway_min_excess_a:
            state = 1
        elif (span >= 0.5 * p.runaway_window_s and rising_i > p.runaway_current_rise_c * p.capacity_ah
              and rising_t is not None and rising_t > p.runaway_temperature_rise_c):
            state = 2
        self.runaway = state
        return state
