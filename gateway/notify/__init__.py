"""Notifications: alarm events to people and things, each notifier a plugin on ``bmsgw_notifiers``.

This plugin implements ``bmsgw_alarm_event``: it routes each event (severities -> recipients, quiet hours,
rate limit and digest) and hands the work to one worker thread per notifier, which retries with back-off and
logs what it could not deliver.  Built-in notifiers: e-mail (``mail``), SMS through a 4G modem (``sms``),
the DO alarm relay (``relay``) and a webhook (``webhook``); SNMP traps and MQTT are faces of their own that
implement ``bmsgw_alarm_event`` directly.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..alarms.model import AlarmEvent
from ..alarms.timer import DeadlineTimer
from ..errors import ConfigError
from ..hookspecs import hookimpl
from . import mail, relay, sms, webhook
from .base import Ack, DeliveryError, Message, Notifier, Sync
from .dispatch import RetryPolicy, Worker
from .router import QuietHours, Route, Router, parse_hhmm

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger(__name__)

_severities = {"type": "array", "items": {"enum": ["warning", "critical"]}, "uniqueItems": True, "minItems": 1}
ROUTE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["name", "recipients"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_ .-]{1,48}$"},
        "severities": {**_severities, "default": ["warning", "critical"]},
        "clears": {"type": "boolean", "default": True, "description": "also tell when an alarm clears"},
        "recipients": {
            "type": "object", "maxProperties": 16,
            "description": "per notifier (email, sms, ...), the addresses this route sends to",
            "additionalProperties": {"type": "array", "maxItems": 32,
                                     "items": {"type": "string", "minLength": 1, "maxLength": 256}},
        },
        "quiet_hours": {
            "type": "object", "additionalProperties": False, "required": ["start", "end"],
            "description": "hold messages between start and end (local time) and send one digest at the end",
            "properties": {
                "start": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                "end": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                "except_severities": {"type": "array", "items": {"enum": ["warning", "critical"]}, "default": []},
            },
        },
    },
}
SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "site_name": {"type": "string", "maxLength": 100, "default": "",
                      "description": "how messages name the site (default: site.name)"},
        "retry": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 50, "default": 6},
                "backoff_s": {"type": "number", "minimum": 0.01, "maximum": 3600, "default": 5},
                "max_backoff_s": {"type": "number", "minimum": 0.01, "maximum": 86400, "default": 600},
            },
        },
        "rate_limit": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "per route: this many single messages, then one digest per digest_s",
            "properties": {
                "burst": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
                "per_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 600},
            },
        },
        "digest_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 120,
                     "description": "how long a digest collects alarms once the rate limit is reached"},
        "routes": {"type": "array", "maxItems": 32, "default": [], "items": ROUTE_SCHEMA},
        "email": mail.SCHEMA,
        "sms": sms.SCHEMA,
        "relay": relay.SCHEMA,
        "webhook": webhook.SCHEMA,
    },
}


def parse_routes(section: dict, notifiers: dict[str, Notifier], src: str = "config") -> list[Route]:
    routes, names = [], set()
    for i, r in enumerate(section.get("routes", []) or []):
        path = f"notify.routes[{i}]"
        if r["name"] in names:
            raise ConfigError(src, f"{path}.name", f"route {r['name']!r} is defined twice")
        names.add(r["name"])
        recipients = {}
        for nname, addrs in (r.get("recipients") or {}).items():
            n = notifiers.get(nname)
            if n is None:
                log.warning("%s (%s): notifier %r is not enabled; its recipients get nothing", path, r["name"], nname)
                continue
            if not n.routed:
                raise ConfigError(src, f"{path}.recipients.{nname}", f"{nname} takes no recipients (it gets every "
                                                                     "alarm of its severities)")
            for j, a in enumerate(addrs):
                why = n.check_recipient(a)
                if why:
                    raise ConfigError(src, f"{path}.recipients.{nname}[{j}]", f"{a!r}: {why}")
            recipients[nname] = tuple(dict.fromkeys(addrs))
        quiet = None
        if r.get("quiet_hours"):
            q = r["quiet_hours"]
            try:
                quiet = QuietHours(parse_hhmm(q["start"]), parse_hhmm(q["end"]),
                                   frozenset(q.get("except_severities", [])))
            except ValueError as exc:
                raise ConfigError(src, f"{path}.quiet_hours", str(exc)) from None
        routes.append(Route(r["name"], frozenset(r.get("severities", ["warning", "critical"])), recipients,
                            r.get("clears", True), quiet))
    return routes


class NotifyManager:
    def __init__(self, gateway: Gateway, section: dict) -> None:
        self.gateway = gateway
        self.section = section
        notifiers: dict[str, Notifier] = {}
        hook = gateway.pm.hook.bmsgw_notifiers
        for impl in reversed(hook.get_hookimpls()):
            try:
                result = impl.function(*[{"gateway": gateway}[a] for a in impl.argnames])
            except ConfigError as exc:  # name the config file the notifier could not know
                if exc.file == "config":
                    raise ConfigError(str(gateway.config.path), exc.path, exc.message) from None
                raise
            except Exception:
                log.exception("bmsgw_notifiers of plugin %s failed; its notifiers are off", impl.plugin_name)
                continue
            result = result or []
            if not isinstance(result, Iterable):  # pluggy types a hook's result as object
                log.error("bmsgw_notifiers of plugin %s returned a %s, not a list; its notifiers are off",
                          impl.plugin_name, type(result).__name__)
                continue
            for n in result:
                if n.name in notifiers:
                    raise ConfigError(str(gateway.config.path), "notify", f"two notifiers are named {n.name!r}")
                notifiers[n.name] = n
        self.notifiers = notifiers
        site = section.get("site_name") or gateway.config.section("site").get("name") or "bmsgw"
        self.routes = parse_routes(section, notifiers, str(gateway.config.path))
        rl = section.get("rate_limit", {})
        self.router = Router(self.routes, site, rl.get("burst", 5), rl.get("per_s", 600), section.get("digest_s", 120))
        rt = section.get("retry", {})
        policy = RetryPolicy(rt.get("attempts", 6), rt.get("backoff_s", 5), rt.get("max_backoff_s", 600))
        self.workers = {name: Worker(n, policy) for name, n in notifiers.items()}
        for n in notifiers.values():
            if n.routed and not any(n.name in r.recipients for r in self.routes):
                log.warning("notifier %s is enabled but no route names recipients for it", n.name)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer = DeadlineTimer(self._on_timer, slack=0.01)
        self.events = 0
        self.messages = 0
        self.started = False

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if self.started:
            return
        self.loop = loop
        for w in self.workers.values():
            w.start()
            if w.notifier.sync_at_start:
                w.submit(None, Sync("start", time.time()))
        self.started = True

    def stop(self) -> None:
        self._timer.cancel()
        if self.started:
            self._send(self.router.due(float("inf")))  # a digest still collecting goes out now
        for w in self.workers.values():
            w.stop()
        self.started = False

    # -- events (event loop) ---------------------------------------------------------------------------------
    def on_event(self, event: AlarmEvent) -> None:
        self.events += 1
        for w in self.workers.values():
            n = w.notifier
            if not n.routed and event.severity in n.severities:
                w.submit(None, event)
        self._send(self.router.handle(event, time.time()))
        self._reschedule()

    def on_ack(self, event: AlarmEvent) -> None:
        for w in self.workers.values():
            n = w.notifier
            if not n.routed and n.acks and event.severity in n.severities:
                w.submit(None, Ack(event))

    def _send(self, outgoing) -> None:
        for out in outgoing:
            self.messages += 1
            for name, addrs in out.route.recipients.items():
                w = self.workers.get(name)
                if w is None:
                    continue
                for addr in addrs:
                    w.submit(addr, out.message)

    def _reschedule(self) -> None:
        self._timer.arm(self.loop, self.router.next_due())

    def _on_timer(self) -> None:
        self._send(self.router.due(time.time()))
        self._reschedule()

    # -- reading ---------------------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every worker has nothing queued or waiting for a retry (tests, benchmarks, shutdown)."""
        deadline = time.monotonic() + timeout
        return all(w.idle.wait(max(0.0, deadline - time.monotonic())) for w in self.workers.values())

    def status(self) -> dict:
        return {"notifiers": {name: w.status() for name, w in self.workers.items()},
                "routes": [r.name for r in self.routes], "digest_pending": self.router.pending(),
                "events": self.events, "messages": self.messages}


