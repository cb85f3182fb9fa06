"""The SNMP agent service: pysnmp for SNMPv2c/SNMPv3 security and notifications, the fast path for v2c reads.

Life cycle (``bmsgw run``): ``start()`` in the gateway's event loop creates the pysnmp engine there, with a
fixed engine ID and a boots counter kept in the state folder, binds the UDP socket itself (so a busy port
is an error at start-up, not a silent failure), registers the v2c community and the v3 users, the
instrumentation over the OID index, and the notification targets.  ``stop()`` closes it all.
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
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config as snmp_config, engine as snmp_engine
from pysnmp.entity.rfc3413 import cmdrsp, context, ntforg
from pysnmp.proto import rfc1902
from pysnmp.proto.api import v2c
from pysnmp.smi import error as smi_error

from ... import fsutil
from ...commands import NotWritable, Principal, WriteDenied, WriteError, WriteFailed, WriteRejected
from ...config import address_allowed, parse_listen, parse_networks
from ...points import PointRef
from ...service import StartError
from . import ber, upsmib
from .alarms import AlarmRow, AlarmTable
from .controller import IndexController, to_pyasn1
from .fastpath import FastPath
from .mib import ENTERPRISES
from .sections import AgentData, alarm_prefix, entity_sections, system_section, vendor_section
from .tree import OidIndex, Value
from .upsmib import LowBattTime, UpsAlarms, UpsBattery

log = logging.getLogger(__name__)

AUTH = {"sha": snmp_config.USM_AUTH_HMAC96_SHA, "sha224": snmp_config.USM_AUTH_HMAC128_SHA224,
        "sha256": snmp_config.USM_AUTH_HMAC192_SHA256, "sha384": snmp_config.USM_AUTH_HMAC256_SHA384,
        "sha512": snmp_config.USM_AUTH_HMAC384_SHA512}
PRIV = {"aes": snmp_config.USM_PRIV_CFB128_AES, "aes128": snmp_config.USM_PRIV_CFB128_AES,
        "aes192": snmp_config.USM_PRIV_CFB192_AES_BLUMENTHAL, "aes256": snmp_config.USM_PRIV_CFB256_AES_BLUMENTHAL,
        "aes192c": snmp_config.USM_PRIV_CFB192_AES, "aes256c": snmp_config.USM_PRIV_CFB256_AES}
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
READ_VIEW = (1, 3, 6, 1)
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


def _usm_key(value: str, master: bool) -> rfc1902.OctetString | str:
    """A USM key as pysnmp takes it: a master key as octets (the config gives it in hex), a passphrase as it is."""
    return rfc1902.OctetString(hexValue=value.removeprefix("0x")) if master else value


class FastUdpTransport(udp.UdpAsyncioTransport):
    """pysnmp's UDP transport with the community source filter and the v2c read fast path in front, and a
    guard behind.

    The guard: pysnmp 7.1.30 lets some malformed datagrams raise out of its message dispatcher (``60 00``, an
    empty application-tagged value where the message should be, fails inside pyasn1 with a TypeError), and
    asyncio then logged a traceback for each one: a port scanner could fill the log.  Those are dropped and
    counted like any unparsable message, with one warning a minute at most.
    """

    fast: FastPath | None = None
    community_from: list | None = None  # networks whose v1/v2c messages are taken; None = any
    refused_sources = 0
    dropped = 0  # datagrams pysnmp failed on
    _warned_at = -1e9

    def datagram_received(self, datagram, transportAddress):
        allow = self.community_from
        if allow is not None and not address_allowed(transportAddress[0], allow) and ber.message_version(datagram) != 3:
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
                self.transport.sendto(response, transportAddress)
                return
        if self._callback_function is not None:
            self.loop.call_soon(self._receive, transportAddress, datagram)

    def _receive(self, address, datagram) -> None:
        try:
            self._callback_function(self, address, datagram)
        except Exception as exc:
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                log.warning("SNMP: dropped a malformed datagram from %s (%s: %s); %d so far, at most one such "
                            "warning a minute", address[0] if address else "?", type(exc).__name__, exc, self.dropped)


class BulkResponder(cmdrsp.BulkCommandResponder):
    """pysnmp's GETBULK responder, answering when there is nothing to send.

    pysnmp 7.1.30 raises a bare SmiError when a GETBULK yields no varbind (no non-repeaters and
    max-repetitions 0, or more repeated varbinds than max_bulk_varbinds so that not one repetition fits);
    its own handler then fails on that error (``"oid" in errorIndication``: TypeError), so the manager gets
    no answer, asyncio logs a traceback and the request's state is never released: every such datagram
    leaked memory.  RFC 3416 4.2.3: the answer is a Response with an empty variable-bindings list.
    """

    def handle_management_operation(self, snmpEngine, stateReference, contextName, PDU):
        varbinds = v2c.apiPDU.get_varbinds(PDU)
        n = min(max(int(v2c.apiBulkPDU.get_non_repeaters(PDU)), 0), len(varbinds))
        r = len(varbinds) - n
        m = max(int(v2c.apiBulkPDU.get_max_repetitions(PDU)), 0)
        if r:
            m = min(m, self.max_varbinds // r)
        if n == 0 and (m == 0 or r == 0):
            self.send_varbinds(snmpEngine, stateReference, 0, 0, [])
            self.release_state_information(stateReference)
            return
        super().handle_management_operation(snmpEngine, stateReference, contextName, PDU)


# RFC 3416 error-status values of a SET: what Gateway.write refused, in SNMP's words.
_SET_ERRORS = ((WriteDenied, "noAccess"), (NotWritable, "notWritable"), (WriteRejected, "wrongValue"),
               (WriteFailed, "commitFailed"), (WriteError, "genErr"))


class SetResponder(cmdrsp.SetCommandResponder):
    """SET for SNMPv3 users with write access: each variable written through ``Gateway.write``.

    Who may write is decided here, not by VACM: pysnmp 7.1.30's VACM *returns* (instead of raising) its
    notInView verdict for a view with no entries, so an empty write view lets every write through its check.
    A SET is refused (noAccess) unless it comes over SNMPv3 (USM), ``snmp.writes.enabled`` is on and the
    user's role is above viewer; ``Gateway.write`` then checks that role against the command and logs who did
    it.  A write may reach a device over RS485, so the answer is sent from a task once the writes are done;
    the variables are written in order and the first refusal ends the request (commands cannot be undone, so
    a SET of several is not atomic)."""

    agent: SnmpAgent

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._answering: set[int] = set()  # requests whose answer a task sends: their state must stay

    def handle_management_operation(self, snmpEngine, stateReference, contextName, PDU):
        varbinds = v2c.apiPDU.get_varbinds(PDU)
        request = snmpEngine.observer.get_execution_context("rfc3412.receiveMessage:request")
        user = str(request["securityName"])
        role = self.agent.write_role(int(request["securityModel"]), user)
        if role is None:
            raise smi_error.NoAccessError(name=varbinds[0][0] if varbinds else None, idx=0)
        plan = [(idx, tuple(name), value) for idx, (name, value) in enumerate(varbinds)]
        self._answering.add(stateReference)
        task = asyncio.ensure_future(self._write(snmpEngine, stateReference, Principal(user, role, "snmp"),
                                                 varbinds, plan))
        self.agent.pending_sets.add(task)
        task.add_done_callback(self.agent.pending_sets.discard)

    def release_state_information(self, stateReference):
        if stateReference not in self._answering:  # process_pdu releases it at once; the task does later
            super().release_state_information(stateReference)

    async def _write(self, engine, state_reference, by: Principal, varbinds, plan) -> None:
        status: int | str = 0  # 0, or an RFC 3416 error-status name
        index = 0
        try:
            for idx, oid, value in plan:
                try:
                    await self.agent.write_oid(oid, value, by)
                except WriteError as exc:
                    status = next(code for cls, code in _SET_ERRORS if isinstance(exc, cls))
                    index = idx + 1
                    log.info("SNMP SET by %s of %s refused: %s", by.name, ".".join(map(str, oid)), exc)
                    break
            self.send_varbinds(engine, state_reference, status, index, varbinds)
        finally:
            self._answering.discard(state_reference)
            super().release_state_information(state_reference)


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
        self.engine: snmp_engine.SnmpEngine | None = None
        self.transport: FastUdpTransport | None = None
        self.fast: FastPath | None = None
        self.bound: tuple[str, int] | None = None
        self.sock: socket.socket | None = None
        self.engine_id = b""
        self.boots = 1
        self._targets: list[dict] = []
        self._ntf: ntforg.NotificationOriginator | None = None
        self.sent = {"traps": 0, "informs": 0, "informs_acknowledged": 0, "failed": 0}
        self.responders: list = []
        objects = self.base + (1,)
        # the instance OID of every writable point: commands, and device points such as the relay
        self.writable = {objects + e.oid: e for e in (*gateway.pointmap.commands,
                                                      *(e for e in gateway.pointmap if e.spec.writable))}
        self.pending_sets: set[asyncio.Task] = set()

    # -- start / stop ------------------------------------------------------------------------------------
    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind ``snmp.listen`` (or take ``sock``, a socket bound there already: a reload hands over the old
        agent's, so no request goes unanswered) and serve."""
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
        engine = snmp_engine.SnmpEngine()
        # SNMPv1 is not offered: v1 messages are counted as bad versions and dropped
        engine.message_processing_subsystems.pop(0, None)
        mib = engine.get_mib_builder()
        (engine_id_obj,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID")
        engine_id_obj.syntax = engine_id_obj.syntax.clone(self.engine_id)
        engine.snmpEngineID = engine_id_obj.syntax
        (boots_obj,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
        boots_obj.syntax = boots_obj.syntax.clone(self.boots)
        (max_size,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineMaxMessageSize")
        self.engine = engine

        transport = FastUdpTransport(loop=asyncio.get_running_loop())
        transport.community_from = self.community_from
        transport.open_server_mode(sock=sock)
        try:
            await transport._lport  # the endpoint exists (and errors surface) before we go on
        except OSError as exc:
            sock.close()
            raise SnmpStartError(f"snmp.listen {cfg['listen']}: {exc}") from None
        snmp_config.add_transport(engine, udp.SNMP_UDP_DOMAIN, transport)
        self.transport = transport
        try:
            self._configure(engine, transport, int(max_size.syntax))
        except Exception:
            await self.stop()
            raise
        self._warn_open_community(bound)
        self._ups_task = asyncio.create_task(self._watch_ups(), name="snmp-ups-alarms")
        log.info("SNMP agent on udp://%s:%d (v2c %s, %d v3 user(s), %d notification target(s), engine %s boots %d, "
                 "%d instances)", bound[0], bound[1], "on" if self.community else "off", len(self.users),
                 len(self._targets), self.engine_id.hex(), self.boots, len(self.index))

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

    def _configure(self, engine: snmp_engine.SnmpEngine, transport: FastUdpTransport, max_message: int) -> None:
        cfg = self.cfg
        self._configure_security(engine)
        snmp_ctx = context.SnmpContext(engine)
        snmp_ctx.unregister_context_name(b"")
        snmp_ctx.register_context_name(b"", IndexController(self.index))
        bulk = BulkResponder(engine, snmp_ctx)
        bulk.max_varbinds = cfg["max_bulk_varbinds"]
        setter = SetResponder(engine, snmp_ctx)
        setter.agent = self
        self.responders = [cmdrsp.GetCommandResponder(engine, snmp_ctx), cmdrsp.NextCommandResponder(engine, snmp_ctx),
                           bulk, setter]
        self._configure_notifications(engine)

        if self.community and cfg["fast_path"]:
            self.fast = FastPath(self.index, self.community, cfg["max_bulk_varbinds"], max_message)
            transport.fast = self.fast

    def _configure_security(self, engine) -> None:
        """Read access for the v2c community and the v3 users (notify access for users that send)."""
        notify_users = {t["user"] for t in self.cfg["notifications"]["targets"] if t.get("user")}
        if self.community:
            snmp_config.add_v1_system(engine, "bmsgw-read", self.community.decode())
            snmp_config.add_vacm_user(engine, 2, "bmsgw-read", "noAuthNoPriv", readSubTree=READ_VIEW)
        for name, user in self.users.items():
            master = user["key_format"] == "master"
            key_type = snmp_config.USM_KEY_TYPE_MASTER if master else snmp_config.USM_KEY_TYPE_PASSPHRASE
            snmp_config.add_v3_user(engine, name, AUTH[user["auth"]], _usm_key(user["auth_key"], master),
                                    PRIV[user["priv"]], _usm_key(user["priv_key"], master),
                                    authKeyType=key_type, privKeyType=key_type)
            snmp_config.add_vacm_user(engine, 3, name, "authPriv", readSubTree=READ_VIEW,
                                      writeSubTree=self.base + (1,) if self.write_role(3, name) else (),
                                      notifySubTree=READ_VIEW if name in notify_users else ())

    def _configure_notifications(self, engine) -> None:
        """One target address, parameter set and notification entry per configured target (never shared:
        a target object reused across credentials duplicates notifications)."""
        for i, target in enumerate(self.cfg["notifications"]["targets"]):
            try:
                address = resolve(target["host"])
            except OSError as exc:
                log.error("snmp.notifications.targets[%d]: cannot resolve %s (%s); no notifications go there",
                          i, target["host"], exc)
                continue
            params, addr, tag, ntf = (f"bmsgw-p{i}", f"bmsgw-a{i}", f"bmsgw-t{i}", f"bmsgw-n{i}")
            kind = target.get("type") or ("inform" if target["version"] == "v3" else "trap")
            if target["version"] == "v2c":
                sec_name = f"bmsgw-notify{i}"
                # a community used only to send: no incoming request can match its transport tag
                snmp_config.add_v1_system(engine, sec_name, target["community"], transportTag="bmsgw-send-only")
                snmp_config.add_vacm_user(engine, 2, sec_name, "noAuthNoPriv", notifySubTree=READ_VIEW)
                snmp_config.add_target_parameters(engine, params, sec_name, "noAuthNoPriv", 1)
            else:
                snmp_config.add_target_parameters(engine, params, target["user"], "authPriv", 3)
            snmp_config.add_target_address(engine, addr, udp.SNMP_UDP_DOMAIN, (address, target["port"]),
                                            params, timeout=int(target["timeout_s"] * 100),
                                            retryCount=target["retries"], tagList=tag)
            snmp_config.add_notification_target(engine, ntf, params, tag, kind)
            self._targets.append({"name": ntf, "kind": kind, "where": f"{target['host']}:{target['port']}",
                                  "version": target["version"]})
        self._ntf = ntforg.NotificationOriginator()

    async def stop(self) -> None:
        if self._ups_task is not None:
            self._ups_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ups_task
            self._ups_task = None
        if self.engine is not None:
            dispatcher = self.engine.transport_dispatcher
            if dispatcher is not None:
                dispatcher.close_dispatcher()
            self.engine = None
        self.transport = None

    def endpoints(self) -> list[str]:
        host, port = self.bound or self.listen
        out = [f"snmp://{host}:{port} ({'v2c and ' if self.community else ''}{len(self.users)} v3 user(s))"]
        out += [f"snmp {t['kind']} -> {t['where']} ({t['version']})" for t in self._targets]
        return out

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
        if self.engine is None:
            return {}
        mib = self.engine.get_mib_builder()
        out = {}
        for name in ("snmpInPkts", "snmpInBadVersions", "snmpInBadCommunityNames", "snmpInBadCommunityUses",
                     "snmpInASNParseErrs", "snmpSilentDrops", "snmpProxyDrops"):
            (obj,) = mib.import_symbols("__SNMPv2-MIB", name)
            out[name] = int(obj.syntax)
        for name in ("usmStatsUnsupportedSecLevels", "usmStatsNotInTimeWindows", "usmStatsUnknownUserNames",
                     "usmStatsUnknownEngineIDs", "usmStatsWrongDigests", "usmStatsDecryptionErrors"):
            (obj,) = mib.import_symbols("__SNMP-USER-BASED-SM-MIB", name)
            out[name] = int(obj.syntax)
        if self.fast is not None:
            out["snmpInPkts"] += self.fast.answered
            out["fastPathResponses"] = self.fast.answered
        if self.transport is not None:
            out["snmpInASNParseErrs"] += self.transport.dropped
        return out

    def engine_info(self) -> dict:
        if self.engine is None:
            return {}
        mib = self.engine.get_mib_builder()
        (max_size,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineMaxMessageSize")
        (engine_time,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineTime")
        return {"id": self.engine_id, "boots": self.boots, "max_message_size": int(max_size.syntax),
                "time": max(0, int(time.time()) - int(engine_time.syntax)) & 0x7FFFFFFF}

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
                "refused_sources": self.transport.refused_sources if self.transport is not None else 0,
                "notifications": dict(self.sent)}

    # -- alarms and notifications --------------------------------------------------------------------
    def alarm_event(self, event: Any) -> None:
        """Record the alarm in the active table and send the notification to every target (non-blocking)."""
        row, raised = self.alarms.apply(event)
        self.ups_alarms.observe(event)
        if self.engine is not None:
            self.ups_alarms.evaluate()  # temperature, battery bad ... rows at once, not at the next second
        if self.engine is None or self._ntf is None or not self._targets:
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
        if self.engine is None or self._ntf is None or not self._targets:
            return
        varbinds = [(SYS_UPTIME, rfc1902.TimeTicks(self.data.ticks())),
                    (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(trap_oid))]
        varbinds += [(oid, to_pyasn1(*value)) for oid, value in values]
        for target in self._targets:
            self._send(target, varbinds, what)

    def _send(self, target: dict, varbinds, what: str) -> None:
        engine = self.engine

        def done(_engine, _handle, error_indication, error_status, _error_index, _vbs, _ctx):
            if error_indication or error_status:
                self.sent["failed"] += 1
                log.warning("SNMP %s for %s to %s not delivered: %s", target["kind"], what,
                            target["where"], error_indication or error_status)
            elif target["kind"] == "inform":
                self.sent["informs_acknowledged"] += 1

        try:
            if self._ntf is None:
                raise RuntimeError("the agent is not running")
            self._ntf.send_varbinds(engine, target["name"], None, b"", varbinds, done)
        except Exception as exc:  # a broken target must not stop the others or the caller
            self.sent["failed"] += 1
            log.warning("SNMP %s for %s to %s failed: %s", target["kind"], what, target["where"], exc)
            return
        self.sent["informs" if target["kind"] == "inform" else "traps"] += 1
