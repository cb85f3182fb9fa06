"""The SNMP face as a gateway service: the agent (agent.py) it runs, replaced by a new one on a reload."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ...commands import Command, Principal
from ...hookspecs import AlarmEvent, hookimpl
from ...points import PointRef
from ...service import ReloadResult, Service
from .agent import SnmpAgent
from .upsmib import LOW_BATT_FILE, LOW_BATT_POINT, LowBattTime

log = logging.getLogger(__name__)


class SnmpService(Service):
    """The SNMP face: the agent (pysnmp and the v2c fast path), its active-alarm table and notifications."""

    name = "snmp"
    sections = ("snmp", "site")
    face = True

    def __init__(self, gateway, cfg: dict) -> None:
        self.gateway = gateway
        # upsConfigLowBattTime outlives agents (a reload) and restarts (its state file)
        self.low_batt = LowBattTime(gateway.config.state_dir / LOW_BATT_FILE, cfg["ups"]["low_minutes_remaining"])
        self.agent = SnmpAgent(gateway, cfg, self.low_batt)
        self.active: dict[str, Any] = {}  # raised alarm events by id: a new agent's table starts from them

    async def start(self) -> None:
        await self.agent.start()

    async def stop(self) -> None:
        await self.agent.stop()

    async def reload(self, config, changed: frozenset[str]) -> ReloadResult:
        """Communities, users, targets, the MIB's base, the UPS settings: a new agent with the new settings
        takes over (at the same address it is handed the old one's socket, so no request goes unanswered; at a
        new address it is bound first and the old one kept when that fails).  The active-alarm table carries
        over; SNMPv3 managers see the engine's boots counter grow by one."""
        result = ReloadResult()
        cfg = config.section("snmp")  # the gateway's config is the new one already
        self.low_batt.reconfigure(cfg["ups"]["low_minutes_remaining"])
        new = SnmpAgent(self.gateway, cfg, self.low_batt)
        for event in self.active.values():
            new.alarms.apply(event)
        new.ups_alarms.take_over(self.agent.ups_alarms)  # same rows and ids: no notification for what stays
        old = self.agent
        handed = old.sock.dup() if new.listen == old.listen and old.sock is not None else None
        try:
            await new.start(sock=handed)
        except Exception as exc:
            if handed is not None:
                handed.close()
            result.failed["snmp.listen" if handed is None else "snmp"] = f"{exc}; the old settings stay"
            return result
        await old.stop()
        self.agent = new
        result.notes.append(f"snmp: a new agent serves the new settings (SNMPv3 engine boots {new.boots})")
        return result

    def status(self) -> dict:
        return self.agent.status() if self.agent.running else {}

    def endpoints(self) -> list[str]:
        return self.agent.endpoints()

    @hookimpl
    def bmsgw_commands(self) -> list[Command]:
        """``gateway.ups_low_battery_time`` (write minutes, 1-1440): upsConfigLowBattTime, for operators; an SNMP
        SET of upsConfigLowBattTime.0 comes here through Gateway.write like any other face's write."""
        def set_low_batt_time(ref: PointRef, value: float, by: Principal) -> str:
            minutes = self.low_batt.set(value)
            return f"upsConfigLowBattTime = {minutes} min (kept in {self.low_batt.path})"

        return [Command(LOW_BATT_POINT, set_low_batt_time, role="operator")]

    @hookimpl
    def bmsgw_alarm_event(self, event: AlarmEvent) -> None:
        """Record the alarm in the active table and send the notifications (in the event loop)."""
        if event.active:
            self.active[str(event.alarm_id)] = event
        else:
            self.active.pop(str(event.alarm_id), None)
        loop = self.gateway.loop
        if loop is not None and loop.is_running() and not _in_loop(loop):
            loop.call_soon_threadsafe(_deliver, self.agent, event)
        else:
            _deliver(self.agent, event)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _deliver(agent, event) -> None:
    try:
        agent.alarm_event(event)
    except Exception:  # an alarm must never be lost for the other notifiers because of this one
        log.exception("SNMP: alarm event %r not processed", event)


# -- CLI ---------------------------------------------------------------------------------------------------
