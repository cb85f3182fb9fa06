"""The BACnet/IP face, tested with bacpypes3's own client (the library's Application, not an encoder of ours):
discovery, the object list, ReadPropertyMultiple against the store, COV, status-flags, alarm event reporting,
writes through Gateway.write, the bounds, reload, the stable instance numbers and the EDE export."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import subprocess
import threading

import pytest
import yaml
from bacpypes3.apdu import AbortPDU, ErrorRejectAbortNack
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from gateway.app import Gateway
from gateway.outputs.bacnet.face import BacnetService
from gateway.outputs.bacnet.objects import object_instance, plan_objects
from gateway.outputs.web.data import BankView
from gateway.points import PointRef
from gateway.service import StartError
from tests.conftest import DEFAULT_CONFIG, ROOT
from tests.support import GatewayThread, small_bank, write_config

from .client import BacnetClient, free_udp_port

GOLDEN = ROOT / "tests" / "golden" / "bacnet_instances.json"
DEVICE = 1001
OFF = {"web": {"enabled": False}, "modbus_tcp": {"enabled": False}, "snmp": {"enabled": False},
       "prometheus": {"enabled": False}}


def bacnet_config(tmp_path, port: int, bacnet: dict | None = None, base: dict | None = None, **over):
    section = {"enabled": True, "address": "127.0.0.1/8", "port": port, **(bacnet or {})}
    return write_config(tmp_path, {**OFF, "bacnet": section, **over}, base=base if base is not None else
                        small_bank(2, 8))


def values(results) -> dict:
    """(objid, property) -> value of a ReadPropertyMultiple result list."""
    return {(str(oid), str(prop)): val for oid, prop, _index, val in results}


@pytest.fixture(scope="module")
def still(tmp_path_factory):
    """2 strings x 8 batteries, every value read once, then polling stopped so that the store holds still."""
    port = free_udp_port()
    gt = GatewayThread(bacnet_config(tmp_path_factory.mktemp("bacnet"), port, {"max_request_values": 500}))
    gt.start()
    gt.wait_for(lambda: gt.count_good("cell.ohmic") == 16, what="ohmic values")
    gt.wait_for(lambda: gt.gateway.store.get(PointRef("string.state", 1)) is not None, what="string state")
    gt.call(gt.gateway.engine.stop())
    with BacnetClient() as client:
        yield gt, port, client
    gt.stop()


# -- discovery and reading ------------------------------------------------------------------------------------
def test_who_is_broadcast_finds_the_device(still):
    gt, port, client = still
    answers = client.who_is(port, DEVICE)
    assert len(answers) == 1
    i_am = answers[0]
    assert i_am.iAmDeviceIdentifier[1] == DEVICE and i_am.vendorID == 999
    assert i_am.maxAPDULengthAccepted == 1476 and str(i_am.segmentationSupported) == "segmented-transmit"
    assert i_am.pduSource == Address(f"127.0.0.1:{port}")
    # a Who-Is for another instance is not answered
    assert client.who_is(port, DEVICE + 1, timeout=1) == []


def test_object_list_is_every_planned_object(still):
    gt, port, client = still
    object_list = client.read(port, f"device,{DEVICE}", "object-list")
    served = {(str(o[0]), o[1]) for o in object_list}
    planned = {(p.type, p.instance) for p in plan_objects(gt.gateway.pointmap, gt.gateway.config.section("bacnet"))}
    assert planned <= served
    assert served - planned == {("device", DEVICE), ("network-port", 1), ("notification-class", 1)}
    # 2 strings x 8 batteries x 3 + 2 x (8 analog + state + 2 alarms) + bank (4 analog, 4 DI, relay, 2 alarms)
    assert len(planned) == 48 + 22 + 11
    assert client.read(port, f"device,{DEVICE}", "object-list[0]") == len(object_list)


def test_every_string_object_read_with_rpm_matches_the_rest_api(still):
    """ReadPropertyMultiple of every object of each string (and of its batteries) against what the REST API serves
    for them (``GET /api/v1/strings/<s>`` and ``.../cells/<c>`` are ``BankView.string`` / ``BankView.cell``)."""
    gt, port, client = still
    gw = gt.gateway
    rest = BankView(gw)
    plans = plan_objects(gw.pointmap, gw.config.section("bacnet"))
    for string in (1, 2):
        mine = [p for p in plans if p.ref.string == string]
        assert len(mine) == 8 * 3 + 11
        results = values(client.rpm(port, [(f"{p.type},{p.instance}", ["present-value", "status-flags",
                                                                         "object-name", "description"])
                                           for p in mine]))
        for p in mine:
            oid = f"{p.type},{p.instance}"
            where = rest.cell(string, p.ref.cell) if p.ref.cell is not None else rest.string(string)
            served = where["points"][p.spec.name]
            assert served["quality"] == "GOOD", (p.name, served)
            value = results[(oid, "present-value")]
            unknown = served["value"] is None  # not computed yet (SOH before a baseline): 0 with the fault flag
            assert list(results[(oid, "status-flags")]) == [0, int(unknown), 0, 0], p.name
            assert results[(oid, "object-name")] == p.name and results[(oid, "description")] == p.description
            if unknown:
                continue
            if p.type == "analog-input":  # REST rounds to the point's resolution; BACnet's REAL is a float32
                assert value == pytest.approx(served["value"], abs=p.spec.scale / 2 + 1e-6, rel=1e-6), (p.name, served)
            elif p.type == "multi-state-input":
                assert p.state_values[value - 1] == served["value"], p.name
                assert p.state_texts[value - 1] == served["state"], p.name
            elif p.alarm_at is not None:
                assert (str(value) == "active") == (served["value"] >= p.alarm_at), p.name
            else:
                assert (str(value) == "active") == bool(served["value"]), p.name


def test_rpm_all_of_a_battery_voltage_and_the_string_state(still):
    gt, port, client = still
    voltage = object_instance(gt.gateway.catalog["cell.voltage"], PointRef("cell.voltage", 2, 3))
    state = object_instance(gt.gateway.catalog["string.state"], PointRef("string.state", 1))
    assert (voltage, state) == (2_000_003, 1_100_580)
    got = values(client.rpm(port, [(f"analog-input,{voltage}", ["all"]), (f"multi-state-input,{state}", ["all"])]))
    ai = f"analog-input,{voltage}"
    assert str(got[(ai, "units")]) == "volts" and got[(ai, "cov-increment")] == pytest.approx(0.02)
    assert got[(ai, "object-name")] == "String 2 battery 3 voltage"
    assert str(got[(ai, "reliability")]) == "no-fault-detected" and got[(ai, "out-of-service")] == 0
    assert got[(ai, "present-value")] == pytest.approx(gt.gateway.store.get(PointRef("cell.voltage", 2, 3)).value)
    listed = {str(p) for p in client.read(port, ai, "property-list")}
    assert {"present-value", "status-flags", "units", "cov-increment", "reliability"} <= listed
    assert "object-name" not in listed and "min-pres-value" not in listed  # Clause 12.1.1.4.1; no range here
    msi = f"multi-state-input,{state}"
    assert list(got[(msi, "state-text")]) == ["unknown", "float", "charging", "discharging", "rest"]
    assert got[(msi, "number-of-states")] == 5


def test_errors_for_what_is_not_there(still):
    gt, port, client = still
    missing = client.read(port, "analog-input,7", "present-value")
    assert isinstance(missing, ErrorRejectAbortNack) and "unknown-object" in str(missing)
    no_prop = client.read(port, "analog-input,1000001", "priority-array")
    assert isinstance(no_prop, ErrorRejectAbortNack) and "unknown-property" in str(no_prop)
    # `all` of an object that is not there, beside one that is: an unknown-object error for that object only
    mixed = client.rpm(port, [("analog-input,7", ["all"]), (f"device,{DEVICE}", ["object-name"])])
    assert [(str(o), str(p)) for o, p, _i, _v in mixed] == [("analog-input,7", "object-identifier"),
                                                          (f"device,{DEVICE}", "object-name")]
    assert str(mixed[0][3].errorCode) == "unknown-object" and mixed[1][3] == "bmsgw-site"
    # more values than max_request_values (500 here) in one ReadPropertyMultiple: aborted
    every = [x for i in range(1, 41) for x in (f"analog-input,{1_000_000 + i % 8 + 1}", ["all"])]
    too_many = client.run(client.app.read_property_multiple(Address(f"127.0.0.1:{port}"), every))
    assert isinstance(too_many, AbortPDU) and "apdu-too-long" in str(too_many)
    assert gt.gateway.service("bacnet").status()["refused_large"] >= 1
    # a request longer than one APDU would have to come in segments, which the device does not take
    longer = client.run(client.app.read_property_multiple(Address(f"127.0.0.1:{port}"), every * 5))
    assert isinstance(longer, AbortPDU) and "segmentation-not-supported" in str(longer)
    # and the device keeps answering
    assert client.read(port, f"device,{DEVICE}", "object-name") == "bmsgw-site"


def test_writes_are_refused_when_off(still):
    gt, port, client = still
    relay = object_instance(gt.gateway.catalog["io.do"], PointRef("io.do", channel=1))
    assert str(client.read(port, f"binary-input,{relay}", "present-value")) in ("active", "inactive")
    refused = client.write(port, f"binary-input,{relay}", "present-value", "active")
    assert isinstance(refused, ErrorRejectAbortNack) and "write-access-denied" in str(refused)
    renamed = client.write(port, f"device,{DEVICE}", "object-name", "taken over")
    assert isinstance(renamed, ErrorRejectAbortNack) and "write-access-denied" in str(renamed)
    assert client.read(port, f"device,{DEVICE}", "object-name") == "bmsgw-site"


# -- live values: COV, status-flags, alarms -------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Polling on (0.5 s); the alarm engine off, so that the test sets the alarm levels; a recipient for events."""
    port = free_udp_port()
    with BacnetClient(instance=4000002) as client:
        cfg = bacnet_config(tmp_path_factory.mktemp("bacnet-live"), port,
                            {"notifications": {"recipients": [{"address": client.address}]},
                             "writes": {"enabled": True, "allow_from": ["127.0.0.1"]}},
                            alarms={"enabled": False},
                            gateway={"poll": {"stale_after_cycles": 2, "lost_retry_s": 0.2}})
        with GatewayThread(cfg) as gt:
            yield gt, port, client


