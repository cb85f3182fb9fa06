"""Fuzzing the BACnet/IP face over UDP: the gateway's device on 127.0.0.1, fed mutated requests.

Seeds are what bacpypes3's own client really sends (caught on a socket of ours, no device behind it): Who-Is,
ReadProperty, ReadPropertyMultiple (`all`, and one long enough to come in segments), WriteProperty,
SubscribeCOV, and a ReadPropertyMultiple stretched past one APDU in a single datagram; plus confirmed services
the device does not execute.  The fuzzer flips bits, rewrites the BVLL length, the NPDU control octet, the PDU
type, the service choice and the tag octets, truncates, splices and sends plain garbage.  For every datagram:
every answer is a BACnet/IP packet the library decodes (an ack, an error, a reject or a server's abort), nothing
is logged as an error, and a ReadProperty right after is answered (no crash, no hang).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import pytest
from bacpypes3.apdu import (
    APDU,
    AbortPDU,
    APCISequence,
    ComplexAckPDU,
    ConfirmedRequestPDU,
    DeviceCommunicationControlRequest,
    ErrorPDU,
    IAmRequest,
    ReinitializeDeviceRequest,
    RejectPDU,
    SimpleAckPDU,
    SubscribeCOVRequest,
    UnconfirmedRequestPDU,
    WhoIsRequest,
)
from bacpypes3.ipv4.bvll import LPCI, Result, pdu_types
from bacpypes3.npdu import NPDU
from bacpypes3.pdu import PDU, Address
from bacpypes3.primitivedata import ObjectIdentifier
from hypothesis import given, strategies as st

from gateway.outputs.bacnet.tests.client import BacnetClient, free_udp_port
from tests.fuzz.cases import fuzz_settings, ran
from tests.fuzz.netcheck import ErrorLog, Footprint, answer_after_flood, datagrams, exchange, flood, mutated
from tests.support import GatewayThread, small_bank, write_config

DEVICE = 1001
APDU_AT = 6  # BVLL header (4 octets), NPDU version and control (2), then the APDU
OFF = {"web": {"enabled": False}, "modbus_tcp": {"enabled": False}, "snmp": {"enabled": False},
       "prometheus": {"enabled": False}}


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-bacnet")
    port = free_udp_port()
    path = write_config(tmp, {**OFF, "bacnet": {"enabled": True, "address": "127.0.0.1/8", "port": port,
                                                "writes": {"enabled": True, "allow_from": ["10.0.0.1"]}}},
                        base=small_bank(1, 4))
    with ErrorLog() as errors, GatewayThread(path) as gt:
        gt.wait_for(lambda: gt.count_good("cell.voltage") == 4, what="the first poll")
        gt.call(gt.gateway.engine.stop())
        seeds = captured_seeds()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        try:
            yield {"gt": gt, "port": port, "sock": sock, "errors": errors, "seed": seeds,
                   "seeds": list(seeds.values()), "probe": seeds["read"],
                   "footprint": Footprint.now()}
        finally:
            sock.close()


def captured_seeds() -> dict[str, bytes]:
    """What bacpypes3's client sends (to a socket of ours that never answers), by what it asks.  A socket for
    each request, so that the client's retries of one are never taken for the next."""
    out: dict[str, bytes] = {}
    ai, bo = "analog-input,1000001", "binary-output,100510"
    many = [x for i in range(1, 400) for x in (f"analog-input,{1_000_000 + i}", ["all"])]
    requests = {
        "read": lambda app, to: app.read_property(to, f"device,{DEVICE}", "object-name"),
        "read_index": lambda app, to: app.read_property(to, f"device,{DEVICE}", "object-list", 3),
        "rpm": lambda app, to: app.read_property_multiple(to, [ai, ["present-value", "status-flags"],
                                                               f"device,{DEVICE}", ["all"]]),
        "rpm_segmented": lambda app, to: app.read_property_multiple(to, many),  # past 1,476 octets: in segments
        "write_relay": lambda app, to: app.write_property(to, bo, "present-value", "active", priority=8),
        "write_name": lambda app, to: app.write_property(to, f"device,{DEVICE}", "object-name", "x" * 200),
        "subscribe": lambda app, to: app.request(SubscribeCOVRequest(
            subscriberProcessIdentifier=5, monitoredObjectIdentifier=ObjectIdentifier(ai),
            issueConfirmedNotifications=False, lifetime=60, destination=to)),
        "dcc": lambda app, to: app.request(DeviceCommunicationControlRequest(enableDisable="disable",
                                                                             destination=to)),
        "reinitialize": lambda app, to: app.request(ReinitializeDeviceRequest(
            reinitializedStateOfDevice="coldstart", destination=to)),
        "who_is": lambda app, to: app.request(WhoIsRequest(destination=to, deviceInstanceRangeLowLimit=0,
                                                           deviceInstanceRangeHighLimit=4194303)),
    }

    async def send(make, app, to) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(make(app, to), 0.3)

    with BacnetClient(instance=4000009) as client:
        for label, make in requests.items():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trap:
                trap.bind(("127.0.0.1", 0))
                trap.settimeout(10)
                client.run(send(make, client.app, Address(f"127.0.0.1:{trap.getsockname()[1]}")))
                out[label] = trap.recvfrom(65535)[0]
    services = {"read": 12, "read_index": 12, "rpm": 14, "write_relay": 15, "write_name": 15, "subscribe": 5,
                "dcc": 17, "reinitialize": 20}
    assert {k: out[k][APDU_AT + 3] for k in services} == services
    assert out["rpm_segmented"][APDU_AT] & 0x08 and out["who_is"][APDU_AT:APDU_AT + 2] == b"\x10\x08"
    rpm = out["rpm"]
    stretched = bytearray(rpm + rpm[APDU_AT + 4:] * 100)  # one datagram, no segmentation, far past 1,476 octets
    stretched[2:4] = len(stretched).to_bytes(2, "big")
    out["rpm_stretched"] = bytes(stretched)
    for service in (7, 50, 99):  # AtomicReadFile with a ReadProperty's body; two services BACnet has not defined
        data = bytearray(out["read"])
        data[APDU_AT + 3] = service
        out[f"service_{service}"] = bytes(data)
    return out


