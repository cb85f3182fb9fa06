"""The gateway's derivation paths on the simulated bank, in simulated time.

``SimulatedGateway`` builds a gateway from a config file without opening a port (as ``check-config`` does),
the simulated bank of that config (``simulator`` section: seed, weak cells, the sensors' errors, scenarios),
and the gateway's own consumers of the point store:

* the string supervision (``gateway.strings``): state, current zero, thermal-runaway watch;
* the alarm manager (``gateway.alarms``) with its rules, its log under ``gateway.state_dir`` and the
  ``bmsgw_alarm_event`` hook, on the simulated clock;
* the analytics (``gateway.analytics``): SOC, baselines, forecasts, with their state file.

Then ``run(until)`` steps the physics and ``fast_forward(days)`` jumps through months, feeding the store with
simulated timestamps (``gateway.sim.drive``) and ticking every consumer: days or years of a battery room in
seconds of CPU, through the same code ``bmsgw run`` runs.  What a user would see is read back the user's way:
``store`` (every point), ``alarm_table()`` / ``alarm_log()``, ``ups()`` (the UPS-MIB values the SNMP agent
serves).  For tests, benches (``bench/realism.py``) and back-filling history.

    with SimulatedGateway("config.yaml") as sim:
        sim.model.set_current_offset(1, -3.0)
        sim.run(sim.model.t + 3 * 86400)
        print(sim.store.value(PointRef("string.state", 1)), sim.alarm_table())
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .points import PointRef, PointStore
from .sim.drive import Cadence, fast_forward, feed, idle, run
from .sim.model import BankModel

if TYPE_CHECKING:
    from .alarms.model import ActiveAlarm


class SimulatedGateway:
    """A gateway (no ports) and its simulated bank, driven in simulated time."""

    def __init__(self, config_path: str | Path, *, analytics: bool = True, alarms: bool = True,
                 model: BankModel | None = None, cadence: Cadence | None = None, analytics_every_s: float = 60.0,
                 forecasts: bool = True, state_dir: str | Path | None = None, settings: dict | None = None,
                 **model_overrides) -> None:
        """``analytics``/``alarms``: run them (as their config sections say); ``forecasts``: the analytics' jobs
        (forecasts, diagnoses) every ``analytics.jobs_interval_h``; ``analytics_every_s``: their tick (doubled
        tenfold while every string floats quietly, with ``cadence.cells_idle_s``); ``state_dir``: keep the state
        files there instead of the config's ``gateway.state_dir``; ``settings``: {section: {key: value}}
        replacing keys of the checked config (e.g. ``{"analytics": {"install_date": "2025-01-01"}}``);
        ``model_overrides``: for ``model_from_config`` (seed, weak_cells, errors ...)."""
        from .app import Gateway
        from .sim.server import model_from_config
        from .strings import make_supervisor

        raw = yaml.safe_load(Path(config_path).read_text()) or {}
        ports = {b["name"]: "(simulated time)" for b in raw.get("buses", []) if isinstance(b, dict) and "name" in b}
        self.gateway = gw = Gateway(config_path, simulator=False, port_overrides=ports, entry_points=False)
        gw.check()  # every check `bmsgw run` makes (ConfigProblems lists what is wrong)
        if state_dir is not None:
            gw.config.data["gateway"] = {**gw.config.data["gateway"], "state_dir": str(Path(state_dir).resolve())}
        for section, values in (settings or {}).items():
            gw.config.data[section] = {**gw.config.section(section), **values}
        self.store: PointStore = gw.store
        self.model = model or model_from_config(gw.config, **model_overrides)
        self.model.string_voltage_hold_s = 300.0  # days in seconds: a floating string's voltage every 5 minutes
        self.cadence = cadence or Cadence()
        self.now = self.model.t
        self.strings = make_supervisor(gw)
        self.sensed = [s.id for s in gw.topology.strings if PointRef("string.current", s.id) in gw.pointmap.by_ref]
        self.ranges = self._ranges()
        self.alarms = None
        if alarms and gw.config.section("alarms")["enabled"]:
            from .alarms.manager import AlarmManager

            self.alarms = AlarmManager(gw, gw.config.section("alarms"), clock=lambda: self.now)
            self.alarms.start(driven=True)
        self.analytics = None
        self.forecasts = forecasts
        self._analytics_every = analytics_every_s
        self._next_analytics = self.now
        self._last_analytics = -float("inf")
        if analytics and gw.config.section("analytics")["enabled"]:
            from .analytics import state_path
            from .analytics.engine import Analytics
            from .analytics.state import StateDB
            from .strings import string_states

            self.analytics = Analytics(gw.topology.strings, gw.config.section("analytics"),
                                       StateDB(state_path(gw.config)), gw.store, now=self.now,
                                       states=string_states(gw.catalog), canonical=gw.pointmap.canonical)
            gw.store.subscribe(self.analytics.observe)
            # unchanged derived values are put again every 30 busy ticks (the gateway: every minute)
            self.analytics.republish_s = max(self.analytics.republish_s, 30.0 * analytics_every_s)
        self._tick_every = float(gw.config.section("string_state")["interval_s"])
        self._next_tick = self.now

    def _ranges(self) -> dict[str, tuple[float, float]]:
        """The sensors' measuring ranges by point family, from the configured devices' profiles."""
        out: dict[str, tuple[float, float]] = {}
        for dev in self.gateway.topology.devices:
            for reg in self.gateway.profiles[dev.profile].registers:
                if reg.valid_range is not None and reg.point not in out:
                    out[reg.point] = reg.valid_range
        return out

    # -- the clock ---------------------------------------------------------------------------------------------
    def _tick(self, t: float) -> None:
        self.now = t
        if t >= self._next_tick:
            self.strings.tick(t)
            self._next_tick = t + self._tick_every
        if self.alarms is not None:
            self.alarms.drive(t)
        quiet = self.cadence.cells_idle_s > 0 and idle(self.model)
        if not quiet:  # something happens: the analytics follow at their busy pace (not at every step)
            self._next_analytics = min(self._next_analytics, self._last_analytics + self._analytics_every)
        if self.analytics is not None and t >= self._next_analytics:
            self.analytics.tick(t)
            self._last_analytics = t
            self._next_analytics = t + self._analytics_every * (10.0 if quiet else 1.0)
            if self.forecasts and self.analytics.jobs_due(t):
                self.analytics.run_jobs(t)
        if self.alarms is not None:
            self.alarms.drive(t)  # what the analytics just published

    def run(self, until: float, on_step: Callable[[float], None] | None = None) -> None:
        """Step the physics to ``until`` (simulated seconds since the epoch) at ``cadence``."""
        run(self.model, self.store, until, [self._tick], self.cadence, on_step, self.ranges, self.sensed)

    def run_for(self, seconds: float, on_step: Callable[[float], None] | None = None) -> None:
        self.run(self.model.t + seconds, on_step)

    def fast_forward(self, days: float, per_day: int = 12, on_step: Callable[[float], None] | None = None) -> None:
        """Jump through ``days`` (``per_day`` readings a day, strings held in their mode)."""
        fast_forward(self.model, self.store, days, per_day, [self._tick], on_step=on_step, ranges=self.ranges)

    def jump(self, t: float) -> None:
        """Jump the clock to ``t`` (one step of ``fast_forward``: the strings keep their mode, the batteries age)
        and take every reading there."""
        with self.model.lock:
            self.model.t = max(self.model.t, t)
            self.model._avg_cache.clear()
        self.read_all()

    def read_all(self) -> None:
        """One round of every reading now (without advancing the physics)."""
        feed(self.model, self.store, self.model.t, True, True, ranges=self.ranges, strings=self.sensed)
        self._tick(self.model.t)

    # -- what a user sees --------------------------------------------------------------------------------------
    def value(self, point: str, string: int | None = None, cell: int | None = None) -> float | None:
        return self.store.value(PointRef(point, string, cell))

    def alarm_table(self) -> list[ActiveAlarm]:
        """The alarm engine's active alarms (most severe first), with their rule and key; ``.record()`` of
        each is what the web page and ``/api/v1/alarms`` list."""
        return self.alarms.active() if self.alarms is not None else []

    def alarm_log(self, limit: int = 10000) -> list[dict[str, Any]]:
        """The alarm log, newest first, as the web page, REST and reports hand it out (``alarm_record``:
        ``message``, ``point``, ``raised``/``cleared``/``acknowledged``, ``acknowledged_by``, ``rule``)."""
        return self.alarms.history(limit) if self.alarms is not None else []

    def ups(self) -> dict[str, int | None]:
        """The UPS-MIB battery group as the SNMP agent serves it (upsBatteryStatus, upsSecondsOnBattery, ...)."""
        from .outputs.snmp.agent import soc_model
        from .outputs.snmp.sections import AgentData
        from .outputs.snmp.upsmib import UpsBattery

        cfg = self.gateway.config.section("snmp")
        peukert, rated_hours = soc_model(self.gateway.config)
        data = AgentData(store=self.store, pointmap=self.gateway.pointmap, topology=self.gateway.topology,
                         base=(1, 3, 6, 1, 4, 1, 32473), site_name="", system=cfg["system"], ups=cfg["ups"],
                         entity_points=[], poll=self.gateway.config.data["gateway"]["poll"],
                         low_batt_time=lambda: max(1, math.ceil(cfg["ups"]["low_minutes_remaining"])),
                         peukert=peukert, rated_hours=rated_hours)
        ups = UpsBattery(data)

        def val(fn) -> int | None:
            v = fn()
            return None if v is None else v[1]

        return {"status": val(ups.status), "seconds_on_battery": val(ups.seconds_on_battery),
                "minutes_remaining": val(ups.minutes_remaining), "charge_remaining": val(ups.charge_remaining),
                "current_ds": val(ups.current)}

    # -- the end -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.analytics is not None:
            self.analytics.close(self.now)
            self.analytics.state.close()
            self.store.unsubscribe(self.analytics.observe)
        if self.alarms is not None:
            self.alarms.stop()
        self.strings.save()
        self.strings.uninstall()

    def __enter__(self) -> SimulatedGateway:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
