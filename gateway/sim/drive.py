"""Drive a point store from the simulated bank (``BankModel``) in simulated time: no serial ports, no wall clock.

Readings are the model's sensors' (with their errors, and the overrides of a stuck or out-of-range sensor),
put into a ``PointStore`` with simulated timestamps, exactly as the engine would put them; after each step
every *ticker* (``tick(now)`` of the string supervision, ``drive(now)`` of the alarms, ``tick(now)`` of the
analytics, a history recorder's flush ...) is called with the simulated time.  ``gateway.simrun`` assembles
the gateway's own consumers on top of this; ``gateway.analytics.simulate`` is the analytics-only form.

Two paces: ``run`` steps the physics every ``Cadence.step_s`` (discharges, recharges, the knee, a runaway),
``fast_forward`` jumps the clock a few times a day with the strings held in their mode (months of aging).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..points import PointRef, PointStore, Quality, Reading
from .model import BankModel

_GOOD = Quality.GOOD
_BAD = Quality.OUT_OF_RANGE
Ticker = Callable[[float], object]


@dataclass(slots=True)
class Cadence:
    step_s: float = 10.0  # model step, string current/voltage readings, the tickers
    cells_s: float = 60.0  # cell voltages and temperatures
    ohmic_s: float = 3600.0  # ohmic values (and EMF)
    emf: bool = False  # the bank has BMUs that measure EMF
    cells_idle_s: float = 0.0  # > 0: cells this often while every string floats quietly (long runs)


def idle(model: BankModel) -> bool:
    """Every string floats and nothing happens to it: the cells change with the room's temperature only."""
    return all(st.mode == "float" and st.runaway_since is None and st.soc >= 1.0 for st in model.strings.values())


def _reading(model: BankModel, point: str, string: int | None, cell: int | None, t: float,
             ranges: dict[str, tuple[float, float]] | None) -> Reading:
    key = (point, string, cell, None)
    if model.overrides and key in model.overrides:
        value = model.overrides[key]
        if value is None:
            return Reading(None, _BAD, t)
    else:
        value = model.measure(point, string, cell)
    rng = ranges.get(point) if ranges else None
    if rng is not None and not rng[0] <= value <= rng[1]:
        return Reading(value, _BAD, t)
    return Reading(value, _GOOD, t)


def feed(model: BankModel, store: PointStore, t: float, cells: bool, ohmic: bool, emf: bool = False,
         ambient: bool = True, ranges: dict[str, tuple[float, float]] | None = None,
         strings: Iterable[int] | None = None) -> None:
    """One round of readings at model time ``t`` (the model must already be at ``t``).  ``ranges``: the
    sensors' measuring ranges by point family (a reading outside is OUT_OF_RANGE, as the engine marks it);
    ``strings``: the strings that have a string sensor (default: all)."""
    batch: list[tuple[PointRef, Reading]] = []
    with model.lock:
        sensed = set(model.strings if strings is None else strings)
        for sid, st in model.strings.items():
            if sid in sensed:
                batch.append((PointRef("string.voltage", sid), _reading(model, "string.voltage", sid, None, t, ranges)))
                batch.append((PointRef("string.current", sid), _reading(model, "string.current", sid, None, t, ranges)))
            if cells or ohmic:
                for c in range(1, st.cells + 1):
                    if cells:
                        batch.append((PointRef("cell.voltage", sid, c),
                                      _reading(model, "cell.voltage", sid, c, t, ranges)))
                        batch.append((PointRef("cell.temperature", sid, c),
                                      _reading(model, "cell.temperature", sid, c, t, ranges)))
                    if ohmic:
                        batch.append((PointRef("cell.ohmic", sid, c), _reading(model, "cell.ohmic", sid, c, t, ranges)))
                        if emf:
                            batch.append((PointRef("cell.emf", sid, c), _reading(model, "cell.emf", sid, c, t, ranges)))
        if ambient:
            batch.append((PointRef("io.ambient_temperature"), Reading(model.ambient(), _GOOD, t)))
    store.put_many(batch)


def run(model: BankModel, store: PointStore, until: float, tickers: Sequence[Ticker] = (),
        cadence: Cadence | None = None, on_step: Callable[[float], None] | None = None,
        ranges: dict[str, tuple[float, float]] | None = None, strings: Iterable[int] | None = None) -> None:
    """Advance the model to ``until`` in steps, feeding readings and calling every ticker with the time."""
    cad = cadence or Cadence()
    t = model.t
    next_cells = t
    next_ohmic = t
    sensed = None if strings is None else list(strings)
    while t < until:
        t = min(t + cad.step_s, until)
        model.advance_to(t)
        quiet = cad.cells_idle_s > 0 and idle(model)
        if not quiet:
            next_cells = min(next_cells, t + cad.cells_s)  # something happens: read the cells at the busy pace
        cells = t >= next_cells
        ohmic = t >= next_ohmic
        if cells:
            next_cells = t + (cad.cells_idle_s if quiet else cad.cells_s)
        if ohmic:
            next_ohmic = t + cad.ohmic_s
        feed(model, store, t, cells, ohmic, cad.emf, ranges=ranges, strings=sensed)
        for tick in tickers:
            tick(t)
        if on_step is not None:
            on_step(t)


def fast_forward(model: BankModel, store: PointStore, days: float, per_day: int = 12,
                 tickers: Sequence[Ticker] = (), emf: bool = False,
                 transform: Callable[[float, list], list] | None = None,
                 on_step: Callable[[float], None] | None = None,
                 ranges: dict[str, tuple[float, float]] | None = None) -> None:
    """Months or years quickly: the model's clock jumps ``per_day`` times a day (the strings keep their
    present mode; aging, temperatures and float voltages follow the clock), every reading is taken at each
    jump and every ticker is called.  ``transform(t, batch)`` may alter a batch (inject a fault)."""
    step = 86400.0 / per_day
    end = model.t + days * 86400.0
    while model.t < end:
        with model.lock:
            model.t += step
            model._avg_cache.clear()
        t = model.t
        if transform is None:
            feed(model, store, t, True, True, emf, ranges=ranges)
        else:
            inner = PointStore()
            feed(model, inner, t, True, True, emf, ranges=ranges)
            store.put_many(transform(t, list(inner.snapshot().items())))
        for tick in tickers:
            tick(t)
        if on_step is not None:
            on_step(t)
