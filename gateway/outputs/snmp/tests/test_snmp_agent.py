"""The SNMP agent against real net-snmp tools, on a gateway running the simulated bank.

One gateway (2 strings x 6 batteries) serves the module; polling is paused where a test compares numbers
so the store, the agent and the simulator can be read at the same moment.
"""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from gateway.hookspecs import AlarmEvent
from gateway.outputs.snmp.agent import SnmpAgent, SnmpStartError
from gateway.points import PointRef, Quality
from tests.snmp_support import MIB_ARGS, V3_USER, NetSnmp, TrapReceiver, free_udp_port, v2c, v3
from tests.support import GatewayThread, small_bank, write_config

STRINGS, CELLS = 2, 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snmp")
    port = free_udp_port()
    receiver = TrapReceiver(tmp).start()
    late_port = free_udp_port()
    cfg = {
        "snmp": {
            "listen": f"127.0.0.1:{port}", "v2c": {"community": "public"}, "v3_users": [V3_USER],
            "system": {"contact": "ops@example.org", "location": "Room B2"},
            "notifications": {"targets": [
                {"host": "127.0.0.1", "port": receiver.port, "version": "v2c", "community": "public"},
                {"host": "127.0.0.1", "port": receiver.port, "version": "v3", "user": "nms"},
                {"host": "127.0.0.1", "port": late_port, "version": "v3", "user": "nms", "timeout_s": 1,
                 "retries": 5},
            ]},
        },
        "gateway": {"poll": {"stale_after_cycles": 2, "lost_retry_s": 0.2}},
        # these tests announce alarms themselves; the alarm engine's own would change the counts
        "alarms": {"enabled": False},
        # the hall clamps' zero offset of a real bank: the floating bank must not look on battery
        "simulator": {"current_offset_a": -3.0},
    }
    path = write_config(tmp, cfg, base=small_bank(STRINGS, CELLS))
    gt = GatewayThread(path).start()
    try:
        yield {"gt": gt, "snmp": NetSnmp(port, tmp), "port": port, "tmp": tmp, "receiver": receiver,
               "late_port": late_port, "path": path}
    finally:
        gt.stop()
        receiver.stop()


def agent_of(gt) -> SnmpAgent:
    return gt.gateway.service('snmp').agent


def paused(gt):
    """Stop polling so store, agent and simulator agree while a test reads them."""
    class _Paused:
        def __enter__(self):
            gt.call(gt.gateway.engine.stop())
            return self

        def __exit__(self, *exc):
            gt.call(gt.gateway.engine.start())
    return _Paused()


def test_system_group_and_engine_identity(env):
    values = env["snmp"].get(v2c(), "SNMPv2-MIB::sysDescr.0", "SNMPv2-MIB::sysObjectID.0", "SNMPv2-MIB::sysContact.0",
                             "SNMPv2-MIB::sysLocation.0", "SNMPv2-MIB::sysName.0",
                             "SNMP-FRAMEWORK-MIB::snmpEngineBoots.0")
    assert "battery monitoring gateway" in values["sysDescr.0"]
    assert values["sysObjectID.0"] == "bmsgwMIB"
    assert values["sysContact.0"] == "ops@example.org" and values["sysLocation.0"] == "Room B2"
    assert values["snmpEngineBoots.0"] == "1"
    modules = env["snmp"].walk(v2c(), "SNMPv2-MIB::sysORDescr")
    assert any("UPS-MIB" in v for v in modules.values()) and any("ENTITY-SENSOR-MIB" in v for v in modules.values())


