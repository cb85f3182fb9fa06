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
from .manager import LOG_FILE, AlarmManager
from .model import ActiveAlarm, AlarmEvent, AlarmKey, UnknownAlarm
from .rules import SCHEMA, check as check_rules, ohmic_levels

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger(__name__)

_managers: weakref.WeakKeyDictionary[Gateway, AlarmManager] = weakref.WeakKeyDictionary()


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
def bmsgw_check_config(gateway_config, catalog) -> list[str]:
    """The rules' problems: unknown point families, setpoints in the wrong order, unknown strings, DI channels."""
    section = gateway_config.section("alarms")
    if not section.get("enabled", True):
        return []
    return [f"{e.path}: {e.message}" for e in check_rules(section, gateway_config.topology, catalog,
                                                          str(gateway_config.path),
                                                          ohmic_levels(gateway_config.section("analytics")))]


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


def _row(alarm_id, severity, text, raised, active, point, string, cell, channel, value, threshold,
         cleared=None, acked_by=None, acked_ts=None) -> dict:
    return {"id": str(alarm_id), "severity": severity, "message": text, "raised": raised, "active": active,
            "point": point, "string": string, "cell": cell, "channel": channel, "value": value,
            "threshold": threshold, "cleared": cleared, "acknowledged_by": acked_by, "acknowledged": acked_ts}


@hookimpl
def bmsgw_alarms(gateway: Gateway, active: bool, limit: int) -> list[dict] | None:
    """The active table or the log for the web page and REST (called from web threads)."""
    mgr = _managers.get(gateway)
    if mgr is None:
        return None
    if active:
        return [_row(a.alarm_id, a.severity, a.text, a.raised_ts, True, a.metric, a.key.string, a.key.cell,
                     a.key.channel, a.last_value if a.last_value is not None else a.value, a.threshold,
                     acked_by=a.acknowledged_by, acked_ts=a.acknowledged_ts)
                for a in mgr.active()[:max(0, limit)]]
    return [_row(r["id"], r["severity"], r["text"],
                 r["raised_ts"], r["cleared_ts"] is None, r["metric"], r["string"], r["cell"], r["channel"],
                 r["value"], r["threshold"], r["cleared_ts"], r["acked_by"], r["acked_ts"])
            for r in mgr.history(limit)]


@hookimpl
def bmsgw_alarm_acknowledge(gateway: Gateway, alarm_id: str, user: str) -> bool | None:
    if _managers.get(gateway) is None:
        return None
    try:
        acknowledge(gateway, int(alarm_id), user)
    except (UnknownAlarm, ValueError):
        return False
    return True  # acknowledged now, or it already was


@hookimpl
def bmsgw_modbus_write_handlers(gateway: Gateway) -> list:
    """Holding register 9000: write 1 to acknowledge every active alarm (when Modbus writes are enabled)."""
    from ..hookspecs import MODBUS_ALARM_ACK_REGISTER, ModbusWriteHandler

    mgr = _managers.get(gateway)
    if mgr is None:
        return []

    def acknowledge_all(words: list[int], client: str) -> None:
        if words != [1]:
            raise ValueError("write 1 to acknowledge every active alarm")
        n = mgr.acknowledge_all(f"modbus {client}")
        log.info("Modbus client %s acknowledged %d alarm(s)", client, n)

    return [ModbusWriteHandler(MODBUS_ALARM_ACK_REGISTER, "alarm.acknowledge",
                               "write 1: acknowledge every active alarm", acknowledge_all)]


@hookimpl
def bmsgw_alarm_log(config, start: float, end: float, string: int | None) -> list[dict] | None:
    """Alarms raised in [start, end] for reports, read from the log on disk (the gateway may be stopped)."""
    import sqlite3

    path = config.state_dir / LOG_FILE
    if not path.exists():
        return None
    sql = "SELECT * FROM alarms WHERE raised_ts >= ? AND raised_ts <= ?"
    params: list = [start, end]
    if string is not None:
        sql += " AND (string = ? OR string IS NULL)"
        params.append(string)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(sql + " ORDER BY raised_ts", params).fetchall()
    finally:
        db.close()
    return [{"raised": r["raised_ts"], "cleared": r["cleared_ts"], "severity": r["severity"], "text": r["text"],
             "point": r["metric"], "string": r["string"], "cell": r["cell"], "value": r["value"],
             "threshold": r["threshold"], "acknowledged_by": r["acked_by"]} for r in rows]


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
        state = "ACTIVE" if r["cleared_ts"] is None else f"cleared {when(r['cleared_ts'])}"
        ack = f", acknowledged by {r['acked_by']} {when(r['acked_ts'])}" if r["acked_by"] else ""
        print(f"#{r['id']:<6} {when(r['raised_ts'])}  {r['severity']:<8} {state}{ack}\n        {r['text']}")
    return 0


__all__ = ["ActiveAlarm", "AlarmEvent", "AlarmKey", "AlarmManager", "UnknownAlarm", "acknowledge", "get_manager"]