# -- mutations (the generic ones in tests/fuzz/netcheck.py) ---------------------------------------------------
# tag octets: opening/closing, extended lengths, context tags, application tags
TAG_OCTETS = [0x00, 0x01, 0x05, 0x0C, 0x0E, 0x0F, 0x19, 0x1E, 0x1F, 0x25, 0x3E, 0x3F, 0x44, 0x55, 0x75, 0x7F, 0x80,
              0x81, 0xC4, 0xFD, 0xFE, 0xFF]


def bvll_length(draw, data: bytearray, pos: int) -> None:
    if len(data) >= 4:
        data[2:4] = draw(st.sampled_from([0, 1, 4, 5, 6, len(data) + 1, len(data) - 1, 0xFFFF])).to_bytes(2, "big")


def npdu(draw, data: bytearray, pos: int) -> None:
    """The network layer: version, control (destination, source, message)."""
    if len(data) > 5:
        data[draw(st.sampled_from([4, 5]))] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x04, 0x08, 0x20, 0x24, 0x28,
                                                                     0x80, 0x81, 0xFF]))


def pdu_type(draw, data: bytearray, pos: int) -> None:
    if len(data) > APDU_AT:
        data[APDU_AT] = draw(st.integers(0, 255))


def service(draw, data: bytearray, pos: int) -> None:
    if len(data) > APDU_AT + 3:
        data[APDU_AT + (3 if data[APDU_AT] >> 4 == 0 else 1)] = draw(st.integers(0, 255))


def bacnet_datagrams(seeds):
    own = {"bvll_length": bvll_length, "npdu": npdu, "pdu_type": pdu_type, "service": service}
    return datagrams(seeds, mutated(seeds, TAG_OCTETS, own),
                     st.binary(max_size=60).map(lambda b: b"\x81\x0a" + (len(b) + 4).to_bytes(2, "big") + b))


# -- checks --------------------------------------------------------------------------------------------------
def decode(answer: bytes) -> Any:
    """An answer as the library decodes it (raises if it cannot): a BVLL result, a network-layer message, or
    an APDU."""
    pdu = PDU(answer)
    lpci = LPCI.decode(pdu)
    lpdu = pdu_types[lpci.bvlciFunction].decode(pdu)
    if isinstance(lpdu, Result):  # a BVLL NAK (e.g. to a broadcast-table request of a device that keeps none)
        return lpdu
    npdu = NPDU.decode(PDU(lpdu.pduData))
    if npdu.npduNetMessage is not None:
        return npdu
    return APDU.decode(PDU(npdu.pduData))


def check_answer(answer: bytes) -> Any:
    assert len(answer) <= 1476 + 4 + 2 + 40, len(answer)
    apdu = decode(answer)
    assert isinstance(apdu, (Result, NPDU, SimpleAckPDU, ComplexAckPDU, ErrorPDU, RejectPDU, AbortPDU,
                             UnconfirmedRequestPDU)), apdu
    if isinstance(apdu, AbortPDU):
        assert apdu.apduSrv, "an abort from the device must say it is the server's"
    return apdu


def with_invoke_id(probe: bytes, invoke_id: int) -> bytes:
    data = bytearray(probe)
    data[APDU_AT + 2] = invoke_id
    return bytes(data)


def answers_before_probe(device, data: bytes, invoke_id: int) -> list[bytes]:
    """Send ``data``, then a ReadProperty; the answers that came before the ReadProperty's."""

    def is_probe_answer(answer: bytes) -> bool:
        apdu = decode(answer)
        return isinstance(apdu, ComplexAckPDU) and apdu.apduInvokeID == invoke_id and apdu.apduService == 12

    return exchange(device["sock"], device["port"], data, with_invoke_id(device["probe"], invoke_id), is_probe_answer,
                    check_answer, "the device")


