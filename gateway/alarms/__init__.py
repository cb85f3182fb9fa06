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
import weakref
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from .manager import AlarmManager
from .model import ActiveAlarm, AlarmEvent, AlarmKey, UnknownAlarm
from .rules import SCHEMA

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger(__name__)

_managers: "weakref.WeakKeyDictionary[Gateway, AlarmManager]" = weakref.WeakKeyDictionary()


def get_manager(gateway: Gateway) -> AlarmManager | None:
    """The gateway's alarm manager (created when the gateway starts; None when ``alarms.enabled`` is off)."""
    return _managers.get(gateway)


def acknowledge(gateway: Gateway, alarm_id: int, by: str) -> bool:
    """Acknowledge alarm ``alarm_id`` as ``by``; True if acknowledged now, False if it already was.
    Raises ``UnknownAlarm`` (a KeyError) when no such alarm is active, ``ValueError`` for an empty ``by``."""
    mgr = _managers.get(gateway)
    if mgr is None:
        raise UnknownAlarm(alarm_id)
    return mgr.acknowledge(alarm_id, by)


class AlarmService:
    """Closes the alarm log cleanly when ``bmsgw run`` stops."""

    name = "alarms"

    def __init__(self, manager: AlarmManager) -> None:
        self.manager = manager

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.manager.stop()

    def endpoints(self) -> list[str]:
        return [f"log {self.manager.log.path}"]


# -- hooks ---------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"alarms": SCHEMA}


@hookimpl
def bmsgw_gateway_ready(gateway: Gateway) -> None:
    section = gateway.config.section("alarms")
    if not section.get("enabled", True):
        return
    mgr = _managers.get(gateway)
    if mgr is None:
        mgr = _managers[gateway] = AlarmManager(gateway, section)
    mgr.start(gateway.loop)


@hookimpl
def bmsgw_comm_event(gateway: Gateway, event) -> None:
    mgr = _managers.get(gateway)
    if mgr is not None and mgr.started:
        mgr.on_comm_event(event)


@hookimpl
def bmsgw_services(gateway: Gateway) -> list:
    mgr = _managers.get(gateway)
    return [AlarmService(mgr)] if mgr is not None else []


@hookimpl
def bmsgw_status(gateway: Gateway) -> dict:
    mgr = _managers.get(gateway)
    return {"alarms": mgr.status()} if mgr is not None else {}


@hookimpl
def bmsgw_cli_commands(subparsers) -> None:
    s = subparsers.add_parser("alarms", help="print the active alarms and the alarm log",
                              description="Read the alarm log of a configuration's state folder: the alarms active "
                                          "at the last update first, then the newest entries.")
    s.add_argument("--config", "-c", default=None, help="configuration file (default: as for `bmsgw run`)")
    s.add_argument("--active", action="store_true", help="only alarms that have not cleared")
    s.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_alarms)


def _cmd_alarms(args: argparse.Namespace) -> int:
    from ..app import Gateway
    from ..cli import _all_ports_dummy, _config_path
    from .log import AlarmLog
    from .manager import LOG_FILE

    cfg = _config_path(args)
    path = Gateway(cfg, simulator=False, port_overrides=_all_ports_dummy(cfg)).config.state_dir / LOG_FILE
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
        state = "ACTIVE" if r["cleared_ts"] is None else f"cleared {when(r['cleared_ts'])}"
        ack = f", acknowledged by {r['acked_by']} {when(r['acked_ts'])}" if r["acked_by"] else ""
        print(f"#{r['id']:<6} {when(r['raised_ts'])}  {r['severity']:<8} {state}{ack}\n        {r['text']}")
    return 0


__all__ = ["ActiveAlarm", "AlarmEvent", "AlarmKey", "AlarmManager", "UnknownAlarm", "acknowledge", "get_manager"]