_managers: weakref.WeakKeyDictionary[Gateway, NotifyManager] = weakref.WeakKeyDictionary()


def get_manager(gateway: Gateway) -> NotifyManager | None:
    return _managers.get(gateway)


class NotifyService:
    name = "notify"

    def __init__(self, manager: NotifyManager) -> None:
        self.manager = manager

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.manager.stop)

    def endpoints(self) -> list[str]:
        return [f"{n.name}: {n.describe()}" for n in self.manager.notifiers.values()]


# -- hooks ---------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"notify": SCHEMA}


@hookimpl(trylast=True)  # after the alarm manager exists (the relay reads its table at start)
def bmsgw_gateway_ready(gateway: Gateway) -> None:
    section = gateway.config.section("notify")
    if not section.get("enabled", True):
        return
    mgr = _managers.get(gateway)
    if mgr is None:
        mgr = _managers[gateway] = NotifyManager(gateway, section)
    mgr.start(gateway.loop)


@hookimpl
def bmsgw_alarm_event(gateway: Gateway, event: AlarmEvent) -> None:
    mgr = _managers.get(gateway)
    if mgr is not None and mgr.started:
        mgr.on_event(event)


@hookimpl
def bmsgw_alarm_acknowledged(gateway: Gateway, event: AlarmEvent) -> None:
    mgr = _managers.get(gateway)
    if mgr is not None and mgr.started:
        mgr.on_ack(event)