def test_cov_notification_when_a_string_starts_to_discharge(live):
    gt, port, client = live
    current = object_instance(gt.gateway.catalog["string.current"], PointRef("string.current", 1))
    seen: list = []
    discharging = threading.Event()

    async def watch():
        # the library's client matches notifications to the subscription by an ObjectIdentifier, not a string
        async with client.app.change_of_value(Address(f"127.0.0.1:{port}"),
                                              ObjectIdentifier(f"analog-input,{current}"), 7, False, 300) as sub:
            while True:
                prop, value = await asyncio.wait_for(sub.get_value(), 30)
                seen.append((str(prop), value, discharging.is_set()))
                if str(prop) == "present-value" and value < -20:
                    return

    watcher = asyncio.run_coroutine_threadsafe(watch(), client.loop)
    try:
        gt.wait_for(lambda: gt.gateway.service("bacnet").status()["cov_subscriptions"] == 1, what="the subscription")
        discharging.set()
        gt.gateway.simulator.model.set_mode(1, "discharge", 50.0)
        watcher.result(60)
    finally:
        gt.gateway.simulator.model.set_mode(1, "float")
        watcher.cancel()
    before = [v for p, v, after in seen if p == "present-value" and not after]
    assert all(v > -5 for v in before), f"float current before the discharge: {before}"
    assert seen[-1][0] == "present-value" and seen[-1][1] < -20 and seen[-1][2]
    assert gt.gateway.service("bacnet").status()["cov_pushes"] >= 1