def test_cell_values_match_the_store_and_the_simulator(env):
    gt = env["gt"]
    gw = gt.gateway
    with paused(gt):
        table = env["snmp"].walk(v2c(), "BMSGW-MIB::bmsgwCellTable", opts="-OQsU")  # -OU: no units, -OQ values
        for s in range(1, STRINGS + 1):
            for c in range(1, CELLS + 1):
                volts = gw.store.value(PointRef("cell.voltage", s, c))
                temp = gw.store.value(PointRef("cell.temperature", s, c))
                assert float(table[f"bmsgwCellVoltage.{s}.{c}"]) == pytest.approx(volts, abs=0.0005)
                assert float(table[f"bmsgwCellTemperature.{s}.{c}"]) == pytest.approx(temp, abs=0.05)
                assert float(table[f"bmsgwCellVoltage.{s}.{c}"]) == pytest.approx(
                    gw.simulator.model.cell_voltage(s, c), rel=0.01)
                assert float(table[f"bmsgwCellOhmic.{s}.{c}"]) == pytest.approx(
                    gw.simulator.model.true_ohmic(s, c), rel=0.05)
                assert table[f"bmsgwCellCommStatus.{s}.{c}"] == "ok"
        strings = env["snmp"].walk(v2c(), "BMSGW-MIB::bmsgwStringTable", opts="-OQsU")
        assert float(strings["bmsgwStringVoltage.1"]) == pytest.approx(gw.simulator.model.string_voltage(1), rel=0.01)
        # values nobody computed (no analytics in this gateway) are absent, never a number
        assert not any(k.startswith("bmsgwCellSoh.") for k in table)


def test_ups_battery_group_and_entity_sensors(env):
    gt = env["gt"]
    gw = gt.gateway
    with paused(gt):
        ups = env["snmp"].get(v2c(), *(f"UPS-MIB::{n}.0" for n in (
            "upsBatteryStatus", "upsSecondsOnBattery", "upsEstimatedChargeRemaining", "upsBatteryVoltage",
            "upsBatteryCurrent", "upsBatteryTemperature")), opts="-OQsU")
        assert ups["upsBatteryStatus.0"] == "batteryNormal"
        assert ups["upsSecondsOnBattery.0"] == "0"  # a -3 A offset on a floating bank is not a discharge
        states = env["snmp"].walk(v2c(), "BMSGW-MIB::bmsgwStringState", opts="-OQsU")
        assert states == {f"bmsgwStringState.{s}": "float" for s in range(1, STRINGS + 1)}
        assert int(ups["upsEstimatedChargeRemaining.0"]) == round(gw.store.value(PointRef("string.sensor_soc", 1)))
        assert int(ups["upsBatteryVoltage.0"]) == round(gw.store.value(PointRef("bank.voltage")) * 10)
        assert int(ups["upsBatteryTemperature.0"]) == round(gw.store.value(PointRef("io.ambient_temperature")))

        names = env["snmp"].walk(v2c(), "ENTITY-MIB::entPhysicalName")
        index = {v: k.split(".")[-1] for k, v in names.items()}
        cell_temp = index["String 2 battery 3 temperature"]
        ambient = index["Ambient temperature (AI 1)"]
        sensors = env["snmp"].walk(v2c(), "ENTITY-SENSOR-MIB::entPhySensorTable", opts="-OQs")
        assert sensors[f"entPhySensorType.{cell_temp}"] == "celsius"
        assert sensors[f"entPhySensorOperStatus.{cell_temp}"] == "ok"
        precision = int(sensors[f"entPhySensorPrecision.{cell_temp}"])
        value = int(sensors[f"entPhySensorValue.{cell_temp}"]) / 10 ** precision
        assert value == pytest.approx(gw.store.value(PointRef("cell.temperature", 2, 3)), abs=0.05)
        assert sensors[f"entPhySensorType.{ambient}"] == "celsius"
        contained = env["snmp"].get(v2c(), f"ENTITY-MIB::entPhysicalContainedIn.{cell_temp}",
                                    f"ENTITY-MIB::entPhysicalClass.{cell_temp}")
        parent = contained[f"entPhysicalContainedIn.{cell_temp}"]
        assert contained[f"entPhysicalClass.{cell_temp}"] == "sensor"
        names = env["snmp"].get(v2c(), f"ENTITY-MIB::entPhysicalName.{parent}")
        assert names[f"entPhysicalName.{parent}"] == "String 2"


