"""The SNMPv2c fast path answers byte-for-byte what pysnmp answers.

Two agents serve the same gateway: one with the fast path, one without (every request goes through
pysnmp's command responders and BER encoder).  Polling is stopped and the agents' clocks are pinned, so
both see the same data; then the same request bytes (encoded by pysnmp/pyasn1, not by our code) go to both
and the responses must be identical: a GETNEXT walk of everything, GETBULK and GET variants, random requests.
"""
from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import rfc1905
from pysnmp.proto.api import v2c

from gateway.hookspecs import AlarmEvent
from gateway.outputs.snmp import ber
from gateway.outputs.snmp.agent import SnmpAgent
from gateway.points import PointRef
from tests.snmp_support import free_udp_port, request
from tests.support import GatewayThread, small_bank, write_config

BASE = (1, 3, 6, 1, 4, 1, 32473)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fastpath")
    fast_port, slow_port = free_udp_port(), free_udp_port()
    path = write_config(tmp, {"snmp": {"listen": f"127.0.0.1:{fast_port}", "v2c": {"community": "public"}}},
                        base=small_bank(2, 4))
    gt = GatewayThread(path).start()
    gw = gt.gateway
    fast = gw.service('snmp').agent
    cfg = {**gw.config.section("snmp"), "listen": f"127.0.0.1:{slow_port}", "fast_path": False}
    slow = SnmpAgent(gw, cfg)
    gt.call(slow.start())
    gt.call(gw.engine.stop())  # the store stands still from here
    for agent in (fast, slow):  # the same clock and counters for both
        agent.data.started, agent.data.started_mono = fast.data.started, fast.data.started_mono
        agent.data.ticks = lambda: 123456
        agent.data.counters = lambda: {"snmpInPkts": 7}
        agent.data.engine = lambda: {"id": b"\x80\x00\x7e\xd9\x05bmsgwtest", "boots": 3, "time": 42,
                                     "max_message_size": 65507}
    event = AlarmEvent(alarm_id="cell.voltage.low/1/2", object="string 1 cell 2", point="cell.voltage", value=12.61,
                       threshold=12.78, severity="critical", message="String 1 battery 2 low", active=True,
                       ts=fast.data.started + 5, unit="V", string=1, cell=2)
    for agent in (fast, slow):
        gt.call(_apply(agent, event))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        yield {"fast": fast, "slow": slow, "ports": (fast_port, slow_port), "sock": sock, "gt": gt}
    finally:
        sock.close()
        gt.call(slow.stop())
        gt.stop()


async def _apply(agent, event):
    agent.alarms.apply(event)


def ask(pair, data: bytes, port_index: int, timeout: float = 3.0) -> bytes | None:
    sock = pair["sock"]
    sock.settimeout(timeout)
    sock.sendto(data, ("127.0.0.1", pair["ports"][port_index]))
    try:
        answer, _ = sock.recvfrom(65535)
    except TimeoutError:
        return None
    return answer


def both(pair, data: bytes, timeout: float = 3.0) -> bytes | None:
    fast, slow = ask(pair, data, 0, timeout), ask(pair, data, 1, timeout)
    assert fast == slow, f"fast path {fast!r}\n     pysnmp {slow!r}"
    return fast


def varbinds(answer: bytes):
    msg, _ = decoder.decode(answer, asn1Spec=v2c.Message())
    pdu = v2c.apiMessage.get_pdu(msg)
    return [(tuple(name), value) for name, value in v2c.apiPDU.get_varbinds(pdu)]


def test_a_getnext_walk_of_everything_is_identical(pair):
    oid, steps = (1, 3, 6, 1), 0
    answered = pair["fast"].fast.answered
    while True:
        answer = both(pair, request("next", [oid], request_id=steps))
        ((oid, value),) = varbinds(answer)
        if value.tagSet == rfc1905.endOfMibView.tagSet:
            break
        steps += 1
    assert steps == len([e for e in pair["fast"].index.entries if e.encoded() is not None])
    assert steps > 300
    assert pair["fast"].fast.answered - answered == steps + 1  # every one of them by the fast path
    assert pair["slow"].fast is None