@hookimpl
def bmsgw_services(gateway: Gateway) -> list:
    mgr = _managers.get(gateway)
    return [NotifyService(mgr)] if mgr is not None else []


@hookimpl
def bmsgw_status(gateway: Gateway) -> dict:
    mgr = _managers.get(gateway)
    return {"notify": mgr.status()} if mgr is not None else {}


@hookimpl
def bmsgw_cli_commands(subparsers) -> None:
    s = subparsers.add_parser("notify-test", help="send a test alarm through the configured notifiers and routes",
                              description="Send one made-up alarm through every route and notifier of the config "
                                          "(not the relay), wait for the deliveries and report them. Exit 1 when "
                                          "one could not be delivered.")
    s.add_argument("--config", "-c", default=None, help="configuration file (default: as for `bmsgw run`)")
    s.add_argument("--severity", choices=["warning", "critical"], default="critical")
    s.add_argument("--timeout", type=float, default=60.0, help="wait at most this long for the deliveries")
    s.set_defaults(func=_cmd_notify_test)


def _cmd_notify_test(args) -> int:
    import sys

    from ..cliargs import config_path, offline_gateway

    gw = offline_gateway(config_path(args))
    section = gw.config.section("notify")
    mgr = NotifyManager(gw, {**section, "rate_limit": {"burst": 1000, "per_s": 0}})
    for name in [n for n, w in mgr.workers.items() if not w.notifier.testable]:
        del mgr.workers[name]
    if not mgr.workers:
        print("no notifier is enabled (notify.email / sms / webhook)", file=sys.stderr)
        return 1
    now = time.time()
    event = AlarmEvent(alarm_id=0, object="test", metric="test", value=None, threshold=None, severity=args.severity,
                       text="Test message from bmsgw: notifications work", raised=True, ts=now, rule="test")
    mgr.start(None)
    mgr.on_event(event)
    mgr.wait_idle(args.timeout)
    mgr.stop()
    failed = 0
    for name, w in mgr.workers.items():
        st = w.status()
        failed += st["failed"]
        line = f"{name}: {st['delivered']} delivered, {st['failed']} failed"
        if st["last_failure"]:
            line += f" ({st['last_failure']['reason']})"
        print(line)
    return 1 if failed else 0


__all__ = ["Ack", "DeliveryError", "Message", "NotifyManager", "Notifier", "Sync", "get_manager"]
