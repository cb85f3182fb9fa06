"""UPS-MIB (RFC 1628) for the bank, read with net-snmp's tools and with NUT's snmp-ups driver (a generic UPS-MIB
client this project did not write): ident, battery group, upsConfigLowBattTime set through the write path, the
alarm table with its notifications, on a gateway running the simulated bank (2 strings x 6 batteries)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import time

import pytest

from gateway import __version__
from gateway.hookspecs import AlarmEvent
from gateway.outputs.snmp import ber
from gateway.outputs.snmp.sections import AgentData
from gateway.outputs.snmp.upsmib import (
    LOW,
    NORMAL,
    ON_BATTERY,
    TEMP_BAD,
    TRAP_ALARM_ADDED,
    TRAP_ALARM_REMOVED,
    TRAP_ON_BATTERY,
    UPS_ALARM_ENTRY,
    UPS_WELL_KNOWN,
    LowBattTime,
    UpsAlarmRow,
    UpsAlarms,
)
from gateway.points import PointRef
from tests.snmp_support import MIB_ARGS, V3_USER, NetSnmp, TrapReceiver, free_udp_port, v2c, v3
from tests.support import GatewayThread, section_with_defaults, small_bank, write_config

STRINGS, CELLS = 2, 6
TYPICAL_LOAD_A = 20.0  # the bank's load on mains failure: 10 A per 100 Ah string
OPERATOR = {**V3_USER, "name": "ops", "role": "operator"}
VIEWER = {**V3_USER, "name": "watcher"}
LOW_BATT = "UPS-MIB::upsConfigLowBattTime.0"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upsmib")
    port = free_udp_port()
    receiver = TrapReceiver(tmp).start()
    cfg = {
        "snmp": {
            "listen": f"127.0.0.1:{port}", "v2c": {"community": "public"}, "v3_users": [OPERATOR, VIEWER],
            "writes": {"enabled": True},
            "ups": {"typical_load_a": TYPICAL_LOAD_A,
                    "ident": {"manufacturer": "Example Power Co", "attached_devices": "Rack A1-A4"}},
            "notifications": {"targets": [
                {"host": "127.0.0.1", "port": receiver.port, "version": "v2c", "community": "public"}]},
        },
        # these tests announce the alarm engine's alarms themselves
        "alarms": {"enabled": False},
        # the hall clamps' zero offset of a real bank: the floating bank must not look on battery
        "simulator": {"current_offset_a": -3.0},
    }
    path = write_config(tmp, cfg, base=small_bank(STRINGS, CELLS))
    gt = GatewayThread(path).start()
    try:
        snmp = NetSnmp(port, tmp)
        gt.wait_for(lambda: "upsEstimatedMinutesRemaining.0" in snmp.walk(v2c(), "UPS-MIB::upsBattery"),
                    timeout=30, what="a state of charge")
        yield {"gt": gt, "snmp": snmp, "port": port, "tmp": tmp, "receiver": receiver}
    finally:
        gt.stop()
        receiver.stop()


def ups(env, *names: str) -> dict[str, str]:
    return env["snmp"].get(v2c(), *(f"UPS-MIB::{n}" for n in names), opts="-OQsU")


def alarm_rows(env) -> dict[str, str]:
    """{upsAlarmDescr value: upsAlarmId} of the rows now."""
    table = env["snmp"].walk(v2c(), "UPS-MIB::upsAlarmTable", opts="-OQs")
    return {v: k.split(".")[-1] for k, v in table.items() if k.startswith("upsAlarmDescr.")}


def notes_of(receiver, trap: str, since: int) -> list[dict[str, str]]:
    return [n for n in receiver.notifications()[since:] if n.get("snmpTrapOID.0") == f"OID: UPS-MIB::{trap}"]


def wait_note(env, trap: str, since: int, descr: str | None = None, timeout: float = 20) -> dict[str, str]:
    def found():
        for note in notes_of(env["receiver"], trap, since):
            if descr is None or any(k.startswith("upsAlarmDescr.") and v == f"OID: UPS-MIB::{descr}"
                                    for k, v in note.items()):
                return note
        return None
    env["gt"].wait_for(lambda: found() is not None, timeout=timeout, what=f"{trap} {descr or ''}")
    note = found()
    assert note is not None
    return note


def snmpset(env, auth: list[str], oid: str, value: int) -> subprocess.CompletedProcess:
    snmp = env["snmp"]
    return subprocess.run(["snmpset", *auth, *MIB_ARGS, "-t", "3", "-r", "1", snmp.target, oid, "i", str(value)],
                          capture_output=True, text=True, env=snmp.env, timeout=60)


def expected_minutes(gw) -> float:
    """The run time on float at the typical load, computed here from the store (RFC 1628's definition with the
    README's aggregation: the shortest string, its capacity's share of the load, Peukert 1.25 against C20)."""
    out = []
    for s in gw.topology.strings:
        cap = s.battery.capacity_ah
        soc = gw.store.value(PointRef("string.soc", s.id)) or gw.store.value(PointRef("string.sensor_soc", s.id))
        amps = TYPICAL_LOAD_A * cap / sum(t.battery.capacity_ah for t in gw.topology.strings)
        effective = amps * (amps / (cap / 20.0)) ** 0.25
        out.append(soc / 100.0 * cap / effective * 60.0)
    return min(out)


def test_ident_group_and_battery_group_on_float(env):
    gw = env["gt"].gateway
    ident = ups(env, *(f"{n}.0" for n in ("upsIdentManufacturer", "upsIdentModel", "upsIdentUPSSoftwareVersion",
                                          "upsIdentAgentSoftwareVersion", "upsIdentName",
                                          "upsIdentAttachedDevices")))
    assert ident["upsIdentManufacturer.0"] == "Example Power Co"
    battery = gw.topology.strings[0].battery.model
    assert ident["upsIdentModel.0"] == f"{STRINGS} x {CELLS} x {battery}"
    assert ident["upsIdentUPSSoftwareVersion.0"] == __version__
    assert ident["upsIdentAgentSoftwareVersion.0"] == f"bmsgw {__version__}"
    assert ident["upsIdentName.0"] == gw.config.section("site")["name"]
    assert ident["upsIdentAttachedDevices.0"] == "Rack A1-A4"

    values = ups(env, "upsBatteryStatus.0", "upsSecondsOnBattery.0", "upsEstimatedMinutesRemaining.0",
                 "upsEstimatedChargeRemaining.0", "upsOutputSource.0", "upsConfigLowBattTime.0",
                 "upsAlarmsPresent.0")
    # on float the run time is present (RFC 1628: "if it were to be lost"), from the configured typical load
    assert int(values["upsEstimatedMinutesRemaining.0"]) == pytest.approx(expected_minutes(gw), abs=1.01)
    assert values["upsBatteryStatus.0"] == "batteryNormal"
    assert values["upsSecondsOnBattery.0"] == "0"
    assert values["upsOutputSource.0"] == "normal"
    assert values["upsConfigLowBattTime.0"] == "5"
    assert values["upsAlarmsPresent.0"] == "0"
    assert alarm_rows(env) == {}
    # what a battery monitor does not measure (input voltage, output frequency) is absent, not zeros
    absent = env["snmp"].get(v2c(), "1.3.6.1.2.1.33.1.3.3.1.3.1", "1.3.6.1.2.1.33.1.4.2.0", opts="-OQsn")
    assert len(absent) == 2 and all("No Such" in v for v in absent.values()), absent


def test_low_batt_time_is_set_through_the_write_path_and_raises_low_battery(env):
    """upsConfigLowBattTime: SET by an operator (never a community or a viewer) through Gateway.write; above the
    run time the battery is low on float (RFC 1628 ties batteryLow to the run time), a row and a trap appear;
    set back, they go, with a trap; the value outlives the agent (state folder)."""
    gt = env["gt"]
    receiver = env["receiver"]
    minutes = int(ups(env, "upsEstimatedMinutesRemaining.0")["upsEstimatedMinutesRemaining.0"])
    for auth, why in ((v2c(), "a community"), (v3(VIEWER), "a viewer")):
        denied = snmpset(env, auth, LOW_BATT, minutes + 10)
        assert denied.returncode != 0 and "Reason:" in denied.stderr, why
    assert ups(env, "upsConfigLowBattTime.0")["upsConfigLowBattTime.0"] == "5"
    bad = snmpset(env, v3(OPERATOR), LOW_BATT, 5000)
    assert bad.returncode != 0 and "wrongValue" in bad.stderr

    since = len(receiver.notifications())
    done = snmpset(env, v3(OPERATOR), LOW_BATT, minutes + 10)
    assert done.returncode == 0, done.stderr
    assert ups(env, "upsConfigLowBattTime.0")["upsConfigLowBattTime.0"] == str(minutes + 10)
    added = wait_note(env, "upsTrapAlarmEntryAdded", since, "upsAlarmLowBattery")
    values = ups(env, "upsBatteryStatus.0", "upsAlarmsPresent.0")
    assert values == {"upsBatteryStatus.0": "batteryLow", "upsAlarmsPresent.0": "1"}
    assert set(nut_snmp_ups(env)["ups.status"].split()) == {"OL", "LB"}  # LB with OB: what upsmon shuts down on
    rows = alarm_rows(env)
    row = rows["upsAlarmLowBattery"]
    assert added[f"upsAlarmId.{row}"] == f"INTEGER: {row}"
    uptime = env["snmp"].get(v2c(), f"UPS-MIB::upsAlarmTime.{row}", "SNMPv2-MIB::sysUpTime.0", opts="-OQst")
    assert 0 < int(uptime[f"upsAlarmTime.{row}"]) <= int(uptime["sysUpTime.0"])
    saved = json.loads((gt.gateway.config.state_dir / "ups-mib.json").read_text())
    assert saved == {"low_batt_time_min": minutes + 10, "configured": 5}

    since = len(receiver.notifications())
    assert snmpset(env, v3(OPERATOR), LOW_BATT, 5).returncode == 0
    removed = wait_note(env, "upsTrapAlarmEntryRemoved", since, "upsAlarmLowBattery")
    assert removed[f"upsAlarmId.{row}"] == f"INTEGER: {row}"
    assert alarm_rows(env) == {}
    assert ups(env, "upsBatteryStatus.0")["upsBatteryStatus.0"] == "batteryNormal"
    time.sleep(1.2)  # one more evaluation: no further notification
    assert len(receiver.notifications()) == since + 1


def test_a_reload_keeps_the_rows_their_ids_and_the_set_low_batt_time(env):
    """A changed snmp section starts a new agent: the alarm rows keep their ids and no notification repeats
    them; the SET upsConfigLowBattTime stays; the new ident answers; upsIdentName is not writable over SNMP."""
    gt = env["gt"]
    gw = gt.gateway
    receiver = env["receiver"]
    minutes = int(ups(env, "upsEstimatedMinutesRemaining.0")["upsEstimatedMinutesRemaining.0"])
    since = len(receiver.notifications())
    assert snmpset(env, v3(OPERATOR), LOW_BATT, minutes + 30).returncode == 0
    wait_note(env, "upsTrapAlarmEntryAdded", since, "upsAlarmLowBattery")
    row = alarm_rows(env)["upsAlarmLowBattery"]
    try:
        doc = copy.deepcopy(gw.config.data)
        doc["snmp"]["ups"]["ident"]["attached_devices"] = "Rack B1"
        report = gt.call(gw.reload(gw.check(doc)), timeout=60)
        assert "snmp" in report.applied, report.as_dict()
        assert ups(env, "upsIdentAttachedDevices.0")["upsIdentAttachedDevices.0"] == "Rack B1"
        assert alarm_rows(env) == {"upsAlarmLowBattery": row}
        assert ups(env, "upsConfigLowBattTime.0")["upsConfigLowBattTime.0"] == str(minutes + 30)
        name = subprocess.run(["snmpset", *v3(OPERATOR), *MIB_ARGS, "-t", "3", "-r", "1", env["snmp"].target,
                               "UPS-MIB::upsIdentName.0", "s", "renamed"], capture_output=True, text=True,
                              env=env["snmp"].env, timeout=60)
        assert name.returncode != 0 and "notWritable" in name.stderr
        time.sleep(1.2)  # the new agent evaluated the conditions at least once
        assert notes_of(receiver, "upsTrapAlarmEntryAdded", since + 1) == []
    finally:
        assert snmpset(env, v3(OPERATOR), LOW_BATT, 5).returncode == 0
    wait_note(env, "upsTrapAlarmEntryRemoved", since, "upsAlarmLowBattery")


def test_alarm_engine_alarms_become_well_known_alarms(env):
    """A temperature alarm is upsAlarmTempBad; a state of health past the replace threshold (critical) is
    upsAlarmBatteryBad, a warning is not; each row comes and goes with its notification."""
    gt = env["gt"]
    gw = gt.gateway
    receiver = env["receiver"]
    since = len(receiver.notifications())
    temp = AlarmEvent(alarm_id=901, object="string 2 cell 3", point="cell.temperature", value=52.0, threshold=50.0,
                      severity="critical", message="hot", active=True, ts=time.time(), rule="cell_temperature",
                      string=2, cell=3)
    worn = AlarmEvent(alarm_id=902, object="string 1", point="string.soh", value=85.0, threshold=90.0,
                      severity="warning", message="SOH 85 %", active=True, ts=time.time(), rule="string_soh", string=1)
    gt.call(_hook(gw, temp))
    gt.call(_hook(gw, worn))
    wait_note(env, "upsTrapAlarmEntryAdded", since, "upsAlarmTempBad")
    assert set(alarm_rows(env)) == {"upsAlarmTempBad"}
    bad = AlarmEvent(**{**_fields(worn), "value": 78.0, "threshold": 80.0, "severity": "critical"})
    gt.call(_hook(gw, bad))
    wait_note(env, "upsTrapAlarmEntryAdded", since, "upsAlarmBatteryBad")
    rows = alarm_rows(env)
    assert set(rows) == {"upsAlarmTempBad", "upsAlarmBatteryBad"}
    assert int(rows["upsAlarmBatteryBad"]) > int(rows["upsAlarmTempBad"])  # ids grow with each new row
    since = len(receiver.notifications())
    gt.call(_hook(gw, AlarmEvent(**{**_fields(temp), "active": False, "value": 45.0})))
    gt.call(_hook(gw, AlarmEvent(**{**_fields(bad), "active": False, "value": 81.0})))
    wait_note(env, "upsTrapAlarmEntryRemoved", since, "upsAlarmTempBad")
    wait_note(env, "upsTrapAlarmEntryRemoved", since, "upsAlarmBatteryBad")
    assert alarm_rows(env) == {}


def _fields(event: AlarmEvent) -> dict:
    return {f: getattr(event, f) for f in event.__dataclass_fields__}


async def _hook(gw, event):
    gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=event)


def nut_snmp_ups(env) -> dict[str, str]:
    """NUT's snmp-ups driver (Debian's nut-snmp) reading the agent with its IETF (RFC 1628) mapping, once."""
    tmp = env["tmp"]
    state = tmp / "nut"
    state.mkdir(exist_ok=True)
    proc = subprocess.run(["/lib/nut/snmp-ups", "-s", "bank", "-x", f"port=127.0.0.1:{env['port']}", "-x", "mibs=ietf",
                           "-x", "snmp_version=v2c", "-x", "community=public", "-d", "1"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, NUT_STATEPATH=str(state), NUT_CONFPATH=str(state)))
    assert proc.returncode == 0, proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out[name.strip()] = value.strip()
    return out


def test_on_battery_follows_a_simulated_discharge_for_net_snmp_and_nut(env):
    """Mains lost on string 1 (the simulator discharges it): the string-state classifier says discharging, the
    UPS-MIB says on battery (output source, alarm row, upsTrapOnBattery) and NUT's snmp-ups driver reports OB;
    back on float, OL again and the row goes with upsTrapAlarmEntryRemoved."""
    gt = env["gt"]
    gw = gt.gateway
    receiver = env["receiver"]
    floating = nut_snmp_ups(env)
    values = ups(env, "upsEstimatedChargeRemaining.0", "upsEstimatedMinutesRemaining.0")
    assert floating["ups.status"] == "OL"
    assert floating["battery.charge"] == values["upsEstimatedChargeRemaining.0"]
    assert int(floating["battery.runtime"]) == pytest.approx(int(values["upsEstimatedMinutesRemaining.0"]) * 60,
                                                               abs=60)
    assert floating["battery.runtime.low"] == "300"
    assert floating["ups.mfr"] == "Example Power Co" and floating["ups.firmware"] == __version__

    model = gw.simulator.model
    since = len(receiver.notifications())
    model.set_mode(1, "discharge", 20.0)
    try:
        note = wait_note(env, "upsTrapOnBattery", since, timeout=30)
        assert note["upsConfigLowBattTime.0"].startswith("INTEGER: 5")
        assert note["upsEstimatedMinutesRemaining.0"].startswith("INTEGER: ")
        assert "upsSecondsOnBattery.0" in note
        rows = alarm_rows(env)
        assert "upsAlarmOnBattery" in rows
        assert not notes_of(receiver, "upsTrapAlarmEntryAdded", since)  # RFC 1628: OnBattery has its own trap
        values = ups(env, "upsOutputSource.0", "upsBatteryCurrent.0", "upsEstimatedMinutesRemaining.0")
        assert values["upsOutputSource.0"] == "battery"
        assert int(values["upsBatteryCurrent.0"]) < -150  # 0.1 A, negative = discharging
        on_battery = nut_snmp_ups(env)
        assert "OB" in on_battery["ups.status"].split()
        assert float(on_battery["battery.current"]) < -15
    finally:
        with model.lock:
            model.strings[1].soc = 1.0
            model.set_mode(1, "float")
    wait_note(env, "upsTrapAlarmEntryRemoved", since, "upsAlarmOnBattery", timeout=30)
    assert "upsAlarmOnBattery" not in alarm_rows(env)
    assert ups(env, "upsOutputSource.0")["upsOutputSource.0"] == "normal"
    assert nut_snmp_ups(env)["ups.status"] == "OL"


# -- the parts without a gateway ----------------------------------------------------------------------------
def test_low_batt_time_persists_until_the_configured_value_is_edited(tmp_path):
    path = tmp_path / "ups-mib.json"
    setting = LowBattTime(path, 5)
    assert setting.minutes == 5
    assert setting.set(12.2) == 13  # RFC 1628: a value between supported ones rounds up (whole minutes)
    assert LowBattTime(path, 5).minutes == 13  # a restart keeps the SET value
    edited = LowBattTime(path, 8)  # the administrator edited the configured value since: it wins
    assert edited.minutes == 8
    running = LowBattTime(path, 8)
    running.set(20)
    running.reconfigure(8)  # a reload with the same configured value keeps the SET one
    assert running.minutes == 20
    running.reconfigure(3)
    assert running.minutes == 3 and LowBattTime(path, 3).minutes == 3


class FakeBattery:
    """What UpsAlarms asks of the battery group, set by the test."""

    def __init__(self) -> None:
        self.status, self.on, self.seconds = NORMAL, False, 0

    def status_code(self) -> int:
        return self.status

    def discharging(self) -> bool:
        return self.on

    def seconds_on_battery(self):
        return ber.INTEGER, self.seconds

    def minutes_remaining(self):
        return ber.INTEGER, 3


def fake_table() -> tuple[UpsAlarms, FakeBattery, list[tuple]]:
    snmp = section_with_defaults("snmp", {})
    data = AgentData(store=None, pointmap=None, topology=None, base=(), site_name="",  # type: ignore[arg-type]
                     system=snmp["system"], ups=snmp["ups"], entity_points=[], poll={})
    battery = FakeBattery()
    sent: list[tuple] = []
    table = UpsAlarms(data, battery, notify=lambda trap, values, what: sent.append((trap, values)))  # type: ignore[arg-type]
    return table, battery, sent


def test_alarm_time_is_the_onset_and_zero_when_before_the_agent():
    """upsAlarmTime is sysUpTime when the condition began: a discharge that started before the agent reads 0
    (RFC 1628), an alarm raised after it reads its own time; on battery is announced by upsTrapOnBattery."""
    table, battery, sent = fake_table()
    start = table.data.started
    battery.on, battery.seconds = True, 100
    table.evaluate(start + 5)
    assert table.stamp(table.rows[ON_BATTERY]) == 0
    assert [trap for trap, _ in sent] == [TRAP_ON_BATTERY]
    table.observe(AlarmEvent(alarm_id=7, object="room", point="io.ambient_temperature", value=36.0, threshold=35.0,
                             severity="warning", message="warm", active=True, ts=start + 12.5,
                             rule="ambient_temperature"))
    table.evaluate(start + 13)
    assert table.stamp(table.rows[TEMP_BAD]) == 1250
    assert [trap for trap, _ in sent] == [TRAP_ON_BATTERY, TRAP_ALARM_ADDED]
    assert sent[-1][1][1] == (UPS_ALARM_ENTRY + (2, 2), (ber.OID, UPS_WELL_KNOWN + (TEMP_BAD,)))


def test_a_wavering_run_time_adds_and_removes_the_low_battery_row_once():
    """The estimate hovers around upsConfigLowBattTime: one row, one added and one removed notification."""
    table, battery, sent = fake_table()
    t0 = table.data.started + 60
    for i, status in enumerate([LOW, NORMAL, LOW, NORMAL, LOW] + [NORMAL] * 10):
        battery.status = status
        table.evaluate(t0 + i)
    assert [trap for trap, _ in sent] == [TRAP_ALARM_ADDED, TRAP_ALARM_REMOVED]
    assert table.rows == {}


def test_alarm_ids_grow_and_wrap_to_the_first_free_value():
    table, _battery, _sent = fake_table()
    table._next = 2147483647
    table.rows[5] = UpsAlarmRow(1, 5, 0.0)
    assert table._new_id() == 2147483647
    assert table._new_id() == 2  # wrapped past the maximum: 1 is taken
