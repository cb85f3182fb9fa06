"""Fuzzing the SNMP agent over UDP: the gateway's own agent on 127.0.0.1, twice over.

One agent answers SNMPv2c reads on the fast path (gateway/outputs/snmp/fastpath.py, its own BER parser),
the other sends everything through pysnmp; both serve the same standing store with pinned clocks.  Seeds are
real requests (net-snmp's snmpget/snmpbulkget/snmpset for v1, v2c and an SNMPv3 discovery, and pyasn1-built
requests with huge GETBULK repetitions, long OIDs and odd request ids); the fuzzer flips bits, rewrites
lengths, truncates, splices and also sends plain garbage.  For every datagram: both agents give the same
answer or both none, every answer decodes and respects the GETBULK cap, nothing is logged as an error, and
a plain GET right after is answered (no crash, no hang).  The fast path's parser and responder also run
in-process on many more cases.
"""
from __future__ import annotations

import socket
import subprocess

import pytest
from hypothesis import given, strategies as st
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message

from gateway.outputs.snmp import ber
from gateway.outputs.snmp.agent import SnmpAgent
from gateway.outputs.snmp.fastpath import FastPath
from tests.fuzz.cases import fuzz_settings, ran
from tests.fuzz.netcheck import ErrorLog, Footprint, answer_after_flood, datagrams, exchange, flood, mutated
from tests.snmp_support import V3_USER, free_udp_port, net_snmp_env, request
from tests.support import GatewayThread, small_bank, write_config

BASE = (1, 3, 6, 1, 4, 1, 32473)
SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
MAX_BULK = 64


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-snmp")
    fast_port, slow_port = free_udp_port(), free_udp_port()
    path = write_config(tmp, {"snmp": {"listen": f"127.0.0.1:{fast_port}", "v2c": {"community": "public"},
                                       "v3_users": [V3_USER], "max_bulk_varbinds": MAX_BULK},
                              "web": {"enabled": False}, "modbus_tcp": {"enabled": False},
                              "prometheus": {"enabled": False},
                              # nothing may change the store between the two agents' answers: no derived values
                              # that follow the clock (time since full charge), no alarms raised meanwhile
                              "analytics": {"enabled": False}, "alarms": {"enabled": False},
                              "string_state": {"interval_s": 600}}, base=small_bank(1, 4))
    with ErrorLog() as errors, GatewayThread(path) as gt:
        gw = gt.gateway
        fast = gw.service('snmp').agent
        slow = SnmpAgent(gw, {**gw.config.section("snmp"), "listen": f"127.0.0.1:{slow_port}", "fast_path": False})
        gt.call(slow.start())
        gt.call(gw.engine.stop())  # the store stands still: both agents must give the same bytes
        for agent in (fast, slow):
            agent.data.started, agent.data.started_mono = fast.data.started, fast.data.started_mono
            agent.data.ticks = lambda: 123456
            agent.data.counters = lambda: {"snmpInPkts": 7}
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            yield {"gt": gt, "fast": fast, "slow": slow, "ports": (fast_port, slow_port), "sock": sock,
                   "errors": errors, "seeds": captured_seeds(tmp) + built_seeds(fast),
                   "footprint": Footprint.now()}
        finally:
            sock.close()
            gt.call(slow.stop())


