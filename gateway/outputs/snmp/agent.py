"""The SNMP agent service: the SNMPv2c read fast path on the agent's own UDP socket, pysnmp (stack.py) for
SNMPv3 security, SET, notifications and what the fast path does not answer.

Life cycle (``bmsgw run``): ``start()`` in the gateway's event loop binds the UDP socket itself (so a busy port
is an error at start-up, not a silent failure), keeps a fixed engine ID and a boots counter in the state
folder, and answers v2c reads from the OID index at once.  pysnmp (its engine with the v2c community, the v3
users, the instrumentation over the OID index and the notification targets) starts with it when the config
needs it from the first request (v3 users, notification targets, v2c or the fast path off), else when the
first datagram the fast path does not answer comes: about 11 MB (pysnmp, pyasn1, cryptography) a gateway
whose managers only read over v2c never loads.  ``stop()`` closes it all.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import fsutil
from ...commands import NotWritable, Principal, WriteRejected
from ...config import address_allowed, parse_listen, parse_networks
from ...points import PointRef
from ...service import StartError
from . import ber, upsmib
from .alarms import AlarmRow, AlarmTable
from .fastpath import FastPath
from .mib import ENTERPRISES
from .sections import AgentData, alarm_prefix, entity_sections, system_section, vendor_section
from .tree import OidIndex, Value
from .upsmib import LowBattTime, UpsAlarms, UpsBattery

if TYPE_CHECKING:
    from .stack import PysnmpStack

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 65507  # pysnmp's engine's snmpEngineMaxMessageSize (the largest UDP payload)
STATE_FILE = "snmp-engine.json"


class SnmpStartError(StartError):
    pass


def soc_model(config) -> tuple[float, float]:
    """The analytics' Peukert exponent and rated hours (``analytics.soc``), for the UPS-MIB's run time."""
    soc = config.section("analytics").get("soc")
    if soc is None:  # the analytics plugin is not loaded: its schema's defaults
        from gateway.analytics import ANALYTICS_SCHEMA
        from gateway.config import fill_defaults

        soc = fill_defaults(ANALYTICS_SCHEMA, {})["soc"]
    return float(soc["peukert"]), float(soc["rated_hours"])


def parse_oid(text: str) -> tuple[int, ...]:
    try:
        oid = tuple(int(x) for x in text.strip().strip(".").split("."))
    except ValueError:
        raise ValueError(f"{text!r} is not a numeric OID") from None
    return oid


def resolve(host: str) -> str:
    """An IPv4 address for a host name or address (the agent and its targets speak UDP over IPv4)."""
    if not host:
        return "0.0.0.0"
    return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])  # AF_INET: (host, port)


def default_engine_id(base: tuple[int, ...]) -> bytes:
    """RFC 3411 format: enterprise number with the high bit set, format 5 (octets), 8 random octets."""
    pen = base[len(ENTERPRISES)] if base[:len(ENTERPRISES)] == ENTERPRISES else 32473
    return (0x80000000 | pen).to_bytes(4, "big") + b"\x05" + secrets.token_bytes(8)


def load_engine_state(path: Path, configured: bytes | None, base: tuple[int, ...]) -> tuple[bytes, int]:
    """(engine ID, boots) for this start; the boots counter grows by one per start and is saved at once."""
    state: dict[str, Any] = {}
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("SNMP engine state %s unreadable (%s); starting a new boots count", path, exc)
    saved_id = bytes.fromhex(state["engine_id"]) if isinstance(state.get("engine_id"), str) else None
    engine_id = configured or saved_id or default_engine_id(base)
    boots = int(state.get("boots", 0)) + 1 if saved_id == engine_id else 1
    if boots >= 2147483647:
        boots = 2147483647  # RFC 3414: stays at the maximum; the administrator must change the engine ID
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(path, json.dumps({"engine_id": engine_id.hex(), "boots": boots}) + "\n")
    except OSError as exc:
        log.warning("cannot save the SNMP engine boots counter in %s (%s): SNMPv3 managers may reject the agent "
                    "after the next restart", path, exc)
    return engine_id, boots


WELL_KNOWN_COMMUNITIES = {b"public", b"private", b"community", b"snmp", b"admin", b"default"}


class AgentEndpoint(asyncio.DatagramProtocol):
    """The agent's UDP socket: the community source filter and the v2c read fast path in front of pysnmp,
    which gets (``to_pysnmp``) what the fast path does not answer."""

    def __init__(self, community_from: list | None, fast: FastPath | None, to_pysnmp) -> None:
        self.community_from = community_from  # networks whose v1/v2c messages are taken; None = any
        self.fast = fast
        self.to_pysnmp = to_pysnmp  # (datagram, address) -> None
        self.transport: asyncio.DatagramTransport | None = None
        self.refused_sources = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, datagram: bytes, address) -> None:
        allow = self.community_from
        if allow is not None and not address_allowed(address[0], allow) and ber.message_version(datagram) != 3:
            self.refused_sources += 1  # anything but SNMPv3 (which authenticates itself) from elsewhere: dropped
            return
        fast = self.fast
        if fast is not None and self.transport is not None:
            try:
                response = fast.answer(datagram)
            except Exception:  # never let a fast-path bug cost an answer: pysnmp takes the request
                log.exception("SNMP fast path failed; answering through pysnmp")
                response = None
            if response is not None:
                self.transport.sendto(response, address)
                return
        self.to_pysnmp(datagram, address)


class SnmpAgent:
    """The ``snmp`` face: one per gateway, started by ``bmsgw run``."""

    name = "snmp"

    def __init__(self, gateway, cfg: dict, low_batt: LowBattTime | None = None) -> None:
        """``low_batt``: upsConfigLowBattTime, kept by the service across agents (default: read from the state
        folder)."""
        self.gateway = gateway
        self.cfg = cfg
        self.low_batt = low_batt or LowBattTime(gateway.config.state_dir / upsmib.LOW_BATT_FILE,
                                                cfg["ups"]["low_minutes_remaining"])
        self.base = parse_oid(cfg["base_oid"])
        self.listen = parse_listen(cfg["listen"])
        self.community = (cfg["v2c"]["community"] or "").encode() or None  # null: SNMPv2c off
        self.community_from = parse_networks(cfg["v2c"]["allow_from"], str(gateway.config.path),
                                             "snmp.v2c.allow_from") or None
        self.users = {u["name"]: u for u in cfg["v3_users"]}
        gw_cfg = gateway.config
        peukert, rated_hours = soc_model(gw_cfg)
        self.data = AgentData(
            store=gateway.store, pointmap=gateway.pointmap, topology=gateway.topology, base=self.base,
            site_name=gw_cfg.section("site")["name"], system=cfg["system"], ups=cfg["ups"],
            entity_points=list(cfg["entity_sensors"]), poll=gw_cfg.data["gateway"]["poll"],
            counters=self.counters, engine=self.engine_info, low_batt_time=lambda: self.low_batt.minutes,
            peukert=peukert, rated_hours=rated_hours)
        self.ups_battery = UpsBattery(self.data)
        sections = [vendor_section(self.data), system_section(self.data),
                    upsmib.ups_section(self.data, self.ups_battery), *entity_sections(self.data)]
        self.index = OidIndex(sections, [alarm_prefix(self.base), upsmib.UPS_ALARM], store=gateway.store)
        self.alarms = AlarmTable(self.data, self.index, gateway.pointmap, gateway.catalog)
        self.ups_alarms = UpsAlarms(self.data, self.ups_battery, notify=self.notify_ups,
                                    send_traps=cfg["ups"]["notifications"])
        self.ups_alarms.changed = lambda: self.index.dynamic_changed(self.ups_alarms.section, upsmib.UPS_ALARM)
        self.index.set_dynamic(self.ups_alarms.section(), upsmib.UPS_ALARM)
        self._ups_task: asyncio.Task | None = None
        self.running = False
        self.endpoint: AgentEndpoint | None = None
        self.stack: PysnmpStack | None = None  # pysnmp, from start or from the first request that needs it
        self._stack_loading: asyncio.Task | None = None
        self._stack_waiting: list[tuple[bytes, Any]] = []  # datagrams that came while pysnmp was loading
        self.started = 0  # time.time() at start: snmpEngineTime counts from it
        self.fast: FastPath | None = None
        self.bound: tuple[str, int] | None = None
        self.sock: socket.socket | None = None
        self.engine_id = b""
        self.boots = 1
        self.sent = {"traps": 0, "informs": 0, "informs_acknowledged": 0, "failed": 0}
        objects = self.base + (1,)
        # the instance OID of every writable point: commands, and device points such as the relay
        self.writable = {objects + e.oid: e for e in (*gateway.pointmap.commands,
                                                      *(e for e in gateway.pointmap if e.spec.writable))}
        self.pending_sets: set[asyncio.Task] = set()

    # -- start / stop ------------------------------------------------------------------------------------
    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind ``snmp.listen`` (or take ``sock``, a socket bound there already: a reload hands over the old
        agent's, so no request goes unanswered) and serve: the fast path at once; pysnmp now when it is needed
        from the first request (SNMPv3 users, notification targets, v2c off or the fast path off), else when
        the first datagram the fast path does not answer comes."""
        cfg = self.cfg
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((resolve(self.listen[0]), self.listen[1]))
            except OSError as exc:
                sock.close()
                raise SnmpStartError(f"snmp.listen {cfg['listen']}: cannot bind UDP port: {exc.strerror or exc}") \
                    from None
        self.sock = sock
        bound: tuple[str, int] = sock.getsockname()[:2]
        self.bound = bound
        state_path = self.gateway.config.state_dir / STATE_FILE
        configured = bytes.fromhex(cfg["engine_id"].removeprefix("0x")) if cfg.get("engine_id") else None
        self.engine_id, self.boots = load_engine_state(state_path, configured, self.base)
        self.started = int(time.time())
        if self.community and cfg["fast_path"]:
            self.fast = FastPath(self.index, self.community, cfg["max_bulk_varbinds"], MAX_MESSAGE_SIZE)
        endpoint = AgentEndpoint(self.community_from, self.fast, self._to_pysnmp)
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, sock=sock)
        except OSError as exc:
            sock.close()
            raise SnmpStartError(f"snmp.listen {cfg['listen']}: {exc}") from None
        self.endpoint = endpoint
        self.running = True
        if self.fast is None or self.users or cfg["notifications"]["targets"]:
            try:
                self._load_stack()
            except Exception:
                await self.stop()
                raise
        self._warn_open_community(bound)
        self._ups_task = asyncio.create_task(self._watch_ups(), name="snmp-ups-alarms")
        log.info("SNMP agent on udp://%s:%d (v2c %s, %d v3 user(s), %d notification target(s), engine %s boots %d, "
                 "%d instances)", bound[0], bound[1], "on" if self.community else "off", len(self.users),
                 len(cfg["notifications"]["targets"]), self.engine_id.hex(), self.boots, len(self.index))

    def _load_stack(self) -> PysnmpStack:
        """pysnmp's engine on the agent's socket (imports pysnmp when this is the first agent needing it)."""
        from .stack import PysnmpStack

        assert self.endpoint is not None and self.endpoint.transport is not None
        stack = self.stack = PysnmpStack(self, self.endpoint.transport, self.started)
        return stack

    def _to_pysnmp(self, datagram: bytes, address) -> None:
        """A datagram the fast path did not answer: to pysnmp, loaded by the first one (its modules imported
        in a thread, so the event loop goes on polling meanwhile; a few datagrams wait for it)."""
        if self.stack is not None:
            self.stack.transport.receive(datagram, address)
            return
        if not self.running:
            return
        if len(self._stack_waiting) < 64:
            self._stack_waiting.append((datagram, address))
        if self._stack_loading is None:
            self._stack_loading = asyncio.get_running_loop().create_task(self._load_stack_later(),
                                                                            name="snmp-load-pysnmp")

    async def _load_stack_later(self) -> None:
        import importlib

        try:
            await asyncio.to_thread(importlib.import_module, f"{__package__}.stack")
            if not self.running:
                return
            stack = self._load_stack()
        except Exception:
            log.exception("SNMP: pysnmp could not be started; only the fast path answers")
            self._stack_waiting.clear()
            return
        log.info("SNMP: pysnmp loaded for the first request the fast path does not answer (SNMPv1/v3, SET, "
                 "another community)")
        waiting, self._stack_waiting = self._stack_waiting, []
        for datagram, address in waiting:
            stack.transport.receive(datagram, address)

    def _warn_open_community(self, bound: tuple[str, int]) -> None:
        if not self.community or self.community_from is not None:
            return
        try:
            local = ipaddress.ip_address(bound[0]).is_loopback
        except ValueError:
            local = False
        if local:
            return
        what = f"the well-known community {self.community.decode()!r}" \
            if self.community.lower() in WELL_KNOWN_COMMUNITIES else "its community"
        log.warning("SNMP: SNMPv2c answers %s from any address on %s:%d (communities cross the network in clear "
                    "text): set snmp.v2c.allow_from to the NMS's addresses, or turn v2c off (community: null) and "
                    "use SNMPv3 users", what, bound[0], bound[1])

    async def stop(self) -> None:
        self.running = False
        if self._ups_task is not None:
            self._ups_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ups_task
            self._ups_task = None
        if self._stack_loading is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._stack_loading
            self._stack_loading = None
        if self.stack is not None:
            self.stack.close()
            self.stack = None
        if self.endpoint is not None and self.endpoint.transport is not None:
            self.endpoint.transport.close()
        self.endpoint = None

    def endpoints(self) -> list[str]:
        host, port = self.bound or self.listen
        out = [f"snmp://{host}:{port} ({'v2c and ' if self.community else ''}{len(self.users)} v3 user(s))"]
        out += [f"snmp {t['kind']} -> {t['where']} ({t['version']})" for t in self.targets]
        return out

    @property
    def responders(self) -> list:
        """pysnmp's command responders (none before pysnmp is loaded)."""
        return self.stack.responders if self.stack is not None else []

    @property
    def targets(self) -> list[dict]:
        """The notification targets pysnmp sends to (none before pysnmp is loaded: it is, when any is set)."""
        return self.stack.targets if self.stack is not None else []

    # -- writes (SET) -----------------------------------------------------------------------------------
    def write_role(self, security_model: int, user: str) -> str | None:
        """The role a SET acts with, or None when it may not write at all: SNMPv3 users only, with
        ``snmp.writes.enabled`` on and a role above viewer."""
        if security_model != 3 or not self.cfg["writes"]["enabled"] or user not in self.users:
            return None
        role = self.users[user]["role"]
        return role if role != "viewer" else None

    async def write_oid(self, oid: tuple[int, ...], value, by: Principal) -> None:
        """One SET variable: the writable point (a command, the relay) at ``oid``, through Gateway.write.
        upsConfigLowBattTime.0 is the command point ``gateway.ups_low_battery_time``."""
        if oid == upsmib.UPS_CONFIG_LOW_BATT_TIME + (0,):
            try:
                minutes = int(value)
            except (TypeError, ValueError):
                raise WriteRejected("upsConfigLowBattTime takes a number of minutes") from None
            await self.gateway.write(PointRef(upsmib.LOW_BATT_POINT), minutes, by)
            return
        entry = self.writable.get(oid)
        if entry is None:
            raise NotWritable(f"{'.'.join(map(str, oid))} is not a writable object")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise WriteRejected(f"{entry.ref.point} takes a number") from None
        await self.gateway.write(entry.ref, number * entry.spec.scale, by)

    # -- counters --------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The SNMP group counters: the fast path's answers and, once loaded, pysnmp's (and its USM's)."""
        if not self.running:
            return {}
        if self.stack is not None:
            out = self.stack.counters()
        else:  # nothing reached pysnmp yet
            out = dict.fromkeys(("snmpInPkts", "snmpInBadVersions", "snmpInBadCommunityNames",
                                 "snmpInBadCommunityUses", "snmpInASNParseErrs", "snmpSilentDrops",
                                 "snmpProxyDrops", "usmStatsUnsupportedSecLevels", "usmStatsNotInTimeWindows",
                                 "usmStatsUnknownUserNames", "usmStatsUnknownEngineIDs", "usmStatsWrongDigests",
                                 "usmStatsDecryptionErrors"), 0)
        if self.fast is not None:
            out["snmpInPkts"] += self.fast.answered
            out["fastPathResponses"] = self.fast.answered
        return out

    def engine_info(self) -> dict:
        if not self.running:
            return {}
        engine_time = self.stack.engine_time() if self.stack is not None else \
            max(0, int(time.time()) - self.started) & 0x7FFFFFFF
        return {"id": self.engine_id, "boots": self.boots,
                "max_message_size": self.stack.max_message_size() if self.stack is not None else MAX_MESSAGE_SIZE,
                "time": engine_time}

    def status(self) -> dict:
        c = self.counters()
        host, port = self.bound or self.listen
        return {"listen": f"{host}:{port}", "engine_id": self.engine_id.hex(),
                "boots": self.boots, "instances": len(self.index), "active_alarms": len(self.alarms.rows),
                "ups_alarms": sorted(self.ups_alarms.rows), "ups_low_batt_time_min": self.low_batt.minutes,
                "bad_community": c.get("snmpInBadCommunityNames", 0),
                "bad_credentials": sum(c.get(k, 0) for k in ("usmStatsUnknownUserNames", "usmStatsWrongDigests",
                                                             "usmStatsDecryptionErrors")),
                "requests": c.get("snmpInPkts", 0), "fast_path_responses": c.get("fastPathResponses", 0),
                "refused_sources": self.endpoint.refused_sources if self.endpoint is not None else 0,
                "pysnmp_loaded": self.stack is not None,
                "notifications": dict(self.sent)}

    # -- alarms and notifications --------------------------------------------------------------------
    def alarm_event(self, event: Any) -> None:
        """Record the alarm in the active table and send the notification to every target (non-blocking)."""
        row, raised = self.alarms.apply(event)
        self.ups_alarms.observe(event)
        if self.running:
            self.ups_alarms.evaluate()  # temperature, battery bad ... rows at once, not at the next second
        if self.stack is None or not self.stack.targets:
            return
        self.notify(row, raised)

    async def _watch_ups(self) -> None:
        """The UPS-MIB alarm conditions follow the bank: evaluated every second (a few points per string)."""
        while True:
            try:
                self.ups_alarms.evaluate()
            except Exception:
                log.exception("SNMP: UPS-MIB alarm conditions not evaluated")
            await asyncio.sleep(1.0)

    def notify(self, row: AlarmRow, raised: bool) -> None:
        values = [(oid, value) for oid, value in self.alarms.notification_varbinds(row)]
        self._notify(self.base + (0, 1 if raised else 2), values, f"alarm {row.alarm_id}")

    def notify_ups(self, trap_oid: tuple[int, ...], values: list[tuple[tuple[int, ...], Value]], what: str) -> None:
        """A UPS-MIB notification (upsTrapOnBattery, upsTrapAlarmEntryAdded/Removed) to every target."""
        self._notify(trap_oid, values, what)

    def _notify(self, trap_oid: tuple[int, ...], values: list[tuple[tuple[int, ...], Value]], what: str) -> None:
        if self.stack is not None:
            self.stack.notify(trap_oid, values, what, self.data.ticks())