def test_v3_authpriv_reads_and_bulkwalks(env):
    gw = env["gt"].gateway
    values = env["snmp"].get(v3(), "SNMPv2-MIB::sysName.0", "BMSGW-MIB::bmsgwCellCommStatus.1.1")
    assert values["sysName.0"] == gw.config.section("site")["name"]
    assert values["bmsgwCellCommStatus.1.1"] == "ok"
    walk = env["snmp"].walk(v3(), "BMSGW-MIB::bmsgwCellVoltage")
    assert len(walk) == STRINGS * CELLS


def test_wrong_community_and_wrong_credentials_get_nothing_and_are_counted(env):
    snmp = env["snmp"]
    before = snmp.get(v2c(), "SNMPv2-MIB::snmpInBadCommunityNames.0")["snmpInBadCommunityNames.0"]
    proc = snmp.run("snmpget", v2c("private"), "-OQs", "SNMPv2-MIB::sysDescr.0", timeout=0.5, retries=0, check=False)
    assert proc.returncode != 0 and "Timeout" in proc.stderr and proc.stdout == ""
    after = snmp.get(v2c(), "SNMPv2-MIB::snmpInBadCommunityNames.0")["snmpInBadCommunityNames.0"]
    assert int(after) == int(before) + 1

    agent = agent_of(env["gt"])
    wrong_before = agent.counters()["usmStatsWrongDigests"]
    proc = snmp.run("snmpget", v3(auth_key="not-the-password"), "-OQs", "SNMPv2-MIB::sysDescr.0", timeout=0.5,
                    retries=0, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert agent.counters()["usmStatsWrongDigests"] == wrong_before + 1
    assert agent.status()["bad_credentials"] >= 1


def test_stale_values_read_as_not_available(env):
    gt = env["gt"]
    gw = gt.gateway
    ref = PointRef("cell.voltage", 1, 4)
    gw.simulator.set_fault("bus1", 5, "no_answer")  # string 1 cell 4 sits at address 5
    try:
        gt.wait_for(lambda: gw.store.get(ref).quality is not Quality.GOOD, timeout=20, what="stale")
        values = env["snmp"].get(v2c(), "BMSGW-MIB::bmsgwCellVoltage.1.4", "BMSGW-MIB::bmsgwCellVoltage.1.3")
        assert "No Such Instance" in values["bmsgwCellVoltage.1.4"]
        assert values["bmsgwCellVoltage.1.3"].endswith("V")
        walk = env["snmp"].walk(v2c(), "BMSGW-MIB::bmsgwCellVoltage")
        assert "bmsgwCellVoltage.1.4" not in walk and "bmsgwCellVoltage.1.5" in walk
        gt.wait_for(lambda: gw.store.get(ref).quality is Quality.COMM_FAIL, timeout=20, what="COMM_FAIL")
        status = env["snmp"].get(v2c(), "BMSGW-MIB::bmsgwCellCommStatus.1.4")
        assert status["bmsgwCellCommStatus.1.4"] == "lost"
        names = env["snmp"].walk(v2c(), "ENTITY-MIB::entPhysicalName")
        idx = next(k.split(".")[-1] for k, v in names.items() if v == "String 1 battery 4 voltage")
        sensor = env["snmp"].get(v2c(), f"ENTITY-SENSOR-MIB::entPhySensorOperStatus.{idx}",
                                 f"ENTITY-SENSOR-MIB::entPhySensorValue.{idx}")
        assert sensor[f"entPhySensorOperStatus.{idx}"] == "unavailable"
        assert sensor[f"entPhySensorValue.{idx}"] == "0"
    finally:
        gw.simulator.set_fault("bus1", 5, "none")
    gt.wait_for(lambda: gw.store.get(ref).quality is Quality.GOOD, timeout=20, what="recovery")
    assert env["snmp"].get(v2c(), "BMSGW-MIB::bmsgwCellVoltage.1.4")["bmsgwCellVoltage.1.4"].endswith("V")


def test_alarm_notifications_and_active_alarm_table(env):
    gt = env["gt"]
    gw = gt.gateway
    receiver = env["receiver"]
    already = len(receiver.notifications())
    raised = AlarmEvent(alarm_id="cell.ohmic.high/2/5", object="string 2 cell 5", point="cell.ohmic", value=0.00612,
                        threshold=0.0055, severity="critical", message="String 2 battery 5: ohmic value 6.1 mOhm",
                        active=True, ts=time.time(), unit="ohm", string=2, cell=5)
    gt.call(_hook(gw, raised))
    got = receiver.wait_for(already + 2)[already:]
    assert sorted(n["kind"] for n in got) == ["INFORM", "TRAP2"]
    for note in got:
        assert note["snmpTrapOID.0"] == "OID: BMSGW-MIB::bmsgwAlarmRaised"
        assert note["bmsgwAlarmId.1"] == "STRING: cell.ohmic.high/2/5"
        assert note["bmsgwAlarmObject.1"] == "STRING: string 2 cell 5"
        assert note["bmsgwAlarmMetric.1"] == "STRING: cell.ohmic"
        assert note["bmsgwAlarmValue.1"] == "STRING: 0.00612 ohm"
        assert note["bmsgwAlarmThreshold.1"] == "STRING: 0.0055 ohm"
        assert note["bmsgwAlarmSeverity.1"] == "INTEGER: critical(3)"
        assert note["bmsgwAlarmText.1"] == "STRING: String 2 battery 5: ohmic value 6.1 mOhm"
    assert {n["security"] for n in got} == {"SNMP v2c, community public", "SNMP v3, user nms, context"}

    table = env["snmp"].walk(v2c(), "BMSGW-MIB::bmsgwAlarms", opts="-OQs")
    assert table["bmsgwAlarmId.1"] == "cell.ohmic.high/2/5"
    assert table["bmsgwAlarmSeverity.1"] == "critical"
    assert table["bmsgwAlarmVariable.1"] == "bmsgwCellOhmic.2.5"
    assert table["bmsgwAlarmLastChanged.0"] != "0:0:00:00.00"

    cleared = AlarmEvent(**{**{f: getattr(raised, f) for f in raised.__dataclass_fields__},
                            "active": False, "value": 0.0052, "ts": time.time()})
    gt.call(_hook(gw, cleared))
    got = receiver.wait_for(already + 4)[already + 2:]
    assert sorted(n["kind"] for n in got) == ["INFORM", "TRAP2"]
    assert all(n["snmpTrapOID.0"] == "OID: BMSGW-MIB::bmsgwAlarmCleared" for n in got)
    assert all(n["bmsgwAlarmValue.1"] == "STRING: 0.0052 ohm" for n in got)
    time.sleep(0.5)
    assert len(receiver.notifications()) == already + 4  # one per target, no duplicates
    table = env["snmp"].walk(v2c(), "BMSGW-MIB::bmsgwAlarmTable", opts="-OQs")
    assert not any(name.startswith("bmsgwAlarm") and "." in name and not name.endswith("Table") for name in table)


def test_inform_is_retried_until_the_receiver_answers(env):
    """The third target's receiver is down when the alarm is raised; the inform's retries reach it."""
    gt = env["gt"]
    event = AlarmEvent(alarm_id="io.ambient_temperature.high", object="bank", point="io.ambient_temperature",
                       value=36.2, threshold=35.0, severity="warning",
                       message="Ambient temperature 36.2 C (alarm at 35 C)", active=True, ts=time.time())
    agent = agent_of(gt)
    acked = agent.sent["informs_acknowledged"]
    gt.call(_hook(gt.gateway, event))
    time.sleep(1.5)  # the first attempt (and maybe a retry) goes nowhere
    with TrapReceiver(env["tmp"], port=env["late_port"]) as late:
        gt.wait_for(lambda: any(varbind(n, "bmsgwAlarmId") == "STRING: io.ambient_temperature.high"
                                for n in late.notifications()), timeout=10, what="the retried inform")
        note = next(n for n in late.notifications()
                    if varbind(n, "bmsgwAlarmId") == "STRING: io.ambient_temperature.high")
    assert note["kind"] == "INFORM" and varbind(note, "bmsgwAlarmSeverity") == "INTEGER: warning(2)"
    # both informs of this alarm (the receiver that was up, and the late one) were acknowledged
    gt.wait_for(lambda: agent.sent["informs_acknowledged"] >= acked + 2, timeout=10, what="informs acknowledged")


def varbind(note: dict, name: str) -> str | None:
    return next((v for k, v in note.items() if k.startswith(name + ".")), None)


async def _hook(gw, event):
    gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=event)