def captured_seeds(tmp) -> list[bytes]:
    """What net-snmp's tools really send (caught on a socket of ours, no agent behind it)."""
    env = net_snmp_env(tmp)
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trap:
        trap.bind(("127.0.0.1", 0))
        trap.settimeout(5)
        target = f"udp:127.0.0.1:{trap.getsockname()[1]}"
        for cmd in (["snmpget", "-v1", "-c", "public", target, "1.3.6.1.2.1.1.1.0"],
                    ["snmpget", "-v2c", "-c", "public", target, "1.3.6.1.2.1.1.1.0", "1.3.6.1.4.1.32473.1.6.1.3.1.1"],
                    ["snmpgetnext", "-v2c", "-c", "public", target, "1.3.6.1.4.1.32473"],
                    ["snmpbulkget", "-v2c", "-c", "public", "-Cn1", "-Cr50", target, "1.3.6.1.2.1.1", "1.3.6.1.4.1"],
                    ["snmpset", "-v2c", "-c", "public", target, "1.3.6.1.2.1.1.5.0", "s", "renamed"],
                    ["snmpget", "-v3", "-l", "authPriv", "-u", V3_USER["name"], "-a", "SHA-256", "-A",
                     V3_USER["auth_key"], "-x", "AES", "-X", V3_USER["priv_key"], target, "1.3.6.1.2.1.1.1.0"]):
            proc = subprocess.Popen([*cmd[:1], "-t", "1", "-r", "0", *cmd[1:]], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                out.append(trap.recvfrom(65535)[0])
            finally:
                proc.kill()
                proc.wait()
    return out


def built_seeds(agent) -> list[bytes]:
    served = [e.oid for e in agent.index.entries][:: max(1, len(agent.index) // 20)]
    return [request("get", served[:5]), request("next", [(0, 0), (2, 999), BASE]),
            request("bulk", [(1, 3, 6, 1)], non_repeaters=0, max_repetitions=2 ** 31 - 1),
            request("bulk", served[:40], non_repeaters=3, max_repetitions=1000),
            request("bulk", [(1, 3, 6, 1)] * 200, non_repeaters=0, max_repetitions=50),
            request("get", [(1, 3) + (2 ** 32 - 1,) * 120]), request("get", [SYS_DESCR], request_id=-2 ** 31),
            request("next", [BASE + (1, 6, 1, 3, 1)], community="wrong")]


# -- mutations (the generic ones in tests/fuzz/netcheck.py) ---------------------------------------------------
BER_OCTETS = [0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x30, 0x7F, 0x80, 0x81, 0x82, 0x84, 0x85, 0x88, 0xA0, 0xA1, 0xA2,
              0xA3, 0xA5, 0xA7, 0xFF]


def long_length(draw, data: bytearray, pos: int) -> None:
    """A long-form length where a short one was: huge, indefinite, non-minimal."""
    data[pos:pos + 1] = draw(st.sampled_from([b"\x80", b"\x84\xff\xff\xff\xff", b"\x81\x05", b"\x82\x00\x05",
                                              b"\x89" + bytes(9), b"\x84\x7f\xff\xff\xff"]))


def version(draw, data: bytearray, pos: int) -> None:
    if len(data) > 4 and data[2] == 0x02:
        data[4] = draw(st.sampled_from([0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF]))


def snmp_datagrams(seeds):
    return datagrams(seeds, mutated(seeds, BER_OCTETS, {"length": long_length, "version": version}))


def probe(request_id: int) -> bytes:
    return request("get", [SYS_DESCR], request_id=request_id)


def answers_to(agents, port: int, data: bytes, request_id: int) -> list[bytes]:
    """Send ``data``, then a plain GET; return the answers to ``data`` (those before the GET's answer)."""
    expected = probe_answer(agents, request_id, port)
    return exchange(agents["sock"], port, data, probe(request_id), lambda answer: answer == expected, check_answer,
                    f"agent on {port}")


_probe_answers: dict = {}


def probe_answer(agents, request_id: int, port: int) -> bytes:
    key = (request_id, port)
    if key not in _probe_answers:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.sendto(probe(request_id), ("127.0.0.1", port))
        _probe_answers[key] = sock.recvfrom(65535)[0]
        sock.close()
    return _probe_answers[key]


def check_answer(answer: bytes) -> None:
    assert len(answer) <= 65507
    version = int(api.decodeMessageVersion(answer))
    if version not in api.PROTOCOL_MODULES:  # an SNMPv3 report (unknown engine ID, user, bad digest ...)
        assert version == 3 and not decoder.decode(answer, asn1Spec=SNMPv3Message())[1]
        return
    module = api.PROTOCOL_MODULES[version]
    msg, rest = decoder.decode(answer, asn1Spec=module.Message())
    assert not rest
    pdu = module.apiMessage.get_pdu(msg)
    assert len(module.apiPDU.get_varbinds(pdu)) <= max(MAX_BULK, 200)


# each agent's own SNMP engine: how often it started (the second agent shares the state folder, so it counts
# one more boot) and the seconds since (the two are asked a moment apart)
ENGINE_OWN = {(1, 3, 6, 1, 6, 3, 10, 2, 1, 2, 0), (1, 3, 6, 1, 6, 3, 10, 2, 1, 3, 0)}


def engine_masked(answer: bytes) -> bytes:
    """The answer with snmpEngineBoots and snmpEngineTime set to 0: they are each agent's own; every other byte
    must be the same."""
    version = int(api.decodeMessageVersion(answer))
    if version not in api.PROTOCOL_MODULES:
        return answer
    module = api.PROTOCOL_MODULES[version]
    msg, _ = decoder.decode(answer, asn1Spec=module.Message())
    pdu = module.apiMessage.get_pdu(msg)
    varbinds = module.apiPDU.get_varbinds(pdu)
    if not any(tuple(oid) in ENGINE_OWN for oid, _ in varbinds):
        return answer
    module.apiPDU.set_varbinds(pdu, [(oid, value.clone(0) if tuple(oid) in ENGINE_OWN and
                                      value.tagSet == module.Integer().tagSet else value) for oid, value in varbinds])
    return encoder.encode(msg)


@given(data=st.data())
@fuzz_settings(400)
def test_any_datagram_gets_the_same_answer_from_both_paths(agents, data):
    datagram = data.draw(snmp_datagrams(agents["seeds"]), label="datagram")
    ran("snmp.agent_datagrams")
    errors_before = len(agents["errors"].records)
    fast = answers_to(agents, agents["ports"][0], datagram, 1)
    slow = answers_to(agents, agents["ports"][1], datagram, 1)
    # SNMPv3 reports carry each agent's own engine boots and time: only their number must agree
    def v3_as_one(answers):
        return [a if a[2:5] != b"\x02\x01\x03" else "v3" for a in answers]

    fast, slow = v3_as_one(fast), v3_as_one(slow)
    if fast != slow:  # the same but for each agent's own engine boots and time?
        fast, slow = ([a if a == "v3" else engine_masked(a) for a in side] for side in (fast, slow))
    assert fast == slow, f"fast path {fast}\n    pysnmp {slow}"
    new = agents["errors"].records[errors_before:]
    assert not new, [r.getMessage() for r in new]


@given(data=st.data())
@fuzz_settings(600)
def test_the_fast_path_parser_and_responder_never_raise(agents, data):
    """In the agent a fast-path exception is caught and logged (pysnmp answers instead): here it is a failure."""
    datagram = data.draw(snmp_datagrams(agents["seeds"]), label="datagram")
    ran("snmp.fastpath_parser")
    parsed = ber.parse_v2c_read(datagram)
    fast: FastPath = agents["fast"].fast
    answer = agents["gt"].call(_answer(fast, datagram))
    if answer is not None:
        assert parsed is not None and parsed.community == b"public"
        check_answer(answer)
        if parsed.pdu_type == ber.GETBULK:
            msg, _ = decoder.decode(answer, asn1Spec=api.PROTOCOL_MODULES[1].Message())
            assert len(api.PROTOCOL_MODULES[1].apiPDU.get_varbinds(api.PROTOCOL_MODULES[1].apiMessage.get_pdu(msg))) \
                <= MAX_BULK


async def _answer(fast: FastPath, datagram: bytes):
    return fast.answer(datagram)


def test_a_flood_of_garbage_from_many_sockets_leaves_the_agent_serving(agents):
    """Eight senders, 500 datagrams each, as fast as they can: the agent drops what it must and answers after."""
    port = agents["ports"][0]
    flood(port, agents["seeds"])
    check_answer(answer_after_flood(port, probe(99), "agent"))


def test_after_the_fuzzing_the_agents_answer_a_real_manager(agents):
    """net-snmp's snmpget still gets sysDescr from both; nothing leaked."""
    env = net_snmp_env(agents["gt"].gateway.config.state_dir)
    for port in agents["ports"]:
        proc = subprocess.run(["snmpget", "-v2c", "-c", "public", "-t", "2", "-r", "2", "-Oqv",
                               f"udp:127.0.0.1:{port}", "1.3.6.1.2.1.1.1.0"], capture_output=True, text=True,
                              env=env, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    assert not agents["errors"].records, [r.getMessage() for r in agents["errors"].records]
    # no request left half-answered in pysnmp's tables (an entry lives until just after its answer is sent)
    responders = [r for agent in (agents["fast"], agents["slow"]) for r in agent.responders]
    agents["gt"].wait_for(lambda: not any(r._CommandResponderBase__pendingReqs for r in responders), timeout=10,
                          what="pysnmp to release every request's state")
    agents["footprint"].assert_nothing_held(fd_slack=10)
