"""Auto-sensing: `bmsgw scan` finds and identifies every model on a bus and prints a config that
check-config accepts."""
import pytest
import yaml

from gateway.scan import parse_ids
from tests.coretools import bmsgw, offline_gateway
from tests.support import write_config

MIXED_BUS = {
    "buses": [{"name": "bus1", "port": "sim", "baud": 115200}],
    "strings": [
        {"id": 1, "cells": 4, "devices": [{"profile": "bm-smd", "bus": "bus1", "address": 1},
                                          {"profile": "bm-bcs-12", "bus": "bus1", "address": 2, "count": 4}]},
        {"id": 2, "cells": 3, "battery": {"nominal_voltage": 2},
         "devices": [{"profile": "btek-bmu-l", "bus": "bus1", "address": 6, "count": 3}]},
        {"id": 3, "cells": 8, "devices": [{"profile": "bm-smd-concentrator", "bus": "bus1", "address": 9}]},
    ],
    "bank": {"devices": [{"profile": "btek-cmu", "bus": "bus1", "address": 200},
                         {"profile": "bm-io", "bus": "bus1", "address": 201}]},
    "simulator": {"enabled": True, "wire_time": True},
}


def test_parse_ids():
    assert parse_ids("1-3,7, 200-201") == [1, 2, 3, 7, 200, 201]
    assert parse_ids("5,1-5") == [1, 2, 3, 4, 5]
    for bad, words in (("0-3", "within 1-247"), ("1-248", "within 1-247"), ("5-2", "within"), ("a", "bad id"),
                       ("", "no ids")):
        with pytest.raises(ValueError, match=words):
            parse_ids(bad)


@pytest.fixture
def mixed_bus(tmp_path):
    gw = offline_gateway(write_config(tmp_path, base=MIXED_BUS, fast=False))
    sim = gw.make_simulator().start()
    try:
        yield sim.ports()["bus1"]
    finally:
        sim.stop()


def test_scan_finds_identifies_and_writes_a_config_that_check_config_accepts(tmp_path, mixed_bus):
    out = bmsgw("scan", "--port", mixed_bus, "--baud", "115200", "--ids", "1-10,200-201")
    assert out.returncode == 0, out.stderr
    assert "scanned 12/12 ids, found 11" in out.stderr, "progress goes to stderr"
    fragment = out.stdout
    assert fragment.startswith(f"# 11 device(s) found on {mixed_bus} at 115200 baud")
    data = yaml.safe_load(fragment)
    assert data["buses"] == [{"name": "bus1", "port": mixed_bus, "baud": 115200, "parity": "N"}]
    devices = [(d["address"], d["profile"], d.get("count")) for s in data["strings"] for d in s["devices"]]
    assert devices == [(1, "bm-smd", None), (2, "bm-bcs-12", 4), (6, "btek-bmu-l", 3), (9, "bm-smd-concentrator", None)]
    assert [(s["id"], s["cells"]) for s in data["strings"]] == [(1, 4), (2, 3), (3, 120)]
    assert data["strings"][1]["battery"] == {"nominal_voltage": 2}
    assert [(d["address"], d["profile"]) for d in data["bank"]["devices"]] == [(200, "btek-cmu"), (201, "bm-io")]
    assert "# BM-SMD, string, firmware 1.3" in fragment and "# B-TEK BMU-L, cell" in fragment
    path = tmp_path / "scanned.yaml"
    path.write_text(fragment)
    check = bmsgw("check-config", "--config", path)
    assert check.returncode == 0, check.stderr
    assert "valid: 3 strings, 127 batteries, 11 devices on 1 buses" in check.stdout


def test_scan_of_a_silent_bus_finds_nothing_and_says_so(tmp_path, mixed_bus):
    out = bmsgw("scan", "--port", mixed_bus, "--baud", "115200", "--ids", "100-102", "--timeout-ms", "30")
    assert out.returncode == 1
    assert out.stdout.startswith("# 0 device(s) found") and "found 0" in out.stderr
    path = tmp_path / "empty.yaml"
    path.write_text(out.stdout)
    assert bmsgw("check-config", "--config", path).returncode == 0


