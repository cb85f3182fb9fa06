"""BACnet/IP ReadPropertyMultiple throughput: bmsgw's device against bacpypes3's own sample server, same run.

The gateway runs the default bank (4 strings x 120 batteries, 1,498 BACnet objects) on the simulator, polling
as usual, with the BACnet face on 127.0.0.1.  The reference is a server built the way bacpypes3's samples
build one (``SimpleArgumentParser`` + ``Application.from_args``, the library's local objects from
``bacpypes3.local``: every property held in the object), in a child process, serving the same objects as one
string of the gateway (120 x 3 battery analog-inputs, the string's analog-inputs, its state and alarm inputs),
same names, units and values.

One "string read" is ReadPropertyMultiple of present-value and status-flags of every object of string 1 (371
objects), in requests of 50 objects whose answers fit one unsegmented 1,476-octet APDU; the reference gets the
same requests.  The requests are encoded by bacpypes3's own client (caught once on a socket); the timed client
then sends those datagrams one at a time and waits for each answer (a light client, so the figures are the
servers'); in the warm-up the library decodes every answer and counts the values.  Each figure is the median
of interleaved runs (a busy machine slows both alike); the ratio is the median of the per-run ratios.  The
last line is the headline: the gateway's requests/s as a multiple of the library's.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bacpypes3.apdu import APDU, APCISequence
from bacpypes3.pdu import PDU, Address

from gateway.outputs.bacnet.objects import plan_objects
from gateway.outputs.bacnet.tests.client import BacnetClient, free_udp_port
from gateway.points import PointRef
from tests.support import GatewayThread, write_config

RUNS = 5
READS_PER_RUN = 5
OBJECTS_PER_REQUEST = 50  # the answer (~25 octets an object) fits one 1,476-octet APDU: no segmentation
APDU_AT = 6  # BVLL header (4 octets), NPDU version and control (2), then the APDU

REFERENCE_SERVER = r'''
import asyncio, json, sys
from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.local.analog import AnalogInputObject
from bacpypes3.local.binary import BinaryInputObject
from bacpypes3.local.multistate import MultiStateInputObject


async def main():
    args = SimpleArgumentParser().parse_args()
    app = Application.from_args(args)
    for o in json.loads(sys.stdin.readline()):
        common = dict(objectIdentifier=(o["type"], o["instance"]), objectName=o["name"], description=o["description"],
                      statusFlags=[0, 0, 0, 0], eventState="normal", outOfService=False)
        if o["type"] == "analog-input":
            obj = AnalogInputObject(presentValue=o["value"], units=o["units"], covIncrement=o["cov"], **common)
        elif o["type"] == "multi-state-input":
            obj = MultiStateInputObject(presentValue=o["value"], numberOfStates=len(o["texts"]), stateText=o["texts"],
                                        **common)
        else:
            obj = BinaryInputObject(presentValue="active" if o["value"] else "inactive", polarity="normal", **common)
        app.add_object(obj)
    print("ready", flush=True)
    await asyncio.Future()

asyncio.run(main())
'''


def string_objects(gw, string: int) -> list[dict]:
    """The objects of one string as the gateway plans them, with the values the store holds now."""
    out = []
    for p in plan_objects(gw.pointmap, gw.config.section("bacnet")):
        if p.ref.string != string:
            continue
        reading = gw.store.get(p.ref)
        value = reading.value if reading is not None and reading.value is not None else 0.0
        entry = {"type": p.type, "instance": p.instance, "name": p.name, "description": p.description}
        if p.type == "analog-input":
            entry.update(value=float(value), units=p.units, cov=p.cov_increment or 1.0)
        elif p.type == "multi-state-input":
            entry.update(value=p.state_values.index(int(value)) + 1 if int(value) in p.state_values else 1,
                         texts=list(p.state_texts))
        else:
            entry.update(value=int(value >= (p.alarm_at or 1)))
        out.append(entry)
    return out


def start_reference(objects: list[dict], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", REFERENCE_SERVER, "--address", f"127.0.0.1/8:{port}",
                             "--instance", "4000100", "--name", "bacpypes3-sample"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(objects) + "\n")
    proc.stdin.flush()
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("the reference server did not start")
    return proc


def encoded_requests(objects: list[dict]) -> list[bytes]:
    """The string read's requests as bacpypes3's client encodes them (sent to a socket of ours, caught)."""
    specs = [(f"{o['type']},{o['instance']}", ["present-value", "status-flags"]) for o in objects]
    chunks = [[x for objid, props in specs[i:i + OBJECTS_PER_REQUEST] for x in (objid, props)]
              for i in range(0, len(specs), OBJECTS_PER_REQUEST)]
    out = []
    with BacnetClient(instance=4000101) as client, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trap:
        trap.bind(("127.0.0.1", 0))
        to = Address(f"127.0.0.1:{trap.getsockname()[1]}")

        async def send(chunk) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.app.read_property_multiple(to, chunk), 0.2)

        for chunk in chunks:
            trap.settimeout(5)
            client.run(send(chunk))
            out.append(trap.recvfrom(65535)[0])
            trap.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                while True:  # the client's retries
                    trap.recvfrom(65535)
    return out


def exchange(sock: socket.socket, port: int, request: bytes, invoke_id: int) -> bytes:
    data = bytearray(request)
    data[APDU_AT + 2] = invoke_id
    sock.sendto(data, ("127.0.0.1", port))
    while True:
        answer = sock.recvfrom(65535)[0]
        if len(answer) > APDU_AT + 2 and answer[APDU_AT + 1] == invoke_id:
            if answer[APDU_AT] != 0x30:  # an unsegmented complex ack
                raise SystemExit(f"port {port}: not an unsegmented ComplexAck: {answer[:16].hex()}")
            return answer


def values_in(answer: bytes) -> int:
    """The values of a ReadPropertyMultiple-ACK, decoded by the library."""
    apdu = APCISequence.decode(APDU.decode(PDU(answer[APDU_AT:])))
    return sum(len(r.listOfResults) for r in apdu.listOfReadAccessResults)


def read_string(sock: socket.socket, port: int, requests: list[bytes]) -> list[bytes]:
    return [exchange(sock, port, request, i) for i, request in enumerate(requests)]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bmsgw-bacnet-bench-"))
    port, ref_port = free_udp_port(), free_udp_port()
    path = write_config(tmp, {"bacnet": {"enabled": True, "address": "127.0.0.1/8", "port": port},
                              "gateway": {"poll": {"fast_s": 5, "slow_s": 300}}})
    with GatewayThread(path) as gt:
        gw = gt.gateway
        gt.wait_for(lambda: gw.store.get(PointRef("string.state", 1)) is not None, what="string 1's state")
        served = gw.service("bacnet").status()["objects"]
        objects = string_objects(gw, 1)
        requests = encoded_requests(objects)
        reference = start_reference(objects, ref_port)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.settimeout(10)
                expected = 2 * len(objects)
                for where in (port, ref_port):  # warm-up; both answer every value (the library decodes them)
                    got = sum(values_in(a) for a in read_string(sock, where, requests))
                    if got != expected:
                        raise SystemExit(f"port {where}: {got} values, expected {expected}")
                rates: dict[str, list[float]] = {"gateway": [], "library": []}
                for _ in range(RUNS):
                    for label, where in (("gateway", port), ("library", ref_port)):
                        t0 = time.perf_counter()
                        for _ in range(READS_PER_RUN):
                            read_string(sock, where, requests)
                        rates[label].append(READS_PER_RUN * len(requests) / (time.perf_counter() - t0))
        finally:
            reference.terminate()
            reference.wait(10)
    med = {label: statistics.median(r) for label, r in rates.items()}
    ratio = statistics.median(a / b for a, b in zip(rates["gateway"], rates["library"], strict=True))
    print(f"default bank: {served} objects served; one string read = {len(objects)} objects x (present-value, "
          f"status-flags) in {len(requests)} ReadPropertyMultiple requests of <= {OBJECTS_PER_REQUEST} objects; "
          f"bacpypes3 {__import__('bacpypes3').__version__}; medians of {RUNS} interleaved runs of {READS_PER_RUN} "
          "string reads")
    for label, name in (("library", "bacpypes3 sample server (local objects)"), ("gateway", "bmsgw BACnet face")):
        print(f"{name:42} {med[label]:7.1f} requests/s  {med[label] * 2 * len(objects) / len(requests):8.0f} values/s")
    print(f"bacnet: bmsgw {med['gateway']:.1f} RPM requests/s = {ratio:.2f}x bacpypes3's own sample server "
          f"({med['library']:.1f} requests/s, {len(objects)} objects of one string, polling on)")


if __name__ == "__main__":
    main()
