"""Alarms: setpoints per point family (IEEE 1188 defaults per battery model), hysteresis and delays, the
active-alarm table, the SQLite alarm log, and ``bmsgw_alarm_event`` for every notifier.

Other parts of the gateway use it through three functions::

    from gateway import alarms
    mgr = alarms.get_manager(gateway)         # None when alarms are off
    mgr.active()                              # the active-alarm table (ActiveAlarm copies)
    alarms.acknowledge(gateway, 17, "alice")  # from the web, REST or a Modbus write
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from ..commands import Command, Principal
from ..hookspecs import hookimpl
from ..points import PointRef
from ..service import ReloadResult, Service
from .manager import LOG_FILE, AlarmManager
from .model import ActiveAlarm, AlarmEvent, AlarmKey, UnknownAlarm
from .rules import SCHEMA, check as check_rules, ohmic_levels
from .setpoints import Setpoints

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import Config
    from ..engine import CommEvent
    from ..pointmap import Catalog

log = logging.getLogger(__name__)


def get_manager(gateway: Gateway) -> AlarmManager | None:
    """The gateway's alarm manager while it runs (None when ``alarms.enabled`` is off)."""
    svc = gateway.service("alarms")
    return svc.manager if isinstance(svc, AlarmService) else None


def acknowledge(gateway: Gateway, alarm_id: int, by: str) -> bool:
    """Acknowledge alarm ``alarm_id`` as ``by``; True if acknowledged now, False if it already was.
    Raises ``UnknownAlarm`` (a KeyError) when no such alarm is active, ``ValueError`` for an empty ``by``."""
    mgr = get_manager(gateway)
    if mgr is None:
        raise UnknownAlarm(alarm_id)
    return mgr.acknowledge(alarm_id, by)


class AlarmService(Service):
    """The alarm engine of one gateway: rules evaluated on every store batch, the active table, the log."""

    name = "alarms"
    sections = ("alarms", "analytics")  # analytics.thresholds are the ohmic rules' levels

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.manager = AlarmManager(gateway, gateway.config.section("alarms"))

    async def start(self) -> None:
        self.manager.start(self.gateway.loop)

    async def stop(self) -> None:
        self.manager.stop()

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """New setpoints, delays and float policy apply at once: the rules are resolved again and every
        point's present value is judged by them (an on-delay starts now)."""
        self.manager.reload(config.section("alarms"), config.section("analytics"))
        return ReloadResult()

    def status(self) -> dict[str, Any]:
        return self.manager.status()

    def endpoints(self) -> list[str]:
        return [f"log {self.manager.log.path}"]

    @hookimpl
    def bmsgw_comm_event(self, event: CommEvent) -> None:
        if self.manager.started:
            self.manager.on_comm_event(event)

    @hookimpl
    def bmsgw_alarms(self, active: bool, limit: int) -> list[dict[str, Any]]:
        """The active table or the log for the web page and REST (called from web threads)."""
        mgr = self.manager
        if active:
            return [a.record() for a in mgr.active()[:max(0, limit)]]
        return mgr.history(limit)

    @hookimpl
    def bmsgw_setpoints(self) -> Setpoints:
        """The setpoint table of the running configuration (the web face's setpoints page)."""
        gw = self.gateway
        return Setpoints(gw.config, gw.catalog, gw.profiles)

    @hookimpl
    def bmsgw_commands(self) -> list[Command]:
        """``gateway.acknowledge_alarms`` (Modbus 9000: write 1) and ``gateway.acknowledge_alarm`` (write an
        alarm's number): for operators, from any face."""
        mgr = self.manager

        def acknowledge_all(ref: PointRef, value: float, by: Principal) -> str:
            n = mgr.acknowledge_all(principal_label(by))
            return f"{n} alarm(s) acknowledged"

        def acknowledge_one(ref: PointRef, value: float, by: Principal) -> str:
            try:
                now = mgr.acknowledge(int(value), principal_label(by))
            except UnknownAlarm:
                raise ValueError(f"no active alarm has the number {value:g}") from None
            return f"alarm {value:g} acknowledged" if now else f"alarm {value:g} was acknowledged already"

        return [Command("gateway.acknowledge_alarms", acknowledge_all, role="operator"),
                Command("gateway.acknowledge_alarm", acknowledge_one, role="operator")]


def principal_label(by: Principal) -> str:
    """Who acknowledged, as the alarm log and the web page show it: the user, or the face and the address."""
    if by.via in ("modbus", "snmp") and by.address:
        return f"{by.via} {by.address}" if by.name in ("", by.via) else f"{by.name} ({by.via} {by.address})"
    return by.name


# -- hooks ---------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"alarms": SCHEMA}


@hookimpl
def bmsgw_check_config(gateway_config: Config, catalog: Catalog) -> list[str]:
    """The rules' problems: unknown point families, setpoints in the wrong order, unknown strings, DI channels."""
    section = gateway_config.section("alarms")
    if not section.get("enabled", True):
        return []
    return [f"{e.path}: {e.message}" for e in check_rules(section, gateway_config.topology, catalog,
                                                          str(gateway_config.path),
                                                          ohmic_levels(gateway_config.section("analytics")))]


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    return [AlarmService(gateway)] if gateway.config.section("alarms").get("enabled", True) else []



@hookimpl
def bmsgw_alarm_log(config, start: float, end: float, string: int | None) -> list[dict] | None:
    """Alarms raised in [start, end] for reports, read from the log on disk (the gateway may be stopped)."""
    from .log import read_period

    path = config.state_dir / LOG_FILE
    return read_period(path, start, end, string) if path.exists() else None


@hookimpl
def bmsgw_cli_commands(subparsers) -> None:
    s = subparsers.add_parser("alarms", help="print the active alarms and the alarm log",
                              description="Read the alarm log of a configuration's state folder, newest first. "
                                          "--json prints each alarm as the web page and REST hand it out "
                                          "(id, severity, message, raised, active, point, string, cell, channel, "
                                          "value, threshold, cleared, acknowledged_by, acknowledged, rule); "
                                          "changed: it used to print the log's raw rows (text, metric, "
                                          "raised_ts, cleared_ts, acked_by, ...); see docs/alarms.md.")
    s.add_argument("--config", "-c", default=None, help="configuration file (default: as for `bmsgw run`)")
    s.add_argument("--active", action="store_true", help="only alarms that have not cleared")
    s.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
    s.add_argument("--json", action="store_true",
                   help="print a JSON list of alarm records, the shape of /api/v1/alarms (see docs/alarms.md)")
    s.set_defaults(func=_cmd_alarms)


def _cmd_alarms(args: argparse.Namespace) -> int:
    from ..cliargs import config_path, offline_gateway
    from .log import AlarmLog

    path = offline_gateway(config_path(args)).config.state_dir / LOG_FILE
    if not path.exists():
        print(f"no alarm log yet ({path})", file=sys.stderr)
        return 0
    rows = AlarmLog(path).history(limit=args.limit, active_only=args.active)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0

    def when(ts):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""

    for r in rows:
        state = "ACTIVE" if r["active"] else f"cleared {when(r['cleared'])}"
        ack = f", acknowledged by {r['acknowledged_by']} {when(r['acknowledged'])}" if r["acknowledged_by"] else ""
        print(f"#{r['id']:<6} {when(r['raised'])}  {r['severity']:<8} {state}{ack}\n        {r['message']}")
    return 0


__all__ = ["ActiveAlarm", "AlarmEvent", "AlarmKey", "AlarmManager", "AlarmService", "UnknownAlarm", "acknowledge",
           "get_manager"]
