"""Battery analytics: SOC/SOH, IEEE 1188 baselines, end-of-life forecasts and deterioration diagnosis.

Publishes the derived families of profiles/points.yaml (string.soc, string.soh, string.state, ...,
cell.ohmic_baseline_deviation, cell.eol_date, cell.diagnosis ...) into the point store, so the alarm engine
and every northbound face see them.  State (baselines, replacements, trends, events) lives in
``<state_dir>/analytics.sqlite``; ``bmsgw battery`` and ``bmsgw maintenance`` edit it, also while the gateway
runs.  Python API for the web/REST faces: ``open_state(config)`` -> ``StateDB`` (baselines(), replacements(),
forecasts(), diagnoses(), events(), record_replacement(), set_baseline(), record_maintenance()).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..commands import Command, Principal, WriteFailed
from ..errors import GatewayError
from ..hookspecs import hookimpl
from ..pointmap import require_position
from ..points import PointRef
from ..service import ReloadResult, Service
from ..strings.states import string_states
from .engine import Analytics, parse_date
from .state import DAY_S, Baseline, StateDB

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import Config

log = logging.getLogger(__name__)

__all__ = ["Analytics", "StateDB", "ANALYTICS_SCHEMA", "open_state", "set_baseline", "analytics_for"]

_num = {"type": "number"}
_date = {"type": ["string", "null"], "pattern": r"^\d{4}-\d{2}-\d{2}$", "default": None}


def _obj(props: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "default": {}, "properties": props}


def _n(default: float, minimum: float = 0, maximum: float = 1e9, desc: str = "") -> dict:
    out = {"type": "number", "minimum": minimum, "maximum": maximum, "default": default}
    if desc:
        out["description"] = desc
    return out


ANALYTICS_SCHEMA = _obj({
    "enabled": {"type": "boolean", "default": True},
    "path": {"type": "string", "minLength": 1, "default": "analytics.sqlite",
             "description": "state file, relative to gateway.state_dir"},
    "interval_s": _n(5, 0.05, 3600, "how often derived values are computed and published"),
    "jobs_interval_h": _n(6, 0.01, 168, "how often forecasts and diagnoses are refitted"),
    "jobs_delay_s": _n(60, 0, 86400, "first forecast run after start"),
    "republish_s": _n(60, 0, 86400, "an unchanged derived value is put into the store again this often"),
    "install_date": {**_date, "description": "when the batteries were installed (YYYY-MM-DD); unknown = settled"},
    "install_dates": {"type": "object", "default": {}, "additionalProperties": {"type": "string",
                                                                                 "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                      "description": "per string id, overriding install_date"},
    "design_life_years": _n(10, 1, 50, "design life at 25 C (temperature life budget)"),
    "halving_c": _n(8, 1, 30, "life halves for every this many C above 25 C"),
    "soc": _obj({
        "peukert": _n(1.25, 1.0, 1.6), "rated_hours": _n(20, 1, 100),
        "charge_efficiency": _n(0.95, 0.5, 1.0), "temp_coeff": _n(0.005, 0, 0.05, "capacity change per C"),
        "anchor_hold_s": _n(3600, 0, 86400, "on float (string.state, see string_state) this long: 100 %"),
        "rest_hours": _n(24, 0.1, 720), "end_voltage_per_cell": _n(1.75, 1.0, 2.1),
        "min_test_depth_pct": _n(10, 1, 100, "a discharge this deep (from a known SOC) is a capacity test"),
    }),
    "float": _obj({"v_per_cell": _n(2.25, 2.0, 2.5, "float setpoint at 25 C"),
                   "temp_comp_v_per_c": {"type": "number", "minimum": -0.01, "maximum": 0, "default": -0.003}}),
    "baseline": _obj({"settle_days": _n(180, 0, 3650, "after installation or replacement"),
                      "sample_days": _n(7, 1, 90, "days of readings the baseline is the median of")}),
    "thresholds": _obj({"warning_pct": _n(20, 1, 500), "replace_pct": _n(30, 1, 500),
                        "critical_pct": _n(50, 1, 500)}),
    "forecast": _obj({"window_days": _n(365, 30, 3650, "trend window"), "min_days": _n(30, 5, 3650),
                      "horizon_years": _n(3, 0.1, 30, "dates further out are not published"),
                      "emf_drop_pct": _n(2.0, 0.1, 50, "EMF fall from its baseline that ends a battery's life"),
                      "capacity_valid_days": _n(730, 1, 3650)}),
    "diagnosis": _obj({"failed_cell_drop_fraction": _n(0.12, 0.01, 1.0), "step_pct": _n(15, 1, 500),
                       "scatter_pct": _n(8, 1, 500, "a battery's day-to-day ohmic scatter (% of its median) that "
                                         "says an unstable contact ..."),
                       "scatter_vs_string": _n(2.5, 1, 100, "... when it is also this many times the string's "
                                               "median scatter (the sensors' own repeatability)"),
                       "thermal_rise_c": _n(3, 0.5, 50), "thermal_days": _n(7, 1, 90),
                       "ohmic_trend_pct_per_year": _n(10, 0.5, 500), "emf_behind_pct": _n(0.5, 0.01, 50),
                       "undercharge_v_per_cell": _n(0.05, 0.005, 1)}),
})

def state_path(config: Config) -> Path:
    p = Path(config.section("analytics")["path"])
    return p if p.is_absolute() else config.state_dir / p


def open_state(config: Config, readonly: bool = False) -> StateDB:
    return StateDB(state_path(config), readonly=readonly)


def analytics_for(gateway: Gateway) -> Analytics | None:
    """The running analytics engine of a gateway (None when analytics is off or not started)."""
    svc = gateway.service("analytics")
    return svc.engine if isinstance(svc, AnalyticsService) else None


def set_baseline(state: StateDB, string: int, cell: int, ohmic: float | None = None,
                 ts: float | None = None) -> Baseline:
    """Set a battery's IEEE 1188 baseline by hand: ``ohmic`` in ohm, or (None) the median of its last 7 days."""
    ts = time.time() if ts is None else ts
    rows = [r for r in state.daily(string, cell, since_day=int(ts // DAY_S) - 7) if r.ohmic is not None]
    if ohmic is None:
        if not rows:
            raise GatewayError(f"string {string} battery {cell}: no ohmic readings in the last 7 days to take a "
                               f"baseline from; give the value")
        ohmic = statistics.median([r.ohmic for r in rows if r.ohmic is not None])
    if not 1e-6 <= ohmic <= 1.0:
        raise GatewayError(f"baseline {ohmic} ohm is outside 1 micro-ohm .. 1 ohm (give ohm, e.g. 0.0042)")
    temps = [r.temp for r in rows if r.temp is not None]
    emfs = [r.emf for r in rows if r.emf is not None]
    b = Baseline(string, cell, float(ohmic), ts, "user", statistics.fmean(temps) if temps else None,
                 statistics.median(emfs) if emfs else None)
    state.set_baseline(b)
    return b


class AnalyticsService(Service):
    """SOC/SOH, baselines, forecasts and diagnoses of one gateway, computed every ``interval_s``."""

    name = "analytics"
    sections = ("analytics",)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.cfg = gateway.config.section("analytics")
        self.state: StateDB | None = None
        self.engine: Analytics | None = None
        self._task: asyncio.Task | None = None
        self.errors = 0

    async def start(self) -> None:
        gw = self.gateway
        state = self.state = StateDB(state_path(gw.config))
        engine = self.engine = Analytics(gw.topology.strings, self.cfg, state, gw.store,
                                         states=string_states(gw.catalog), canonical=gw.pointmap.canonical)
        gw.store.subscribe(engine.observe)
        self._task = asyncio.create_task(self._run(engine, state), name="analytics")

    async def _run(self, engine: Analytics, state: StateDB) -> None:
        gw = self.gateway
        while True:
            now = time.time()
            try:
                # computed in a worker thread (hundreds of ms on the controller for 480 batteries), put into
                # the store from the loop, where the store's listeners expect to be called
                out = await asyncio.to_thread(engine.tick, now, False)
                gw.store.put_many(out)
                if engine.jobs_due(now):
                    await asyncio.to_thread(engine.run_jobs, now)
            except Exception:
                self.errors += 1
                log.exception("analytics: tick failed")
            if state.exclusive:  # opened on a full card: share it again as soon as there is room
                await asyncio.to_thread(state.share)
            await asyncio.sleep(self.cfg["interval_s"])

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Thresholds, SOC parameters, intervals apply from the next tick; what was learnt carries on (SOC,
        open discharges, baselines, trends).  A new ``path`` (the state file) waits for a restart."""
        cfg = config.section("analytics")
        result = ReloadResult()
        if cfg["path"] != self.cfg["path"]:
            result.restart.append("analytics.path")
            cfg = {**cfg, "path": self.cfg["path"]}
        self.cfg = cfg
        if self.engine is not None:
            self.engine.apply_config(cfg)
        return result

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.engine is not None:
            self.gateway.store.unsubscribe(self.engine.observe)
            self.engine.close()
        if self.state is not None:
            self.state.close()

    def endpoints(self) -> list[str]:
        return [f"sqlite://{self.state.path}"] if self.state is not None else []

    def status(self) -> dict[str, Any]:
        e = self.engine
        out: dict[str, Any] = {"errors": self.errors}
        if e is not None:
            out["strings"] = {sid: {"soc": round(s.soc, 1), "state": s.state, "anchor": s.anchor_kind,
                                    "soh_capacity": s.soh_capacity} for sid, s in e.soc.items()}
            out["baselines"] = len(e.baselines)
            out["save_errors"] = e.persist_errors
        return out

    @hookimpl
    def bmsgw_commands(self) -> list[Command]:
        """``string.reset_ohmic_baseline`` (Modbus 9100 + string - 1): write a battery number to forget its
        baseline after a replacement; a new one is taken after the settling period."""
        def reset(ref: PointRef, value: float, by: Principal) -> str:
            string = self.gateway.topology.string(require_position(ref.string, ref, "string"))
            cell = int(value)
            if cell != value or not 1 <= cell <= string.cells:
                raise ValueError(f"string {string.id} has batteries 1..{string.cells}, not {value:g}")
            if self.state is None:
                raise WriteFailed("the analytics state is not open")
            self.state.clear_baseline(string.id, cell)
            return f"string {string.id} battery {cell}: baseline cleared; a new one is taken after settling"

        return [Command("string.reset_ohmic_baseline", reset, role="operator")]


# -- hooks --------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"analytics": ANALYTICS_SCHEMA}


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    return [AnalyticsService(gateway)] if gateway.config.section("analytics")["enabled"] else []


def _load_config(args) -> Config:
    from ..cliargs import config_path, offline_gateway

    return offline_gateway(config_path(args)).config


def _check_battery(config: Config, string: int, cell: int | None) -> None:
    ids = {s.id: s for s in config.topology.strings}
    if string not in ids:
        raise GatewayError(f"no string {string}; configured: {', '.join(map(str, sorted(ids)))}")
    if cell is not None and not 1 <= cell <= ids[string].cells:
        raise GatewayError(f"string {string} has batteries 1..{ids[string].cells}, not {cell}")


def _when(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_date(text)
    except ValueError:
        raise GatewayError(f"bad date {text!r}: expected YYYY-MM-DD") from None


def _fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d")


def cmd_battery(args) -> int:
    config = _load_config(args)
    state = open_state(config)
    try:
        if args.action == "replace":
            _check_battery(config, args.string, args.cell)
            r = state.record_replacement(args.string, args.cell, args.reason, _when(args.date))
            print(f"string {r.string} battery {r.cell}: replacement recorded on {_fmt_ts(r.ts)} ({r.reason}); "
                  f"old baseline {r.old_baseline if r.old_baseline is not None else 'none'}; a new baseline is "
                  f"taken after the settling period")
        elif args.action == "baseline":
            _check_battery(config, args.string, args.cell)
            if args.clear:
                state.clear_baseline(args.string, args.cell)
                print(f"string {args.string} battery {args.cell}: baseline cleared; taken again automatically")
            else:
                b = set_baseline(state, args.string, args.cell, args.ohmic)
                print(f"string {b.string} battery {b.cell}: baseline {b.ohmic * 1000:.3f} mOhm set")
        else:
            if args.string is not None:
                _check_battery(config, args.string, None)
            baselines = state.baselines()
            forecasts = state.forecasts(args.string)
            print(f"{'string':>6} {'cell':>4} {'baseline mOhm':>13} {'taken':>10} {'source':>6} {'eol':>10} "
                  f"{'range':>21}  diagnosis")
            for s in config.topology.strings:
                if args.string is not None and s.id != args.string:
                    continue
                for c in range(1, s.cells + 1):
                    base = baselines.get((s.id, c))
                    f = forecasts.get((s.id, c), {})
                    diag = (f.get("diagnosis") or {}).get("label", "-")
                    rng = f"{_fmt_ts(f.get('early_ts'))}..{_fmt_ts(f.get('late_ts'))}" if f.get("eol_ts") else "-"
                    baseline = f"{base.ohmic * 1000:.3f}" if base else "-"
                    print(f"{s.id:>6} {c:>4} {baseline:>13} "
                          f"{_fmt_ts(base.ts) if base else '-':>10} {base.source if base else '-':>6} "
                          f"{_fmt_ts(f.get('eol_ts')):>10} {rng:>21}  {diag}")
            reps = state.replacements(args.string)
            if reps:
                print("\nreplacements:")
                for r in reps:
                    print(f"  {_fmt_ts(r.ts)} string {r.string} battery {r.cell}: {r.reason}")
    finally:
        state.close()
    return 0


def cmd_maintenance(args) -> int:
    from .ieee1188 import ITEM_IDS

    config = _load_config(args)
    state = open_state(config)
    try:
        if args.action == "done":
            if args.item not in ITEM_IDS:
                raise GatewayError(f"unknown item {args.item!r}; known: {', '.join(ITEM_IDS)}")
            if args.string is not None:
                _check_battery(config, args.string, None)
            state.record_maintenance(args.item, _when(args.date), args.string, args.note or "")
            print(f"{args.item} recorded")
        else:
            for e in state.maintenance():
                where = f" string {e['string']}" if e["string"] is not None else ""
                print(f"{_fmt_ts(e['ts'])} {e['item']}{where} {e['note']}")
    finally:
        state.close()
    return 0


@hookimpl
def bmsgw_cli_commands(subparsers) -> None:
    from ..cliargs import add_config_option
    from .ieee1188 import ITEM_IDS

    p = subparsers.add_parser("battery", help="IEEE 1188 records: replace a battery, set a baseline, list them",
                              description="Battery records kept by the analytics (also while the gateway runs).")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = bsub.add_parser("replace", help="record a battery replacement (resets its baseline and trends)")
    add_config_option(r)
    r.add_argument("--string", type=int, required=True)
    r.add_argument("--cell", type=int, required=True, help="battery (unit) number in the string")
    r.add_argument("--reason", required=True, help="why it was replaced (kept in the log)")
    r.add_argument("--date", help="YYYY-MM-DD (default: now)")
    r.set_defaults(func=cmd_battery)
    b = bsub.add_parser("baseline", help="set (or clear) a battery's ohmic baseline by hand")
    add_config_option(b)
    b.add_argument("--string", type=int, required=True)
    b.add_argument("--cell", type=int, required=True)
    g = b.add_mutually_exclusive_group()
    g.add_argument("--ohmic", type=float, help="baseline in ohm (default: median of the last 7 days)")
    g.add_argument("--clear", action="store_true", help="forget it; taken again automatically")
    b.set_defaults(func=cmd_battery)
    ls = bsub.add_parser("list", help="baselines, forecasts, diagnoses and replacements")
    add_config_option(ls)
    ls.add_argument("--string", type=int)
    ls.set_defaults(func=cmd_battery)

    m = subparsers.add_parser("maintenance", help="IEEE 1188 maintenance log",
                              description="Record maintenance done by hand; reports show what is due.")
    msub = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = msub.add_parser("done", help="record an item as done")
    add_config_option(d)
    d.add_argument("item", help="one of: " + ", ".join(ITEM_IDS))
    d.add_argument("--string", type=int)
    d.add_argument("--date", help="YYYY-MM-DD (default: now)")
    d.add_argument("--note", default="")
    d.set_defaults(func=cmd_maintenance)
    ml = msub.add_parser("list", help="print the log")
    add_config_option(ml)
    ml.set_defaults(func=cmd_maintenance)