def test_scan_refuses_bad_ids_and_missing_ports():
    out = bmsgw("scan", "--port", "/dev/null", "--ids", "0-300")
    assert out.returncode == 2 and "within 1-247" in out.stderr
    out = bmsgw("scan", "--port", "/dev/does-not-exist", "--ids", "1")
    assert out.returncode == 2 and "cannot open /dev/does-not-exist" in out.stderr


SIX_VOLT_BMU = {
    "buses": [{"name": "bus1", "port": "sim", "baud": 115200}],
    "strings": [{"id": 1, "cells": 3, "battery": {"nominal_voltage": 6},
                 "devices": [{"profile": "btek-bmu-h", "bus": "bus1", "address": 2, "count": 3}]}],
    "simulator": {"enabled": True, "wire_time": False},
}


def test_scan_takes_the_battery_size_from_the_measured_voltage_not_the_profile(tmp_path):
    """A BMU-H serves 6 V and 12 V units and its profile says 12 V: pasted as it was, every 6 V unit would
    sit under the 12.78 V critical limit.  The scan reads each battery's voltage and proposes 6 V."""
    gw = offline_gateway(write_config(tmp_path, base=SIX_VOLT_BMU, fast=False))
    assert gw.profiles["btek-bmu-h"].nominal_voltage == 12
    sim = gw.make_simulator().start()
    try:
        out = bmsgw("scan", "--port", sim.ports()["bus1"], "--baud", "115200", "--ids", "1-5")
    finally:
        sim.stop()
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert data["strings"][0]["battery"] == {"nominal_voltage": 6}
    assert "from the batteries' voltage, median 6." in out.stdout
    path = tmp_path / "scanned.yaml"
    path.write_text(out.stdout)
    check = bmsgw("check-config", "--config", path)
    assert check.returncode == 0, check.stderr


def test_a_scan_beside_the_polls_leaves_the_bus_counters_to_the_polls(tmp_path, mixed_bus):
    """The gateway's discovery and lost-device search scan without counting (silence from ids nobody uses is not
    a fault); the polls that go on meanwhile are counted, their timeouts too."""
    import asyncio

    from gateway.modbus.rtu import READ_INPUT, read_request
    from gateway.modbus.transport import RtuTransport
    from gateway.scan import scan_bus
    from gateway.topology import BusConfig

    profiles = offline_gateway(write_config(tmp_path, base=MIXED_BUS, fast=False)).profiles
    tr = RtuTransport(BusConfig("bus1", mixed_bus, baud=115200, timeout_ms=50))
    tr.open()
    order: list[str] = []

    async def polls() -> list:
        got = []
        for n in range(12):
            unit = 30 if n == 5 else 1  # (nobody at 30: one timeout)
            try:
                got.append(await tr.transact(read_request(unit, READ_INPUT, 0, 2)))
            except Exception as exc:  # (what the poll got is what the test looks at)
                got.append(exc)
            order.append("poll")
        return got

    async def scan() -> list:
        found = await scan_bus(tr, profiles, list(range(40, 46)), counted=False,
                               progress=lambda n, total, found: order.append("scan"))
        return found

    async def both():
        return await asyncio.gather(polls(), scan())

    try:
        got, found = asyncio.run(both())
    finally:
        tr.close()
    assert found == [], "nobody answers at 40-45"
    assert sum(isinstance(g, list) for g in got) == 11 and type(got[5]).__name__ == "NoReply"
    first_scan, last_scan = order.index("scan"), len(order) - 1 - order[::-1].index("scan")
    assert "poll" in order[first_scan:last_scan], f"the scan and the polls took turns on the bus: {order}"
    c = tr.counters
    assert (c.requests, c.timeouts, c.crc_errors, c.exceptions) == (12, 1, 0, 0), c
    assert c.bytes_out == 8 * (12 + 6), "bytes are counted either way: the line was busy (one request per silent id)"
