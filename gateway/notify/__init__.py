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
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..alarms.model import AlarmEvent
from ..alarms.timer import DeadlineTimer
from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..service import ReloadResult, Service
from . import mail, relay, sms, webhook
from .base import Ack, DeliveryError, Message, Notifier, Sync
from .dispatch import RetryPolicy, Worker
from .router import QuietHours, Route, Router, parse_hhmm

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import Config

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


# What the built-in notifiers take as recipients (None: it takes none, it gets every alarm of its severities).
BUILTIN_RECIPIENTS = {"email": mail.recipient_problem, "sms": sms.recipient_problem, "relay": None, "webhook": None}


def route_problems(section: dict) -> list[str]:
    """What ``notify.routes`` gets wrong beyond its schema, for the built-in notifiers (a third-party
    notifier's recipients are checked when it starts)."""
    out, names = [], set()
    for i, r in enumerate(section["routes"] or []):
        path = f"notify.routes[{i}]"
        if r["name"] in names:
            out.append(f"{path}.name: route {r['name']!r} is defined twice")
        names.add(r["name"])
        for nname, addrs in (r.get("recipients") or {}).items():
            if nname not in BUILTIN_RECIPIENTS:
                continue
            check = BUILTIN_RECIPIENTS[nname]
            if check is None:
                out.append(f"{path}.recipients.{nname}: {nname} takes no recipients (it gets every alarm of its "
                           "severities)")
                continue
            out.extend(f"{path}.recipients.{nname}[{j}]: {a!r}: {why}" for j, a in enumerate(addrs)
                       if (why := check(a)))
        q = r.get("quiet_hours")
        if q:
            try:
                parse_hhmm(q["start"]), parse_hhmm(q["end"])
            except ValueError as exc:
                out.append(f"{path}.quiet_hours: {exc}")
    return out


def parse_routes(section: dict, notifiers: dict[str, Notifier], src: str = "config") -> list[Route]:
    routes, names = [], set()
    for i, r in enumerate(section["routes"] or []):
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
                                   frozenset(q["except_severities"]))
            except ValueError as exc:
                raise ConfigError(src, f"{path}.quiet_hours", str(exc)) from None
        routes.append(Route(r["name"], frozenset(r["severities"]), recipients,
                            r["clears"], quiet))
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
        rl = section["rate_limit"]
        self.router = Router(self.routes, site, rl["burst"], rl["per_s"], section["digest_s"])
        rt = section["retry"]
        policy = RetryPolicy(rt["attempts"], rt["backoff_s"], rt["max_backoff_s"])
        self.workers = {name: Worker(n, policy) for name, n in notifiers.items()}
        for n in notifiers.values():
            if n.routed and not any(n.name in r.recipients for r in self.routes):
                log.warning("notifier %s is enabled but no route names recipients for it", n.name)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer = DeadlineTimer(self._on_timer, slack=0.01)
        self.events = 0
        self.messages = 0
        self.started = False

    def take_over(self, old: NotifyManager) -> None:
        """What the manager this one replaces (a config reload) knew that the new notifiers cannot: what the
        relay switched on, so that it is switched off again when no alarm wants it any more."""
        self.events, self.messages = old.events, old.messages
        for name, w in self.workers.items():
            prev = old.workers.get(name)
            if prev is not None:
                w.notifier.take_over(prev.notifier)

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


def get_manager(gateway: Gateway) -> NotifyManager | None:
    """The gateway's notification manager while it runs (None when ``notify.enabled`` is off)."""
    svc = gateway.service("notify")
    return svc.manager if isinstance(svc, NotifyService) else None


class NotifyService(Service):
    """Routes alarm events to the notifiers (e-mail, SMS, relay, webhook), one worker thread each."""

    name = "notify"
    sections = ("notify", "site")
    after = ("alarms",)  # the relay reads the active-alarm table when it starts

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.manager = NotifyManager(gateway, gateway.config.section("notify"))

    async def start(self) -> None:
        self.manager.start(self.gateway.loop)

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.manager.stop)

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Routes, notifiers, retry and rate limits: a new set of workers takes over; the old ones deliver what
        they hold first (a digest still collecting goes out now), and the relay keeps what it switched on."""
        old = self.manager
        new = NotifyManager(self.gateway, config.section("notify"))
        new.take_over(old)
        await asyncio.get_running_loop().run_in_executor(None, old.stop)
        new.start(self.gateway.loop)
        self.manager = new
        return ReloadResult()

    def status(self) -> dict:
        return self.manager.status()

    def endpoints(self) -> list[str]:
        return [f"{n.name}: {n.describe()}" for n in self.manager.notifiers.values()]

    @hookimpl
    def bmsgw_alarm_event(self, event: AlarmEvent) -> None:
        if self.manager.started:
            self.manager.on_event(event)

    @hookimpl
    def bmsgw_alarm_acknowledged(self, event: AlarmEvent) -> None:
        if self.manager.started:
            self.manager.on_ack(event)


# -- hooks ---------------------------------------------------------------------------------------------------
@hookimpl
def bmsgw_config_schema() -> dict[str, dict]:
    return {"notify": SCHEMA}


@hookimpl
def bmsgw_check_config(gateway_config: Config) -> list[str]:
    section = gateway_config.section("notify")
    return route_problems(section) if section["enabled"] else []


@hookimpl
def bmsgw_services(gateway: Gateway) -> list[Service]:
    return [NotifyService(gateway)] if gateway.config.section("notify")["enabled"] else []


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
    event = AlarmEvent(alarm_id=0, object="test", point="test", value=None, threshold=None, severity=args.severity,
                       message="Test message from bmsgw: notifications work", active=True, ts=now, rule="test")
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
