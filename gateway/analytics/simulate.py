"""Drive the analytics from the simulator's ground truth (``BankModel``) in simulated time.

For tests and benches: no serial ports, no wall clock.  Readings are the model's sensors' readings (with their
errors), put into a ``PointStore`` the analytics listens to, exactly as the engine would put them.  The store
must carry the string supervision's transforms (``gateway.strings.StringSupervisor.install``): the analytics
follow the ``string.state`` it publishes.  The stepping itself is ``gateway.sim.drive``; ``gateway.simrun``
runs the whole gateway's derivations (supervision, alarms, analytics) the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ..points import PointStore
from ..sim import drive
from ..sim.drive import Cadence, Ticker, feed
from ..sim.model import BankModel

__all__ = ["Cadence", "feed", "run", "run_days"]


def run(model: BankModel, store: PointStore, analytics, until: float, cadence: Cadence | None = None,
        on_step: Callable[[float], None] | None = None, tickers: Sequence[Ticker] = ()) -> None:
    """Advance the model to ``until`` in steps, feeding readings and ticking ``tickers`` then the analytics."""
    drive.run(model, store, until, [*tickers, analytics.tick], cadence, on_step)


def run_days(model: BankModel, store: PointStore, analytics, days: float, per_day: int = 12, emf: bool = False,
             transform: Callable[[float, list], list] | None = None, jobs_every_days: float = 0.0,
             on_step: Callable[[float], None] | None = None, tickers: Sequence[Ticker] = ()) -> None:
    """Months or years quickly (``gateway.sim.drive.fast_forward``), the analytics ticking at each jump;
    ``jobs_every_days`` runs the forecast/diagnosis jobs that often."""
    next_jobs = [model.t + jobs_every_days * 86400.0 if jobs_every_days else float("inf")]

    def jobs(t: float) -> None:
        if t >= next_jobs[0]:
            analytics.run_jobs(t)
            next_jobs[0] = t + jobs_every_days * 86400.0

    drive.fast_forward(model, store, days, per_day, [*tickers, analytics.tick, jobs], emf, transform, on_step)