def test_status_flags_fault_when_a_sensor_stops_answering(live):
    gt, port, client = live
    gw = gt.gateway
    voltage = f"analog-input,{object_instance(gw.catalog['cell.voltage'], PointRef('cell.voltage', 1, 3))}"
    assert list(client.read(port, voltage, "status-flags")) == [0, 0, 0, 0]
    gw.simulator.set_fault("bus1", 4, "no_answer")  # battery 3 of string 1 sits at address 4
    try:
        gt.wait_for(lambda: list(client.read(port, voltage, "status-flags")) == [0, 1, 0, 0], what="fault flag")
        assert str(client.read(port, voltage, "reliability")) == "communication-failure"
    finally:
        gw.simulator.set_fault("bus1", 4, "none")
    gt.wait_for(lambda: list(client.read(port, voltage, "status-flags")) == [0, 0, 0, 0], what="recovery")
    assert str(client.read(port, voltage, "reliability")) == "no-fault-detected"


def test_alarm_binary_inputs_report_events_to_the_recipient(live):
    gt, port, client = live
    gw = gt.gateway
    level = PointRef("string.alarm_level", 2)
    spec = gw.catalog["string.alarm_level"]
    warning, critical = object_instance(spec, level, 1), object_instance(spec, level, 2)
    client.app.events.clear()
    gw.loop.call_soon_threadsafe(gw.store.put, level, 2.0)
    gt.wait_for(lambda: len(client.app.events) >= 2, what="two to-offnormal event notifications")
    raised = {e.eventObjectIdentifier[1]: e for e in client.app.events}
    assert set(raised) == {warning, critical}
    assert all(str(e.toState) == "offnormal" and str(e.fromState) == "normal" for e in raised.values())
    assert str(client.read(port, f"binary-input,{critical}", "present-value")) == "active"
    assert list(client.read(port, f"binary-input,{critical}", "status-flags")) == [1, 0, 0, 0]
    client.app.events.clear()
    gw.loop.call_soon_threadsafe(gw.store.put, level, 1.0)
    gt.wait_for(lambda: len(client.app.events) >= 1, what="to-normal of the critical alarm")
    assert [(e.eventObjectIdentifier[1], str(e.toState)) for e in client.app.events] == [(critical, "normal")]
    assert str(client.read(port, f"binary-input,{warning}", "present-value")) == "active"