def test_busy_port_is_reported_and_boots_persist(env, tmp_path):
    gt = env["gt"]
    gw = gt.gateway
    cfg = dict(gw.config.section("snmp"))
    cfg["listen"] = f"127.0.0.1:{env['port']}"  # the running agent holds it
    with pytest.raises(SnmpStartError, match="cannot bind"):
        gt.call(SnmpAgent(gw, cfg).start())
    # a second start on another port: same engine ID, boots + 1
    first = agent_of(gt)
    cfg["listen"] = f"127.0.0.1:{free_udp_port()}"
    again = SnmpAgent(gw, cfg)
    gt.call(again.start())
    try:
        assert again.engine_id == first.engine_id
        assert again.boots == first.boots + 1
        port = int(cfg["listen"].rsplit(":", 1)[1])
        boots = NetSnmp(port, env["tmp"]).get(v3(), "SNMP-FRAMEWORK-MIB::snmpEngineBoots.0")
        assert boots["snmpEngineBoots.0"] == str(first.boots + 1)
    finally:
        gt.call(again.stop())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # stop() let the port go


def test_snmpv1_is_not_answered(env):
    snmp = env["snmp"]
    before = int(snmp.get(v2c(), "SNMPv2-MIB::snmpInBadVersions.0")["snmpInBadVersions.0"])
    proc = snmp.run("snmpget", ["-v1", "-c", "public"], "-OQs", "SNMPv2-MIB::sysDescr.0", timeout=0.5, retries=0,
                    check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert int(snmp.get(v2c(), "SNMPv2-MIB::snmpInBadVersions.0")["snmpInBadVersions.0"]) == before + 1


def test_bmsgw_status_reports_the_agent(env):
    gw = env["gt"].gateway
    status = gw.status()["snmp"]
    assert status["listen"] == f"127.0.0.1:{env['port']}"
    assert status["instances"] > 0 and status["requests"] > 0


def test_config_errors_name_the_key(tmp_path):
    from gateway.app import Gateway
    from gateway.errors import ConfigError

    path = write_config(tmp_path, {"snmp": {"notifications": {"targets": [{"host": "127.0.0.1", "version": "v3",
                                                                          "user": "nobody"}]}}},
                        base=small_bank(1, 2))
    gw = Gateway(path)
    with pytest.raises(ConfigError, match=r"targets\[0\]\.user"):
        gw.check()
    bad = write_config(tmp_path, {"snmp": {"v3_users": [{"name": "x", "auth_key": "short", "priv_key": "12345678"}]}},
                       base=small_bank(1, 2))
    with pytest.raises(ConfigError, match="auth_key"):
        Gateway(bad)


def test_udp_port_answers_nothing_to_garbage(env):
    """Garbage, SNMPv1 and truncated packets get no answer and do not stop the agent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for junk in (b"", b"\x30\x03\x02\x01", b"\xff" * 50, bytes(range(256))):
            s.sendto(junk, ("127.0.0.1", env["port"]))
            with pytest.raises(socket.timeout):
                s.recvfrom(65535)
    assert env["snmp"].get(v2c(), "SNMPv2-MIB::sysUpTime.0")


def test_master_keys_from_bmsgw_snmp_key_replace_passphrases(env):
    """`bmsgw snmp-key` turns passphrases into master keys; a user configured with them answers managers that
    know only the passphrases (the config then holds no passphrase)."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "gateway", "snmp-key", "--auth", "sha512", "--priv", "aes128"],
                          input="long-auth-passphrase\nlong-priv-passphrase\n", capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    keys = yaml.safe_load(proc.stdout)
    assert keys["key_format"] == "master" and "long-auth" not in proc.stdout
    gt = env["gt"]
    port = free_udp_port()
    section = gt.gateway.config.section("snmp")
    cfg = {**section, "listen": f"127.0.0.1:{port}", "v2c": {**section["v2c"], "community": None},
           "v3_users": [{"name": "keyed", **keys}], "notifications": {"targets": []}}
    agent = SnmpAgent(gt.gateway, cfg)
    gt.call(agent.start())
    try:
        user = {"name": "keyed", "auth": "sha512", "auth_key": "long-auth-passphrase", "priv": "aes128",
                "priv_key": "long-priv-passphrase"}
        assert NetSnmp(port, env["tmp"]).get(v3(user), "SNMPv2-MIB::sysUpTime.0")
        proc = NetSnmp(port, env["tmp"]).run("snmpget", v2c(), "-OQs", "SNMPv2-MIB::sysUpTime.0", timeout=0.5,
                                             retries=0, check=False)
        assert proc.returncode != 0  # v2c is off on this agent
    finally:
        gt.call(agent.stop())


def test_alarm_storm_fills_the_table_once(env):
    """Hundreds of alarms at once (every battery of a string): the table is rebuilt once, when next read."""
    gt = env["gt"]
    port = free_udp_port()
    cfg = {**gt.gateway.config.section("snmp"), "listen": f"127.0.0.1:{port}", "notifications": {"targets": []}}
    agent = SnmpAgent(gt.gateway, cfg)
    gt.call(agent.start())
    try:
        events = [AlarmEvent(alarm_id=f"cell.voltage.low/1/{c}", object=f"string 1 cell {c}", point="cell.voltage",
                             value=11.9, threshold=12.78, severity="critical", message="low", active=True,
                             ts=time.time())
                  for c in range(1, 301)]

        async def storm(evs):
            for ev in evs:
                agent.alarm_event(ev)
        gt.call(storm(events))
        ids = NetSnmp(port, env["tmp"]).walk(v2c(), "BMSGW-MIB::bmsgwAlarmId")
        assert len(ids) == 300 and ids["bmsgwAlarmId.300"] == "cell.voltage.low/1/300"
        gt.call(storm([AlarmEvent(alarm_id=ev.alarm_id, object=ev.object, point=ev.point, value=12.9,
                                  threshold=ev.threshold, severity=ev.severity, message="ok", active=False,
                                  ts=time.time())
                       for ev in events[::2]]))
        ids = NetSnmp(port, env["tmp"]).walk(v2c(), "BMSGW-MIB::bmsgwAlarmId")
        assert len(ids) == 150 and "bmsgwAlarmId.1" not in ids and "bmsgwAlarmId.2" in ids
    finally:
        gt.call(agent.stop())


def test_on_battery_follows_the_string_state(env):
    """Mains lost: the string supervision classifies a discharge and the UPS-MIB says on battery; back on float,
    not any more.  (The last test of the module's gateway: its simulated string is put back on float by
    hand.)"""
    gt = env["gt"]
    model = gt.gateway.simulator.model
    store = gt.gateway.store
    model.set_mode(1, "discharge", 25.0)
    try:
        gt.wait_for(lambda: (store.value(PointRef("string.on_battery_time", 1)) or 0.0) >= 2.0, timeout=30,
                    what="on battery")
        ups = env["snmp"].get(v2c(), "UPS-MIB::upsSecondsOnBattery.0", "BMSGW-MIB::bmsgwStringState.1",
                              opts="-OQsU")
        assert int(ups["upsSecondsOnBattery.0"]) > 0 and ups["bmsgwStringState.1"] == "discharging"
    finally:
        with model.lock:
            model.strings[1].soc = 1.0
            model.set_mode(1, "float")
    gt.wait_for(lambda: env["snmp"].get(v2c(), "UPS-MIB::upsSecondsOnBattery.0", opts="-OQsU")
                ["upsSecondsOnBattery.0"] == "0", timeout=30, what="off battery")


def test_snmp_set_runs_commands_for_v3_users_whose_role_allows_it(tmp_path):
    """SET is off by default, never from a community, and for v3 users only as far as their role goes; a
    SET reaches the command through the gateway's one write path (the alarm shows who acknowledged it)."""
    port = free_udp_port()
    operator = {**V3_USER, "name": "ops", "role": "operator"}
    viewer = {**V3_USER, "name": "watcher"}  # role: viewer, the default
    cfg = {"snmp": {"listen": f"127.0.0.1:{port}", "v2c": {"community": "public"}, "v3_users": [operator, viewer],
                    "writes": {"enabled": True}},
           "alarms": {"rules": {"ambient_temperature": {"high": {"warning": 10.0, "critical": None},
                                                        "on_delay_s": 0}}}}
    path = write_config(tmp_path, cfg, base=small_bank(1, 2))
    snmp = NetSnmp(port, tmp_path)
    ack_all = "BMSGW-MIB::bmsgwGatewayAcknowledgeAlarms.0"

    def snmpset(auth, oid, value):
        return subprocess.run(["snmpset", *auth, *MIB_ARGS, "-t", "3", "-r", "1", snmp.target, oid, "i", str(value)],
                              capture_output=True, text=True, env=snmp.env, timeout=60)
    with GatewayThread(path, wait_points=None) as gt:
        gw = gt.gateway

        def ambient():
            return next((r for r in gw.pm.hook.bmsgw_alarms(gateway=gw, active=True, limit=50) or []
                         if r["point"] == "io.ambient_temperature"), None)

        gt.wait_for(lambda: ambient() is not None, what="the ambient alarm")
        assert snmp.get(v3(operator), ack_all) == {"bmsgwGatewayAcknowledgeAlarms.0": "idle"}  # reads 0
        for auth, why in ((v2c("public"), "a community"), (v3(viewer), "a viewer")):
            denied = snmpset(auth, ack_all, 1)
            assert denied.returncode != 0 and "Reason:" in denied.stderr, (why, denied.stderr)
            assert ambient()["acknowledged_by"] is None, why
        done = snmpset(v3(operator), ack_all, 1)
        assert done.returncode == 0, done.stderr
        gt.wait_for(lambda: ambient()["acknowledged_by"] == "ops", what="the SNMP acknowledgement")
        bad = snmpset(v3(operator), "BMSGW-MIB::bmsgwStringResetOhmicBaseline.1", 9)
        assert bad.returncode != 0 and "wrongValue" in bad.stderr  # string 1 has batteries 1 and 2
    cfg["snmp"]["writes"]["enabled"] = False  # the default: nobody may SET
    path = write_config(tmp_path, cfg, base=small_bank(1, 2))
    with GatewayThread(path, wait_points=None):
        off = snmpset(v3(operator), ack_all, 1)
        assert off.returncode != 0 and "Reason:" in off.stderr
