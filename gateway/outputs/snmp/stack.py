"""The pysnmp side of the SNMP agent: SNMPv2c requests the fast path does not answer, SNMPv3, SET, and the
notifications.  Loaded by the agent (agent.py) at start when it needs it from the first request (SNMPv3 users,
notification targets, v2c off or the fast path off), else at the first datagram the fast path does not answer:
pysnmp, pyasn1 and cryptography take about 11 MB of the controller's memory, not spent while the fast path
answers every request (v2c reads, the common case).

The engine has a fixed engine ID and a boots counter kept in the state folder (the agent's), the v2c community
and the v3 users, the instrumentation over the OID index, and the notification targets; it sends on the
agent's UDP socket.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config as snmp_config, engine as snmp_engine
from pysnmp.entity.rfc3413 import cmdrsp, context, ntforg
from pysnmp.proto import rfc1902
from pysnmp.proto.api import v2c
from pysnmp.smi import error as smi_error

from ...commands import NotWritable, Principal, WriteDenied, WriteError, WriteFailed, WriteRejected
from .controller import IndexController, to_pyasn1
from .tree import Value

if TYPE_CHECKING:
    from .agent import SnmpAgent

log = logging.getLogger(__name__)

READ_VIEW = (1, 3, 6, 1)
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)

AUTH = {"sha": snmp_config.USM_AUTH_HMAC96_SHA, "sha224": snmp_config.USM_AUTH_HMAC128_SHA224,
        "sha256": snmp_config.USM_AUTH_HMAC192_SHA256, "sha384": snmp_config.USM_AUTH_HMAC256_SHA384,
        "sha512": snmp_config.USM_AUTH_HMAC384_SHA512}
PRIV = {"aes": snmp_config.USM_PRIV_CFB128_AES, "aes128": snmp_config.USM_PRIV_CFB128_AES,
        "aes192": snmp_config.USM_PRIV_CFB192_AES_BLUMENTHAL, "aes256": snmp_config.USM_PRIV_CFB256_AES_BLUMENTHAL,
        "aes192c": snmp_config.USM_PRIV_CFB192_AES, "aes256c": snmp_config.USM_PRIV_CFB256_AES}


def _usm_key(value: str, master: bool) -> rfc1902.OctetString | str:
    """A USM key as pysnmp takes it: a master key as octets (the config gives it in hex), a passphrase as it is."""
    return rfc1902.OctetString(hexValue=value.removeprefix("0x")) if master else value

class AgentTransport(udp.UdpAsyncioTransport):
    """pysnmp's UDP transport on the agent's socket: the agent's endpoint (agent.AgentEndpoint) reads the
    socket and hands over what the fast path does not answer (``receive``); pysnmp sends through it.

    A guard: pysnmp 7.1.30 lets some malformed datagrams raise out of its message dispatcher (``60 00``, an
    empty application-tagged value where the message should be, fails inside pyasn1 with a TypeError), and
    asyncio then logged a traceback for each one: a port scanner could fill the log.  Those are dropped and
    counted like any unparsable message, with one warning a minute at most.
    """

    dropped = 0  # datagrams pysnmp failed on
    _warned_at = -1e9

    def receive(self, datagram: bytes, address) -> None:
        if self._callback_function is not None:
            self.loop.call_soon(self._receive, address, datagram)

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

    def close_transport(self):
        self.transport = None  # the socket is the agent's endpoint's: it closes it
        super().close_transport()


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


class PysnmpStack:
    """One agent's pysnmp engine, on the agent's socket (``endpoint``, an asyncio datagram transport)."""

    def __init__(self, agent: SnmpAgent, endpoint: asyncio.DatagramTransport, started: int) -> None:
        """``started``: when the agent started (time.time()), where snmpEngineTime counts from."""
        self.agent = agent
        cfg = agent.cfg
        engine = snmp_engine.SnmpEngine()
        # SNMPv1 is not offered: v1 messages are counted as bad versions and dropped
        engine.message_processing_subsystems.pop(0, None)
        mib = engine.get_mib_builder()
        (engine_id_obj,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID")
        engine_id_obj.syntax = engine_id_obj.syntax.clone(agent.engine_id)
        engine.snmpEngineID = engine_id_obj.syntax
        (boots_obj,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
        boots_obj.syntax = boots_obj.syntax.clone(agent.boots)
        (time_obj,) = mib.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineTime")
        time_obj.syntax = time_obj.syntax.clone(started)  # the agent's start, also when loaded later
        self.engine = engine
        transport = AgentTransport(loop=asyncio.get_running_loop())
        transport.connection_made(endpoint)
        snmp_config.add_transport(engine, udp.SNMP_UDP_DOMAIN, transport)
        self.transport = transport
        self.targets: list[dict] = []
        self._ntf: ntforg.NotificationOriginator | None = None
        try:
            self._configure_security()
            snmp_ctx = context.SnmpContext(engine)
            snmp_ctx.unregister_context_name(b"")
            snmp_ctx.register_context_name(b"", IndexController(agent.index))
            bulk = BulkResponder(engine, snmp_ctx)
            bulk.max_varbinds = cfg["max_bulk_varbinds"]
            setter = SetResponder(engine, snmp_ctx)
            setter.agent = agent
            self.responders = [cmdrsp.GetCommandResponder(engine, snmp_ctx),
                               cmdrsp.NextCommandResponder(engine, snmp_ctx), bulk, setter]
            self._configure_notifications()
        except Exception:
            self.close()
            raise

    def max_message_size(self) -> int:
        (max_size,) = self.engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineMaxMessageSize")
        return int(max_size.syntax)

    def _configure_security(self) -> None:
        """Read access for the v2c community and the v3 users (notify access for users that send)."""
        agent, engine = self.agent, self.engine
        notify_users = {t["user"] for t in agent.cfg["notifications"]["targets"] if t.get("user")}
        if agent.community:
            snmp_config.add_v1_system(engine, "bmsgw-read", agent.community.decode())
            snmp_config.add_vacm_user(engine, 2, "bmsgw-read", "noAuthNoPriv", readSubTree=READ_VIEW)
        for name, user in agent.users.items():
            master = user["key_format"] == "master"
            key_type = snmp_config.USM_KEY_TYPE_MASTER if master else snmp_config.USM_KEY_TYPE_PASSPHRASE
            snmp_config.add_v3_user(engine, name, AUTH[user["auth"]], _usm_key(user["auth_key"], master),
                                    PRIV[user["priv"]], _usm_key(user["priv_key"], master),
                                    authKeyType=key_type, privKeyType=key_type)
            snmp_config.add_vacm_user(engine, 3, name, "authPriv", readSubTree=READ_VIEW,
                                      writeSubTree=agent.base + (1,) if agent.write_role(3, name) else (),
                                      notifySubTree=READ_VIEW if name in notify_users else ())

    def _configure_notifications(self) -> None:
        """One target address, parameter set and notification entry per configured target (never shared:
        a target object reused across credentials duplicates notifications)."""
        from .agent import resolve

        engine = self.engine
        for i, target in enumerate(self.agent.cfg["notifications"]["targets"]):
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
            self.targets.append({"name": ntf, "kind": kind, "where": f"{target['host']}:{target['port']}",
                                 "version": target["version"]})
        self._ntf = ntforg.NotificationOriginator()

    def close(self) -> None:
        dispatcher = self.engine.transport_dispatcher
        if dispatcher is not None:
            dispatcher.close_dispatcher()

    def counters(self) -> dict[str, int]:
        """pysnmp's SNMP group and USM counters."""
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
        out["snmpInASNParseErrs"] += self.transport.dropped
        return out

    def engine_time(self) -> int:
        (engine_time,) = self.engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineTime")
        return max(0, int(time.time()) - int(engine_time.syntax)) & 0x7FFFFFFF

    def notify(self, trap_oid: tuple[int, ...], values: list[tuple[tuple[int, ...], Value]], what: str,
               ticks: int) -> None:
        if self._ntf is None or not self.targets:
            return
        varbinds = [(SYS_UPTIME, rfc1902.TimeTicks(ticks)), (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(trap_oid))]
        varbinds += [(oid, to_pyasn1(*value)) for oid, value in values]
        for target in self.targets:
            self._send(target, varbinds, what)

    def _send(self, target: dict, varbinds, what: str) -> None:
        sent = self.agent.sent

        def done(_engine, _handle, error_indication, error_status, _error_index, _vbs, _ctx):
            if error_indication or error_status:
                sent["failed"] += 1
                log.warning("SNMP %s for %s to %s not delivered: %s", target["kind"], what,
                            target["where"], error_indication or error_status)
            elif target["kind"] == "inform":
                sent["informs_acknowledged"] += 1

        try:
            if self._ntf is None:
                raise RuntimeError("the agent is not running")
            self._ntf.send_varbinds(self.engine, target["name"], None, b"", varbinds, done)
        except Exception as exc:  # a broken target must not stop the others or the caller
            sent["failed"] += 1
            log.warning("SNMP %s for %s to %s failed: %s", target["kind"], what, target["where"], exc)
            return
        sent["informs" if target["kind"] == "inform" else "traps"] += 1