def test_the_relay_written_through_the_gateway(live):
    gt, port, client = live
    gw = gt.gateway
    relay = f"binary-output,{object_instance(gw.catalog['io.do'], PointRef('io.do', channel=1))}"
    assert client.write(port, relay, "present-value", "active", priority=8) is None
    gt.wait_for(lambda: gw.store.value(PointRef("io.do", channel=1)) == 1.0, what="the relay on")
    gt.wait_for(lambda: str(client.read(port, relay, "present-value")) == "active", what="the relay read back on")
    assert client.write(port, relay, "present-value", "inactive", priority=8) is None
    gt.wait_for(lambda: gw.store.value(PointRef("io.do", channel=1)) == 0.0, what="the relay off")
    assert gw.service("bacnet").status()["writes"] == 2
    wrong = client.write(port, relay, "out-of-service", True)
    assert isinstance(wrong, ErrorRejectAbortNack) and "write-access-denied" in str(wrong)


def test_a_writer_outside_allow_from_is_refused(tmp_path):
    port = free_udp_port()
    cfg = bacnet_config(tmp_path, port, {"writes": {"enabled": True, "allow_from": ["10.9.9.9"]}},
                        base=small_bank(1, 2))
    with GatewayThread(cfg) as gt, BacnetClient() as client:
        relay = f"binary-output,{object_instance(gt.gateway.catalog['io.do'], PointRef('io.do', channel=1))}"
        refused = client.write(port, relay, "present-value", "active")
        assert isinstance(refused, ErrorRejectAbortNack) and "write-access-denied" in str(refused)
        assert gt.gateway.service("bacnet").status()["refused_writes"] == 1


# -- life cycle -------------------------------------------------------------------------------------------------
def test_off_by_default_and_in_the_repository_config():
    gw = Gateway(DEFAULT_CONFIG, simulator=False, port_overrides={f"bus{i}": "x" for i in range(1, 5)})
    assert gw.config.section("bacnet")["enabled"] is False
    assert not [s for r in gw.pm.hook.bmsgw_services(gateway=gw) for s in r if isinstance(s, BacnetService)]
    assert "bacnet" not in (yaml.safe_load(DEFAULT_CONFIG.read_text()) or {})  # shown commented out only
    assert "# bacnet:" in DEFAULT_CONFIG.read_text()


