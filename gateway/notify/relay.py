"""The alarm relay: the I/O module's DO switches the room's sound-and-light alarm on critical alarms.

The relay follows the active-alarm table: on while an alarm of its severities is active (and, with
``silence_on_ack``, not yet acknowledged), off again when none is.  It never switches off a DO it did not
switch on, so an operator or a Modbus client may use the output while no alarm wants it.  Each event just asks
for a sync; the write goes through ``Gateway.write`` like every write (as the principal "alarm relay"), in the
gateway's event loop, from the worker thread.
"""
from __future__ import annotations

import logging
import time

from .. import alarms
from ..commands import Principal, WriteError
from ..errors import GatewayError
from ..hookspecs import hookimpl
from ..points import PointRef
from .base import DeliveryError, Item, Notifier

log = logging.getLogger(__name__)

SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True,
                    "description": "switch the DO on alarms (only when the bank has a writable io.do)"},
        "point": {"type": "string", "default": "io.do"},
        "channel": {"type": "integer", "minimum": 1, "maximum": 8, "default": 1},
        "severities": {"type": "array", "items": {"enum": ["warning", "critical"]}, "uniqueItems": True,
                       "minItems": 1, "default": ["critical"]},
        "silence_on_ack": {"type": "boolean", "default": True,
                           "description": "switch off once every such alarm is acknowledged"},
        "timeout_s": {"type": "number", "minimum": 0.5, "maximum": 60, "default": 5},
    },
}


RELAY_PRINCIPAL = Principal("alarm relay", "operator", "notify")


class RelayNotifier(Notifier):
    name = "relay"
    routed = False
    acks = True
    sync_at_start = True
    testable = False  # a test message must not sound the horn

    def __init__(self, gateway, cfg: dict) -> None:
        self.gateway = gateway
        self.ref = PointRef(cfg["point"], channel=cfg["channel"])
        self.severities = frozenset(cfg["severities"])
        self.silence_on_ack = bool(cfg["silence_on_ack"])
        self.timeout = float(cfg["timeout_s"])
        self.state: bool | None = None
        self.switches = 0
        self.changed_at: float | None = None

    def take_over(self, old: Notifier) -> None:
        if isinstance(old, RelayNotifier) and old.ref == self.ref:
            self.state, self.switches, self.changed_at = old.state, old.switches, old.changed_at

    def describe(self) -> str:
        return f"{self.ref.point} channel {self.ref.channel} on {', '.join(sorted(self.severities))} alarms"

    def wanted(self) -> bool:
        mgr = alarms.get_manager(self.gateway)
        if mgr is None:
            return False
        return any(a.severity in self.severities and not (self.silence_on_ack and a.acknowledged)
                   for a in mgr.active())

    def deliver(self, recipient: str | None, item: Item) -> None:
        on = self.wanted()
        if not on and not self.state:
            return  # the relay switches off only what it switched on: the DO is free for others until then
        current = self.gateway.store.value(self.ref)
        if self.state == on and current is not None and bool(current) == on:
            return
        try:
            self.gateway.write_from_thread(self.ref, 1 if on else 0, RELAY_PRINCIPAL, self.timeout)
        except TimeoutError:
            raise DeliveryError(f"writing {self.ref} timed out") from None
        except (WriteError, GatewayError) as exc:
            raise DeliveryError(f"switching the relay {'on' if on else 'off'} failed: {exc}") from None
        if self.state != on:
            self.switches += 1
            self.changed_at = time.time()
            log.log(logging.WARNING if on else logging.INFO, "alarm relay %s switched %s", self.ref,
                    "ON" if on else "off")
        self.state = on


@hookimpl
def bmsgw_notifiers(gateway) -> list[Notifier]:
    cfg = gateway.config.section("notify")["relay"]
    if not cfg.get("enabled"):
        return []
    ref = PointRef(cfg["point"], channel=cfg["channel"])
    spec = gateway.catalog.get(ref.point)
    if spec is None or not spec.writable or gateway.pointmap.device_of(ref) is None:
        log.info("alarm relay: %s is not a writable point of this bank (no I/O module?); relay off", ref)
        return []
    return [RelayNotifier(gateway, cfg)]