@pytest.mark.parametrize("non_repeaters,max_repetitions,oids", [
    (0, 10, [(1, 3, 6, 1)]),
    (0, 64, [BASE + (1, 6)]),
    (0, 200, [BASE + (1, 6, 1, 3)]),  # capped at 64 varbinds
    (0, 20, [BASE + (1, 6, 1, 3), BASE + (1, 6, 1, 4), BASE + (1, 5, 1, 2)]),  # 3 columns side by side
    (2, 30, [(1, 3, 6, 1, 2, 1, 1, 1), (1, 3, 6, 1, 2, 1, 1, 3), BASE + (1, 7), (1, 3, 6, 1, 2, 1, 33)]),
    (0, 8, [(1, 3, 6, 1, 6, 3, 10, 2, 1, 3)]),  # runs off the end: endOfMibView, repeated
    (3, 0, [(1, 3, 6, 1, 2, 1, 1), (1, 3, 6, 1, 2, 1, 47), (1, 3, 6, 1, 2, 1, 99)]),  # only non-repeaters
    (5, 10, [(1, 3, 6, 1, 2, 1, 1)]),  # more non-repeaters than varbinds
    (0, 10, [(2, 999)]),  # after everything
    (0, 10, [(0, 0)]),
])
def test_getbulk_is_identical(pair, non_repeaters, max_repetitions, oids):
    answer = both(pair, request("bulk", oids, non_repeaters=non_repeaters, max_repetitions=max_repetitions))
    assert answer is not None


def test_getbulk_with_nothing_to_answer_gets_an_empty_answer(pair):
    """No non-repeaters and no repetitions, or more repeated varbinds than one answer may hold: a Response
    with no varbinds (RFC 3416 4.2.3) from both (pysnmp 7.1.30 alone raised and sent nothing)."""
    for oids, reps in (([(1, 3, 6, 1)], 0), ([(1, 3, 6, 1)] * 65, 5), ([], 10)):
        answer = both(pair, request("bulk", oids, non_repeaters=0, max_repetitions=reps))
        assert answer is not None and varbinds(answer) == []


def test_get_is_identical(pair):
    oids = [
        (1, 3, 6, 1, 2, 1, 1, 1, 0),  # sysDescr.0
        (1, 3, 6, 1, 2, 1, 1, 1),  # the object itself, no instance
        BASE + (1, 6, 1, 3, 1, 2),  # a cell voltage
        BASE + (1, 6, 1, 3, 3, 1),  # no string 3: noSuchInstance
        BASE + (1, 6, 1, 20, 1, 1),  # SOH: in the map, never computed: absent
        BASE + (1, 7, 2, 1, 2, 1),  # the alarm row
        (1, 3, 6, 1, 2, 1, 33, 1, 2, 5, 0),  # upsBatteryVoltage.0
        (1, 2, 3),  # nothing: noSuchObject
        (1, 3, 6, 1, 2, 1, 99, 1, 1, 1, 4, 100000 + 10001),  # a sensor value
    ]
    answer = both(pair, request("get", oids))
    values = dict(varbinds(answer))
    assert values[(1, 2, 3)].tagSet == rfc1905.noSuchObject.tagSet
    assert values[BASE + (1, 6, 1, 3, 3, 1)].tagSet == rfc1905.noSuchInstance.tagSet
    assert values[BASE + (1, 6, 1, 20, 1, 1)].tagSet == rfc1905.noSuchInstance.tagSet
    assert int(values[BASE + (1, 6, 1, 3, 1, 2)]) > 10000  # millivolts of a 12 V battery
    both(pair, request("get", []))
    for request_id in (-128, -32768, -2 ** 31, 0, 127, 128, 2 ** 31 - 1):
        both(pair, request("get", [(1, 3, 6, 1, 2, 1, 1, 5, 0)], request_id=request_id))
    both(pair, request("next", [(1, 3, 6, 1, 2, 1, 1, 9), BASE, (2, 0), (1, 3, 6, 1, 4, 1, 32473, 1, 7, 2)]))


def test_wrong_community_gets_nothing_from_either(pair):
    assert both(pair, request("get", [(1, 3, 6, 1, 2, 1, 1, 1, 0)], community="secret"), timeout=0.5) is None


