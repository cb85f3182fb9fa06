"""Drive the analytics from the simulator's ground truth (``BankModel``) in simulated time.

For tests and benches: no serial ports, no wall clock.  Readings are the model's noisy measurements, put
into a ``PointStore`` the analytics listens to, exactly as the engine would put them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..points import PointRef, PointStore, Quality, Reading
from ..sim.model import BankModel

_GOOD = Quality.GOOD


@dataclass(slots=True)
class Cadence:
    step_s: float = 10.0  # model step, string current/voltage readings, analytics tick
    cells_s: float = 60.0  # cell voltages and temperatures
    ohmic_s: float = 3600.0  # ohmic values (and EMF)
    emf: bool = False  # the bank has BMUs that measure EMF


def feed(model: BankModel, store: PointStore, t: float, cells: bool, ohmic: bool, emf: bool = False,
         ambient: bool = True) -> None:
    """One round of readings at model time ``t`` (the model must already be at ``t``)."""
    batch: list[tuple[PointRef, Reading]] = []
    with model.lock:
        for sid, st in model.strings.items():
            batch.append((PointRef("string.current", sid), Reading(model.measure("string.current", sid), _GOOD, t)))
            batch.append((PointRef("string.voltage", sid), Reading(model.measure("string.voltage", sid), _GOOD, t)))
            if cells or ohmic:
                for c in range(1, st.cells + 1):
                    if cells:
                        batch.append((PointRef("cell.voltage", sid, c),
                                      Reading(model.measure("cell.voltage", sid, c), _GOOD, t)))
                        batch.append((PointRef("cell.temperature", sid, c),
                                      Reading(model.measure("cell.temperature", sid, c), _GOOD, t)))
                    if ohmic:
                        batch.append((PointRef("cell.ohmic", sid, c),
                                      Reading(model.measure("cell.ohmic", sid, c), _GOOD, t)))
                        if emf:
                            batch.append((PointRef("cell.emf", sid, c),
                                          Reading(model.measure("cell.emf", sid, c), _GOOD, t)))
        if ambient:
            batch.append((PointRef("io.ambient_temperature"), Reading(model.ambient(), _GOOD, t)))
    store.put_many(batch)


def run(model: BankModel, store: PointStore, analytics, until: float, cadence: Cadence | None = None,
        on_step: Callable[[float], None] | None = None) -> None:
    """Advance the model to ``until`` in steps, feeding readings and ticking the analytics."""
    cad = cadence or Cadence()
    t = model.t
    next_cells = t
    next_ohmic = t
    while t < until:
        t = min(t + cad.step_s, until)
        model.advance_to(t)
        cells = t >= next_cells
        ohmic = t >= next_ohmic
        if cells:
            next_cells = t + cad.cells_s
        if ohmic:
            next_ohmic = t + cad.ohmic_s
        feed(model, store, t, cells, ohmic, cad.emf)
        analytics.tick(t)
        if on_step is not None:
            on_step(t)


def run_days(model: BankModel, store: PointStore, analytics, days: float, per_day: int = 12, emf: bool = False,
             transform: Callable[[float, list], list] | None = None, jobs_every_days: float = 0.0,
             on_step: Callable[[float], None] | None = None) -> None:
    """Months or years quickly: the model's clock jumps ``per_day`` times a day (the strings keep their
    present mode; aging, temperatures and float voltages follow the clock), every reading is taken at each
    jump, and the analytics ticks.  ``transform(t, batch)`` may alter a batch (inject a fault);
    ``jobs_every_days`` runs the forecast/diagnosis jobs that often."""
    step = 86400.0 / per_day
    end = model.t + days * 86400.0
    next_jobs = model.t + jobs_every_days * 86400.0 if jobs_every_days else float("inf")
    while model.t < end:
        with model.lock:
            model.t += step
            model._avg_cache.clear()
        t = model.t
        if transform is None:
            feed(model, store, t, True, True, emf)
        else:
            inner = PointStore()
            feed(model, inner, t, True, True, emf)
            store.put_many(transform(t, list(inner.snapshot().items())))
        analytics.tick(t)
        if t >= next_jobs:
            analytics.run_jobs(t)
            next_jobs = t + jobs_every_days * 86400.0
        if on_step is not None:
            on_step(t)
