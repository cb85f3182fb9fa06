"""The strings' supervision for one gateway: a ``StringClassifier`` per string, fed at the point store's door.

``install()`` puts two ingest transforms on the store: every ``string.voltage`` reading is noted, and every
``string.current`` reading is classified and stored *offset-corrected* (0 inside the deadband), with the
measured value beside it as ``string.current_measured`` and, when they change, ``string.state``,
``string.current_offset`` and ``string.on_battery_time`` in the same batch.  So every reader of the store (the
alarms, the analytics' coulomb counting, history, Modbus, SNMP, Prometheus, MQTT, the web page) sees one
current and one state, whether or not the analytics run.

``tick(now)`` (every ``interval_s``, or from a simulated-time run) watches for thermal runaway, publishes the
cell-to-cell temperature spread and the current imbalance between parallel strings, and classifies the
strings that have no current sensor; the batteries' temperatures (and voltages, for a string without a string
voltage sensor) it reads from the store then, a string's column at a time.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..points import PointRef, PointStore, Quality, Reading
from ..topology import StringConfig
from .classifier import ClassifierParams, StringClassifier, ZeroRefused, ZeroState
from .states import StringStates

log = logging.getLogger(__name__)

_GOOD = Quality.GOOD
STATE_FILE = "strings.json"
MAX_BY_LENGTH = 64


def params_from_section(s: StringConfig, section: dict) -> ClassifierParams:
    zero = section["current_zero"] or {}
    run = section["thermal_runaway"] or {}
    kw = {
        "float_min_v_per_cell": section.get("float_min_v_per_cell"), "charge_above_c": section.get("charge_above_c"),
        "discharge_below_c": section.get("discharge_below_c"),
        "falling_v_per_cell_h": section.get("falling_v_per_cell_h"), "deadband_a": section.get("deadband_a"),
        "auto_zero": zero.get("auto"), "max_offset_a": zero.get("max_offset_a"),
        "learn_rate_a_per_h": zero.get("learn_rate_a_per_h"), "track_rate_a_per_h": zero.get("track_rate_a_per_h"),
        "float_settle_s": zero.get("float_settle_s"), "float_current_ma_per_ah": zero.get("float_current_ma_per_ah"),
        "runaway": run.get("enabled"), "runaway_factor": run.get("float_current_factor"),
        "runaway_min_excess_c": run.get("min_excess_c"), "runaway_window_s": run.get("window_s"),
        "runaway_current_rise_c": run.get("current_rise_c"),
        "runaway_temperature_rise_c": run.get("temperature_rise_c"),
    }
    return ClassifierParams(capacity_ah=s.battery.capacity_ah, cells=s.cells * s.battery.cells_per_unit,
                            **{k: v for k, v in kw.items() if v is not None})


class StringSupervisor:
    """Every string's classifier, the store transforms that feed them, and what they publish."""

    def __init__(self, strings: Sequence[StringConfig], section: dict, store: PointStore, states: StringStates,
                 state_path: Path | None = None, measured: Iterable[PointRef] | None = None,
                 republish_s: float = 60.0, canonical: Callable[[PointRef], PointRef] | None = None) -> None:
        """``canonical``: the PointRef object to put each derived point as (``PointMap.canonical``)."""
        self.canonical = canonical or (lambda ref: ref)
        self.section = section
        self.store = store
        self.states = states
        self.state_path = state_path
        self.strings = {s.id: s for s in strings}
        saved = self._load()
        self.classifiers = {s.id: StringClassifier(s.id, params_from_section(s, section), states, saved.get(s.id))
                            for s in strings}
        have = set(measured) if measured is not None else None
        self.has_current = {sid: have is None or PointRef("string.current", sid) in have for sid in self.strings}
        self.has_voltage = {sid: have is None or PointRef("string.voltage", sid) in have for sid in self.strings}
        # the batteries' temperatures (and voltages, for strings without a string voltage sensor): the tick reads
        # a string's column from the store (in C), not every reading noted as it arrives (a call per battery
        # every poll cycle, for a tick every ``interval_s``)
        self._cell_refs = {point: {s.id: [self.canonical(PointRef(point, s.id, c)) for c in range(1, s.cells + 1)]
                                   for s in strings} for point in ("cell.temperature", "cell.voltage")}
        self.ambient_ref = PointRef("io.ambient_temperature")
        self.imbalance_min_c = float(section["imbalance_min_c"])
        self.republish_s = republish_s
        self.lock = threading.RLock()
        self._refs: dict[tuple[str, int], PointRef] = {}
        self._last: dict[tuple[str, int], tuple[float | None, float]] = {}
        self._saved_offsets = {sid: c.zero.offset for sid, c in self.classifiers.items()}
        self._saved_known = {sid: c.zero.known for sid, c in self.classifiers.items()}
        self._next_save = 0.0
        self.save_errors = 0
        self.installed = False

    def reconfigure(self, section: dict) -> None:
        """New ``string_state`` settings, applied at once (each string keeps its learnt zero)."""
        with self.lock:
            self.section = section
            for sid, c in self.classifiers.items():
                c.p = params_from_section(self.strings[sid], section)
            self.imbalance_min_c = float(section["imbalance_min_c"])

    # -- persistence -------------------------------------------------------------------------------------------
    def _load(self) -> dict[int, ZeroState]:
        if self.state_path is None or not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_text())
            return {int(k): ZeroState.from_dict(v) for k, v in (data.get("strings") or {}).items()
                    if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("%s cannot be read (%s): the current sensors' zero is learnt again", self.state_path, exc)
            return {}

    def save(self) -> None:
        if self.state_path is None:
            return
        from ..fsutil import atomic_write

        with self.lock:
            doc = {"version": 1, "strings": {str(sid): c.zero.to_dict() for sid, c in self.classifiers.items()}}
            offsets = {sid: c.zero.offset for sid, c in self.classifiers.items()}
            known = {sid: c.zero.known for sid, c in self.classifiers.items()}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.state_path, json.dumps(doc, indent=1) + "\n", mode=0o644)
        except OSError as exc:
            self.save_errors += 1
            log.error("cannot save the current sensors' zero in %s: %s", self.state_path, exc)
            return
        self._saved_offsets, self._saved_known = offsets, known

    def _maybe_save(self, now: float) -> None:
        if self.state_path is None or now < self._next_save:
            return
        moved = any(abs(c.zero.offset - self._saved_offsets.get(sid, 0.0)) > 0.05
                    or c.zero.known != self._saved_known.get(sid) for sid, c in self.classifiers.items())
        if moved:
            self._next_save = now + 600.0
            self.save()

    # -- the store's door --------------------------------------------------------------------------------------
    def install(self) -> None:
        self.store.add_transform("string.voltage", self._on_voltage)
        self.store.add_transform("string.current", self._on_current)
        self.installed = True

    def uninstall(self) -> None:
        for point in ("string.voltage", "string.current"):
            self.store.remove_transform(point)
        self.installed = False

    def _usable(self, point: str, sid: int) -> list[float]:
        """The latest GOOD values of the string's batteries' ``point`` (the batteries without one left out)."""
        return [r.value for r in self.store.get_many(self._cell_refs[point][sid])
                if r is not None and r.quality is _GOOD and r.value is not None]

    def _ref(self, point: str, sid: int) -> PointRef:
        key = (point, sid)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = self.canonical(PointRef(point, sid))
        return ref

    def _changed(self, point: str, sid: int, value: float | None, ts: float, out: list, tol: float = 0.0,
                 always: bool = False) -> None:
        """Add a reading of a derived point to ``out`` when its value changed by more than ``tol`` (or was not
        put for ``republish_s``, or ``always``)."""
        key = (point, sid)
        old = self._last.get(key)
        if not always and old is not None and ts - old[1] < self.republish_s and (
                old[0] == value or (value is not None and old[0] is not None and abs(old[0] - value) <= tol)):
            return
        self._last[key] = (value, ts)
        out.append((self._ref(point, sid), Reading(value, _GOOD, ts)))

    def _on_voltage(self, ref: PointRef, r: Reading, fresh: bool) -> list[tuple[PointRef, Reading]]:
        c = self.classifiers.get(ref.string) if ref.string is not None else None
        if c is not None:
            usable = r.quality is _GOOD and r.value is not None and c.p.cells
            with self.lock:
                c.on_voltage(r.value / c.p.cells if usable and r.value is not None else None, r.ts)
        return [(ref, r)]

    def _on_current(self, ref: PointRef, r: Reading, fresh: bool) -> list[tuple[PointRef, Reading]]:
        sid = ref.string
        c = self.classifiers.get(sid) if sid is not None else None
        if sid is None or c is None:
            return [(ref, r)]
        measured = self._ref("string.current_measured", sid)
        if not fresh:  # only the quality changed: the stored value is already corrected
            old = self.store.get(measured)
            with self.lock:
                c.on_current(None, r.ts)
            out = [(ref, r), (measured, Reading(old.value if old else None, r.quality, old.ts if old else r.ts))]
            self._publish_state(c, r.ts, out)
            return out
        usable = r.quality is _GOOD and r.value is not None
        with self.lock:
            corrected = c.on_current(r.value if usable else None, r.ts)
        if corrected is None and r.value is not None:
            corrected = c.correct(r.value)  # out of range: shown as such, corrected all the same
        value = c.published(corrected) if corrected is not None else None
        out = [(ref, Reading(value, r.quality, r.ts)), (measured, r)]
        self._publish_state(c, r.ts, out)
        return out

    def _publish_state(self, c: StringClassifier, ts: float, out: list) -> None:
        sid = c.string
        self._changed("string.state", sid, float(c.state), ts, out)
        self._changed("string.current_offset", sid, round(c.zero.offset, 3), ts, out, tol=0.005)
        self._changed("string.on_battery_time", sid, c.on_battery_time(ts), ts, out,
                      always=c.discharge_since is not None)

    # -- the periodic part -------------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[tuple[PointRef, Reading]]:
        """Runaway watch, temperature spread, current imbalance, voltage-only strings; puts what changed."""
        now = time.time() if now is None else now
        out: list[tuple[PointRef, Reading]] = []
        store = self.store
        amb = store.value(self.ambient_ref)
        currents: dict[int, float] = {}
        with self.lock:
            for sid, c in self.classifiers.items():
                temps = self._usable("cell.temperature", sid)
                spread = max(temps) - min(temps) if len(temps) >= 2 else None
                self._changed("string.cell_temperature_spread", sid, spread, now, out, tol=0.05)
                if not self.has_voltage[sid]:
                    volts = self._usable("cell.voltage", sid)
                    n = self.strings[sid].battery.cells_per_unit
                    enough = volts and len(volts) >= 0.8 * self.strings[sid].cells
                    c.on_voltage(sum(volts) / len(volts) / n if enough else None, now)
                if not self.has_current[sid]:
                    c.classify(now)
                    self._publish_state(c, now, out)
                elif c.discharge_since is not None:
                    self._changed("string.on_battery_time", sid, c.on_battery_time(now), now, out)
                mean_t = sum(temps) / len(temps) if temps else None
                rise = (mean_t - amb) if mean_t is not None and amb is not None else mean_t
                was = c.runaway
                state = c.watch(now, rise)
                if state and not was:
                    log.warning("string %d: thermal runaway suspected (%s): float current %.2f A, normal %.2f A",
                                sid, "float current high" if state == 1 else "current rising with temperature",
                                c.float_current() or 0.0, c.normal_float_current())
                self._changed("string.thermal_runaway", sid, float(state), now, out)
                self._changed("string.float_current_normal", sid, round(c.normal_float_current(), 3), now, out,
                              tol=0.005)
                if c.corrected is not None and c.state in (self.states.discharging, self.states.charging):
                    currents[sid] = c.corrected
            self._imbalance(currents, now, out)
        self._maybe_save(now)
        if out:
            store.put_many(out)
        return out

    def _imbalance(self, currents: dict[int, float], now: float, out: list) -> None:
        """Parallel strings share a discharge (or a recharge): each one's part against their mean, in % (positive: it
        carries more than its share)."""
        mean = sum(currents.values()) / len(currents) if currents else 0.0
        caps = [self.strings[sid].battery.capacity_ah for sid in currents]
        same_way = currents and (all(i < 0 for i in currents.values()) or all(i > 0 for i in currents.values()))
        judged = len(currents) >= 2 and same_way and abs(mean) >= self.imbalance_min_c * min(caps)
        for sid in self.strings:
            # positive: more than its share
            value = (currents[sid] - mean) / mean * 100.0 if judged and sid in currents else None
            self._changed("string.current_imbalance", sid, value, now, out, tol=0.5)

    # -- commands ----------------------------------------------------------------------------------------------
    def zero_current(self, string: int, by: str, now: float | None = None) -> float:
        """Zero string ``string``'s current sensor now (it carries no current: breaker open, clamp off the
        cable).  ``by`` names who asked.  Returns the new offset (A); raises ``ValueError`` (``ZeroRefused``) for
        an unknown string, an empty ``by``, or a sensor that reads a real current."""
        who = " ".join(str(by).split())[:MAX_BY_LENGTH]
        if not who:
            raise ValueError("say who zeroes the current sensor")
        c = self.classifiers.get(string)
        if c is None:
            raise ZeroRefused(f"no string {string}; configured: {', '.join(map(str, sorted(self.classifiers)))}")
        if not self.has_current[string]:
            raise ZeroRefused(f"string {string} has no current sensor")
        now = time.time() if now is None else now
        with self.lock:
            old = c.zero.offset
            offset = c.zero_now(now, who)
            out: list[tuple[PointRef, Reading]] = []
            self._changed("string.current_offset", string, round(offset, 3), now, out, always=True)
        log.info("string %d: current sensor zeroed by %s: offset %+.2f A (was %+.2f A)", string, who, offset, old)
        self.save()
        self.store.put_many(out)  # the next current reading is corrected with it
        return offset

    def status(self) -> dict:
        with self.lock:
            return {str(sid): {"state": self.states.name(c.state), "current_offset": round(c.zero.offset, 3),
                               "zero_known": c.zero.known, "zero_manual": c.zero.manual,
                               "zeroed_by": c.zero.by or None, "learning": c.learning,
                               "float_current_normal": round(c.normal_float_current(), 3),
                               "thermal_runaway": c.runaway}
                    for sid, c in self.classifiers.items()}


__all__ = ["StringSupervisor", "ZeroRefused", "STATE_FILE", "params_from_section"]