def test_the_seeds_get_the_answers_a_bacnet_device_gives(device):
    """Each request as the library's client sends it, answered as BACnet says: services the device does not
    execute and requests it cannot decode are rejected, a segmented request is aborted (the device takes none),
    a write from outside allow_from or to the device's name is an error."""
    answers = {label: answers_to(device, seed) for label, seed in device["seed"].items()}

    def only(label: str):
        assert len(answers[label]) == 1, (label, answers[label])
        return answers[label][0]

    for label in ("dcc", "reinitialize", "service_50", "service_99"):
        assert isinstance(only(label), RejectPDU) and str(only(label).apduAbortRejectReason) == "unrecognized-service"
    assert isinstance(only("service_7"), RejectPDU)
    assert isinstance(only("rpm_segmented"), AbortPDU)
    assert str(only("rpm_segmented").apduAbortRejectReason) == "segmentation-not-supported"
    assert isinstance(only("write_relay"), ErrorPDU) and isinstance(only("write_name"), ErrorPDU)
    i_am = APCISequence.decode(only("who_is"))
    assert isinstance(i_am, IAmRequest) and i_am.iAmDeviceIdentifier[1] == DEVICE
    # one datagram far longer than the 1,476 octets the device accepts: rejected
    assert isinstance(only("rpm_stretched"), RejectPDU)
    assert str(only("rpm_stretched").apduAbortRejectReason) == "buffer-overflow"
    for label in ("read", "read_index", "rpm", "subscribe"):
        assert isinstance(only(label), ComplexAckPDU if label != "subscribe" else SimpleAckPDU), label
    assert device["gt"].gateway.service("bacnet").status()["rejected"] >= 3


def answers_to(device, seed: bytes) -> list:
    """The answers to ``seed`` from a socket of its own: those that carry its invoke ID (an I-Am for a Who-Is).
    Every seed here is answered: wait for its answer (the stack may answer a later request first), then 0.3 s
    more for any second one."""
    confirmed = seed[APDU_AT] >> 4 == 0

    def mine(apdu) -> bool:
        if confirmed:
            return getattr(apdu, "apduInvokeID", None) == seed[APDU_AT + 2] and not (
                isinstance(apdu, ComplexAckPDU) and apdu.apduInvokeID == 77)
        return isinstance(apdu, UnconfirmedRequestPDU)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(seed, ("127.0.0.1", device["port"]))
        sock.sendto(with_invoke_id(device["probe"], 77), ("127.0.0.1", device["port"]))
        got: list = []
        probed, deadline, end = False, time.monotonic() + 30, None
        while True:
            now = time.monotonic()
            if end is None and probed and any(mine(a) for a in got):
                end = now + 0.3
            if end is not None and now >= end:
                break
            assert now < deadline, f"no answer to {seed.hex()} (probe answered: {probed}; got {got})"
            sock.settimeout(max(0.01, (end or deadline) - now))
            try:
                apdu = check_answer(sock.recvfrom(65535)[0])
            except TimeoutError:
                continue
            if isinstance(apdu, ComplexAckPDU) and apdu.apduInvokeID == 77:
                probed = True
            else:
                got.append(apdu)
    return [a for a in got if mine(a)]


@given(data=st.data())
@fuzz_settings(300)
def test_any_datagram_leaves_the_device_answering(device, data):
    datagram = data.draw(bacnet_datagrams(device["seeds"]), label="datagram")
    ran("bacnet.datagrams")
    errors_before = len(device["errors"].records)
    invoke_id = 200 + device.setdefault("n", 0) % 50
    device["n"] += 1
    answers_before_probe(device, datagram, invoke_id)
    assert not device["errors"].new_since(errors_before)


def test_a_flood_of_garbage_from_many_sockets_leaves_the_device_serving(device):
    """Eight senders, 500 datagrams each, as fast as they can: the device drops what it must and answers after."""
    flood(device["port"], device["seeds"])
    answer = answer_after_flood(device["port"], with_invoke_id(device["probe"], 7), "device")
    assert isinstance(check_answer(answer), ComplexAckPDU)


def test_after_the_fuzzing_a_real_client_reads_the_device(device):
    with BacnetClient(instance=4000010) as client:
        assert client.read(device["port"], f"device,{DEVICE}", "object-name") == "bmsgw-site"
        assert client.who_is(device["port"], DEVICE)
    status = device["gt"].gateway.service("bacnet").status()
    assert status["malformed"] > 0 and status["open_transactions"] < 64
    assert not device["errors"].records, [r.getMessage() for r in device["errors"].records]
    device["footprint"].assert_nothing_held(fd_slack=10)


def test_confirmed_request_pdu_is_what_the_probe_is(device):
    """The probe the fuzzer relies on is a confirmed ReadProperty the library decodes."""
    apdu = decode(device["probe"])
    assert isinstance(apdu, ConfirmedRequestPDU) and apdu.apduService == 12