def test_a_busy_port_stops_start_up_with_the_address(tmp_path):
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        gw = Gateway(bacnet_config(tmp_path, port, base=small_bank(1, 2)), simulator=False,
                     port_overrides={"bus1": "x"})
        svc = BacnetService(gw, gw.config.section("bacnet"))
        with pytest.raises(StartError, match=rf"bacnet\.address: cannot listen on 127\.0\.0\.1:{port} \(udp\)"):
            asyncio.run(svc.start())


def test_check_config_names_the_bad_keys(tmp_path, venv_bin, bmsgw_env):
    cfg = bacnet_config(tmp_path, 47808, {"address": "0.0.0.0/0", "objects": {"strings": ["cell.voltage"]},
                                          "cov_increments": {"furlongs": 2}}, base=small_bank(1, 2))
    proc = subprocess.run([str(venv_bin / "bmsgw"), "check-config", "--config", str(cfg)], capture_output=True,
                          text=True, env=bmsgw_env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for key in ("bacnet.address", "bacnet.objects.strings[0]", "bacnet.cov_increments.furlongs"):
        assert key in proc.stderr + proc.stdout


def test_reload_applies_identity_live_and_rebuilds_for_new_objects(tmp_path):
    port = free_udp_port()
    path = bacnet_config(tmp_path, port, base=small_bank(1, 4))
    with GatewayThread(path) as gt, BacnetClient() as client:
        gw = gt.gateway
        data = yaml.safe_load(path.read_text())
        data["bacnet"]["device"] = {"name": "battery room east", "location": "Building 2, room 014"}
        path.write_text(yaml.safe_dump(data))
        report = gt.call(gw.reload_file())
        assert report is not None and not report.failed and not report.restart_required, report
        assert client.read(port, f"device,{DEVICE}", "object-name") == "battery room east"
        assert client.read(port, f"device,{DEVICE}", "location") == "Building 2, room 014"
        before = len(client.read(port, f"device,{DEVICE}", "object-list"))
        data["bacnet"]["objects"] = {"batteries": False}
        path.write_text(yaml.safe_dump(data))
        report = gt.call(gw.reload_file())
        assert report is not None and not report.failed and any("new device application" in n for n in report.notes)
        assert len(client.read(port, f"device,{DEVICE}", "object-list")) == before - 12
        assert client.read(port, f"device,{DEVICE}", "object-name") == "battery room east"
        data["bacnet"]["device"]["instance"] = DEVICE + 1
        path.write_text(yaml.safe_dump(data))
        report = gt.call(gw.reload_file())
        assert report is not None and not report.failed and any("new device application" in n for n in report.notes)
        assert client.read(port, f"device,{DEVICE + 1}", "object-name") == "battery room east"
        assert client.who_is(port, DEVICE + 1) and client.who_is(port, DEVICE, timeout=1) == []
        data["bacnet"]["enabled"] = False
        path.write_text(yaml.safe_dump(data))
        gt.call(gw.reload_file())
        assert client.who_is(port, DEVICE + 1, timeout=1) == []


def test_the_default_bank_is_served_whole(tmp_path):
    """The repository's bank, 4 strings x 120 batteries: 1,498 objects listed; the objects of battery 120 of
    string 4 read with ReadPropertyMultiple (one with a value, the others not read yet: communication-failure)."""
    port = free_udp_port()
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["bacnet"] = {"enabled": True, "address": "127.0.0.1/8", "port": port}
    data["gateway"] = {**data.get("gateway", {}), "state_dir": str(tmp_path / "var")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = Gateway(path, simulator=False, port_overrides={f"bus{i}": "x" for i in range(1, 5)})
    svc = BacnetService(gw, gw.config.section("bacnet"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    voltage = PointRef("cell.voltage", 4, 120)

    async def start():
        await svc.start()
        gw.store.put(voltage, 2.25)

    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        with BacnetClient() as client:
            assert client.read(port, f"device,{DEVICE}", "object-list[0]") == 1498
            assert len(client.read(port, f"device,{DEVICE}", "object-list")) == 1498
            catalog = gw.catalog
            oids = [f"analog-input,{object_instance(catalog[f], PointRef(f, 4, 120))}"
                    for f in ("cell.voltage", "cell.temperature", "cell.ohmic")]
            assert oids[0] == "analog-input,4000120"
            got = values(client.rpm(port, [(oid, ["object-name", "present-value", "reliability"]) for oid in oids]))
            assert got[(oids[0], "object-name")] == "String 4 battery 120 voltage"
            assert got[(oids[0], "present-value")] == pytest.approx(2.25)
            assert str(got[(oids[0], "reliability")]) == "no-fault-detected"
            assert str(got[(oids[2], "reliability")]) == "communication-failure"
    finally:
        asyncio.run_coroutine_threadsafe(svc.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- stable numbers and the EDE file -------------------------------------------------------------------------
def default_plans():
    gw = Gateway(DEFAULT_CONFIG, simulator=False, port_overrides={f"bus{i}": "x" for i in range(1, 5)})
    cfg = {**gw.config.section("bacnet"), "enabled": True}
    return gw, plan_objects(gw.pointmap, cfg)


def test_default_config_instances_never_move():
    """Every object of the golden file (the default config) keeps its type and instance number."""
    golden = json.loads(GOLDEN.read_text())
    _gw, plans = default_plans()
    by_key = {(p.type, p.instance): p for p in plans}
    for g in golden["objects"]:
        p = by_key.get((g["type"], g["instance"]))
        assert p is not None, f"no {g['type']} {g['instance']} any more (was {g['point']})"
        assert (p.ref.point, p.ref.keys(), p.alarm_at) == (g["point"], g.get("keys", {}), g.get("alarm_at")), g
    assert golden["count"] == len(plans) == 1495  # 1,440 battery objects, 44 string and 11 bank objects


def test_adding_a_string_or_a_family_renumbers_nothing(tmp_path):
    _gw, plans = default_plans()
    before = {(p.type, p.instance): p.ref for p in plans}
    bigger = yaml.safe_load(DEFAULT_CONFIG.read_text())
    bigger["strings"] = bigger["strings"][:3]  # one string fewer ...
    gw = Gateway(write_config(tmp_path, {"bacnet": {"objects": {"battery_points": ["cell.voltage", "cell.soc",
                                                                                   "cell.temperature",
                                                                                   "cell.ohmic"]}}},
                              base=bigger), simulator=False, port_overrides={f"bus{i}": "x" for i in range(1, 5)})
    after = {(p.type, p.instance): p.ref for p in plan_objects(gw.pointmap, gw.config.section("bacnet"))}
    # ... and a battery family more: what both have is numbered alike
    common = set(before) & set(after)
    assert len(common) > 1000 and all(before[k] == after[k] for k in common)


def test_ede_export_lists_every_object(tmp_path, venv_bin, bmsgw_env):
    out = tmp_path / "room_EDE.csv"
    proc = subprocess.run([str(venv_bin / "bmsgw"), "bacnet", "ede", "--config", str(DEFAULT_CONFIG), "-o", str(out)],
                          capture_output=True, text=True, env=bmsgw_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "#Engineering-Data-Exchange - B.I.G.-EU" and "VERSION_OF_LAYOUT;2.3" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("# keyname"))
    rows = list(csv.reader(io.StringIO("\n".join(lines[header + 1:])), delimiter=";"))
    assert all(len(r) == 16 for r in rows)
    assert len(rows) == 1495 + 3
    by_key = {r[0]: r for r in rows}
    voltage = by_key["AI:1000001"]
    assert voltage[1:6] == ["1001", "String 1 battery 1 voltage", "0", "1000001", "Battery terminal voltage"]
    assert voltage[14] == "5" and voltage[10] == "Y" and voltage[15] == "10000"  # volts; Modbus register
    state = by_key["MSI:1100580"]
    texts = {r[0]: r[1:] for r in csv.reader(io.StringIO((tmp_path / "room_StateTexts.csv").read_text()),
                                             delimiter=";") if not r[0].startswith("#")}
    assert state[3] == "13" and texts[state[13]] == ["unknown", "float", "charging", "discharging", "rest"]
    assert by_key["DEV:1001"][3] == "8"