def _served(pair):
    return [e.oid for e in pair["fast"].index.entries]


oid_arcs = st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_requests_are_identical(pair, data):
    served = _served(pair)
    oids = []
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        start = data.draw(st.sampled_from(served))
        cut = data.draw(st.integers(min_value=2, max_value=len(start)))
        oids.append(tuple(start[:cut]) + tuple(data.draw(oid_arcs)))
    kind = data.draw(st.sampled_from(["get", "next", "bulk"]))
    both(pair, request(kind, oids, request_id=data.draw(st.integers(min_value=-2 ** 31, max_value=2 ** 31 - 1)),
                       non_repeaters=data.draw(st.integers(min_value=0, max_value=5)),
                       max_repetitions=data.draw(st.integers(min_value=0, max_value=70))))


def test_ber_encoding_matches_pyasn1():
    """Our integer, OID and length encodings are pyasn1's for the edge cases."""
    from pysnmp.proto import rfc1902

    for n in (0, 1, 127, 128, 255, 256, -1, -127, -128, -129, -255, -256, 32767, -32768, 65535, 2 ** 31 - 1,
              -2 ** 31, -2 ** 31 + 1):
        assert ber.encode_value(ber.INTEGER, n) == encoder.encode(rfc1902.Integer32(n))
    for n in (0, 2 ** 31, 2 ** 32 - 1):
        assert ber.encode_value(ber.GAUGE32, n) == encoder.encode(rfc1902.Unsigned32(n))
        assert ber.encode_value(ber.COUNTER32, n) == encoder.encode(rfc1902.Counter32(n))
    for oid in ((0, 0), (1, 3, 6, 1), (2, 999, 3), (1, 3, 6, 1, 4, 1, 32473, 1, 6, 1, 3, 4, 256), (1, 3, 2 ** 32 - 1)):
        assert ber.encode_oid(oid) == encoder.encode(rfc1902.ObjectIdentifier(oid))
    for size in (0, 127, 128, 255, 256, 65535):
        assert ber.encode_value(ber.OCTETS, b"x" * size) == encoder.encode(rfc1902.OctetString(b"x" * size))


def test_parser_leaves_what_it_does_not_handle_to_pysnmp():
    get = request("get", [(1, 3, 6, 1, 2, 1, 1, 1, 0)])
    parsed = ber.parse_v2c_read(get)
    assert parsed is not None and parsed.oids == ((1, 3, 6, 1, 2, 1, 1, 1, 0),) and parsed.community == b"public"
    assert ber.parse_v2c_read(get[:-1]) is None  # truncated
    assert ber.parse_v2c_read(get + b"\x00") is None  # trailing bytes
    v1 = bytearray(get)
    v1[4] = 0  # version field: SNMPv1
    assert ber.parse_v2c_read(bytes(v1)) is None
    assert ber.parse_v2c_read(b"") is None and ber.parse_v2c_read(b"\x30\x80") is None


@settings(max_examples=150, deadline=None)
@given(dtype=st.sampled_from(["uint16", "int16", "uint32", "int32"]),
       scale=st.sampled_from([1.0, 0.1, 0.01, 0.001, 0.000001]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-2 ** 40, 2 ** 40)))
def test_the_hot_value_path_serves_the_register_integer(dtype, scale, value):
    """``gauge_fn`` (unrolled for speed) gives the Modbus codec's integer, and nothing when not available."""
    import math
    import time as _time

    from gateway.outputs.snmp.sections import gauge_fn, register_int
    from gateway.points import PointSpec, PointStore, Quality, Reading

    spec = PointSpec(id="cell.test", scope="cell", unit="V", description="", slot=0, dtype=dtype, scale=scale)
    store = PointStore()
    ref = PointRef("cell.test", 1, 1)
    fn = gauge_fn(store, ref, spec)
    assert fn() is None
    store.put_many([(ref, Reading(float(value), Quality.GOOD, _time.time()))])
    if not math.isfinite(float(value)):
        assert fn() is None
    else:
        assert fn()[1] == register_int(spec, store.get(ref))
    store.put_many([(ref, Reading(1.0, Quality.STALE, _time.time()))])
    assert fn() is None
