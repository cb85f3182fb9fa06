"""Alarms in the running gateway on the simulated bank: a value forced over a setpoint in the simulator is
raised, published, switches the real relay (the simulator's DO), reaches a webhook, is acknowledged, clears,
and survives a restart; communication loss per sensor, per bus and per bank device; dry contacts."""
import time
from itertools import pairwise

from gateway import alarms
from gateway.hookspecs import hookimpl
from gateway.points import PointRef
from tests.notify_peers import WebhookReceiver
from tests.support import GatewayThread, small_bank, write_config

FAST_FLOAT = {"cell_voltage_float": {"on_delay_s": 0, "off_delay_s": 0}}


class Recorder:
    """A plugin that records the alarm hooks, as the SNMP and MQTT faces would receive them."""

    def __init__(self):
        self.events, self.acks = [], []

    @hookimpl
    def bmsgw_alarm_event(self, gateway, event):
        self.events.append(event)

    @hookimpl
    def bmsgw_alarm_acknowledged(self, gateway, event):
        self.acks.append(event)


def level(gw, point, *keys):
    return gw.store.value(PointRef(point, *keys))


def config(tmp_path, hook_url=None, **alarm_over):
    over = {"alarms": {"rules": FAST_FLOAT, **alarm_over},
            "notify": {"retry": {"backoff_s": 0.05, "max_backoff_s": 0.2}}}
    if hook_url:
        over["notify"]["webhook"] = {"enabled": True, "url": hook_url}
    return write_config(tmp_path, base=small_bank(strings=1, cells=8), overrides=over)


def test_forced_overvoltage_raises_publishes_switches_the_relay_and_clears(tmp_path):
    with WebhookReceiver() as hook:
        gt = GatewayThread(config(tmp_path, hook.url))
        rec = Recorder()
        gt.gateway.pm.register(rec)
        with gt:
            gw = gt.gateway
            mgr = alarms.get_manager(gw)
            model = gw.simulator.model
            assert mgr.active() == []
            assert level(gw, "bank.alarm_level") == 0 and level(gw, "cell.alarm_level", 1, 3) == 0
            model.battery(1, 3).float_offset += 1.0  # 13.4 V -> 14.4 V: over 13.92 (warning) and 14.10 (critical)
            gt.wait_for(lambda: len(mgr.active()) == 2, timeout=10, what="two alarms")
            crit, warn = mgr.active()
            assert (crit.severity, warn.severity) == ("critical", "warning")
            assert crit.text.startswith("String 1 cell 3: voltage on float 14.")
            assert crit.text.endswith("too high (alarm at 14.10 V)") and crit.threshold == 14.1
            assert crit.object == "string 1 cell 3" and crit.metric == "cell.voltage"
            gt.wait_for(lambda: level(gw, "bank.alarms_active") == 2, timeout=5, what="levels")
            assert level(gw, "cell.alarm_level", 1, 3) == 2 and level(gw, "cell.alarm_level", 1, 4) == 0
            assert level(gw, "string.alarm_level", 1) == 2 and level(gw, "bank.alarm_level") == 2
            # the sound-and-light alarm: the I/O module's relay, switched in the simulated device
            gt.wait_for(lambda: model.do_state == 1, timeout=10, what="relay on")
            gt.wait_for(lambda: len(hook.bodies()) == 2, timeout=10, what="two webhook posts")
            body = next(b for b in hook.bodies() if b["severity"] == "critical")
            assert body["type"] == "alarm" and body["state"] == "raised" and body["alarm_id"] == crit.alarm_id
            assert body["text"] == crit.text and body["site"]["id"] == "site"
            assert body["raised"] is True and body["raised_ts"] == crit.raised_ts  # the posted keys stay as they were
            assert body["metric"] == "cell.voltage" and body["acknowledged_ts"] is None
            # the hook carries what the SNMP trap and MQTT faces need
            ev = next(e for e in rec.events if e.severity == "critical")
            assert (ev.alarm_id, ev.object, ev.point, ev.active, ev.threshold) == \
                (crit.alarm_id, "string 1 cell 3", "cell.voltage", True, 14.1)
            # in the alarm record's words: the message, and when it was raised
            record = next(r for r in gw.pm.hook.bmsgw_alarms(gateway=gw, active=True, limit=10)
                          if r["id"] == str(crit.alarm_id))
            assert (ev.message, ev.raised) == (record["message"], record["raised"]) == (crit.text, crit.raised_ts)
            assert ev.point == record["point"] and ev.acknowledged is record["acknowledged"] is None

            # acknowledged from the web or Modbus: silences the relay, the alarm stays active
            assert alarms.acknowledge(gw, crit.alarm_id, "alice") is True
            assert alarms.acknowledge(gw, crit.alarm_id, "bob") is False  # already acknowledged
            gt.wait_for(lambda: model.do_state == 0, timeout=10, what="relay silenced")
            row = mgr.get(crit.alarm_id)
            assert row.acknowledged_by == "alice" and row.acknowledged_ts is not None
            gt.wait_for(lambda: any(b["type"] == "acknowledgement" for b in hook.bodies()), timeout=10, what="ack post")
            assert [a.alarm_id for a in rec.acks] == [crit.alarm_id]
            acked = next(r for r in gw.pm.hook.bmsgw_alarms(gateway=gw, active=True, limit=10)
                         if r["id"] == str(crit.alarm_id))
            assert (rec.acks[0].acknowledged_by, rec.acks[0].acknowledged) == \
                (acked["acknowledged_by"], acked["acknowledged"]) == ("alice", row.acknowledged_ts)
            ack_body = next(b for b in hook.bodies() if b["type"] == "acknowledgement")
            assert (ack_body["acknowledged_by"], ack_body["acknowledged_ts"]) == ("alice", row.acknowledged_ts)

            model.battery(1, 3).float_offset -= 1.0
            gt.wait_for(lambda: mgr.active() == [], timeout=10, what="clear")
            gt.wait_for(lambda: level(gw, "bank.alarm_level") == 0, timeout=5, what="levels back to 0")
            assert level(gw, "cell.alarm_level", 1, 3) == 0 and level(gw, "bank.alarms_active") == 0
            clears = [e for e in rec.events if not e.active]
            assert {e.alarm_id for e in clears} == {crit.alarm_id, warn.alarm_id}
            assert clears[0].message.startswith("String 1 cell 3: voltage on float back to normal (13.")
            log = mgr.history()
            assert {r["id"]: r["acknowledged_by"] for r in log} == {str(crit.alarm_id): "alice",
                                                                    str(warn.alarm_id): None}
            assert all(r["cleared"] and r["cleared_message"] and not r["active"] for r in log)
            assert {r["rule"] for r in log} == {"cell_voltage_float"}
            # one raise and one clear per alarm, nothing in between
            assert sorted((e.alarm_id, e.active) for e in rec.events) == sorted(
                [(crit.alarm_id, True), (crit.alarm_id, False), (warn.alarm_id, True), (warn.alarm_id, False)])


def test_float_rules_rest_after_the_sensors_ohmic_test_and_only_then(tmp_path):
    """The realistic setting (detect: value_change): the sensors hold their daily test result, so polling
    the same result again and again is no test; a test they run is, and float-voltage alarms rest a while."""
    path = write_config(tmp_path, base=small_bank(strings=1, cells=8), overrides={
        "gateway": {"poll": {"slow_s": 0.5}},  # ohmic values polled as often as voltages
        "alarms": {"rules": FAST_FLOAT, "ohmic_test": {"detect": "value_change", "suppress_s": 1800}},
        "notify": {"relay": {"enabled": False}}})
    with GatewayThread(path) as gt:
        gw = gt.gateway
        mgr = alarms.get_manager(gw)
        model = gw.simulator.model
        reads = {"cell.ohmic": [], "cell.voltage": []}
        gw.store.subscribe(lambda batch: [reads[p.point].append(r.value) for p, r in batch
                                          if p.string == 1 and p.cell == 3 and p.point in reads])

        def polls(point, n):
            k = len(reads[point])
            gt.wait_for(lambda: len(reads[point]) >= k + n, timeout=20, what=f"{n} polls of {point}")

        polls("cell.ohmic", 3)
        assert len(set(reads["cell.ohmic"])) == 1  # the same test result, read again and again
        assert mgr.evaluator.suppressed(1, time.time()) is None
        model.battery(1, 3).float_offset += 1.0
        gt.wait_for(lambda: len(mgr.active()) == 2, timeout=10, what="float alarms while no test runs")
        model.battery(1, 3).float_offset -= 1.0
        gt.wait_for(lambda: mgr.active() == [], timeout=10, what="clear")
        # the string's sensors run an ohmic test: a new result, and the float rules rest for 30 min
        model.run_ohmic_test(1)
        gt.wait_for(lambda: len(set(reads["cell.ohmic"])) == 2, timeout=10, what="the new test result")
        gt.wait_for(lambda: mgr.evaluator.suppressed(1, time.time()) == "ohmic test", timeout=10,
                    what="suppression")
        model.battery(1, 3).float_offset += 1.0
        k = len(reads["cell.voltage"])
        gt.wait_for(lambda: sum(v > 14.1 for v in reads["cell.voltage"][k:]) >= 3, timeout=20,
                    what="three polls over the setpoint")
        assert mgr.active() == []


def test_the_alarm_log_and_acknowledgements_survive_a_restart(tmp_path):
    path = config(tmp_path)
    gt = GatewayThread(path)
    gt.gateway.simulator.model.battery(1, 5).float_offset += 1.0
    with gt:
        mgr = alarms.get_manager(gt.gateway)
        gt.wait_for(lambda: len(mgr.active()) == 2, timeout=10, what="alarms")
        crit = mgr.active()[0]
        mgr.acknowledge(crit.alarm_id, "night shift")
        ids = sorted(a.alarm_id for a in mgr.active())

    gt = GatewayThread(path)
    rec = Recorder()
    gt.gateway.pm.register(rec)
    gt.gateway.simulator.model.battery(1, 5).float_offset += 1.0  # still too high after the restart
    with gt:
        gw = gt.gateway
        mgr = alarms.get_manager(gw)
        rows = mgr.active()
        assert sorted(a.alarm_id for a in rows) == ids  # the same alarms, the same ids
        assert rows[0].acknowledged_by == "night shift"
        assert level(gw, "cell.alarm_level", 1, 5) == 2
        gt.wait_for(lambda: gw.store.value(PointRef("io.do", channel=1)) is not None, timeout=10, what="DO read")
        assert rec.events == []  # restored, not raised again: nobody is told twice
        assert gw.simulator.model.do_state == 0  # acknowledged before the restart: the relay stays silent
        gw.simulator.model.battery(1, 5).float_offset -= 1.0
        gt.wait_for(lambda: mgr.active() == [], timeout=10, what="clear after restart")
        assert sorted(e.alarm_id for e in rec.events if not e.active) == ids
        # new alarms continue the numbering
        gw.simulator.model.battery(1, 6).float_offset += 1.0
        gt.wait_for(lambda: len(mgr.active()) == 2, timeout=10, what="new alarms")
        assert min(a.alarm_id for a in mgr.active()) > max(ids)
        assert len(mgr.history(limit=10)) == 4


def test_communication_loss_per_sensor_per_bank_device_and_per_bus_and_contacts(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=8), overrides={
        "gateway": {"poll": {"stale_after_cycles": 1, "lost_retry_s": 0.2}},
        "alarms": {"di": [{"channel": 1, "name": "Smoke detector", "severity": "critical"}]},
        "notify": {"relay": {"enabled": False}}})
    with GatewayThread(path) as gt:
        gw = gt.gateway
        mgr = alarms.get_manager(gw)

        def texts():
            return {a.text: a for a in mgr.active()}

        gw.simulator.model.di_state = 1  # the smoke detector's contact closes
        gt.wait_for(lambda: "Battery room: Smoke detector contact closed" in texts(), timeout=10, what="DI alarm")
        assert texts()["Battery room: Smoke detector contact closed"].severity == "critical"
        gw.simulator.model.di_state = 0
        gt.wait_for(lambda: not texts(), timeout=10, what="DI clear")

        gw.simulator.set_fault("bus1", 4, "no_answer")  # cell 3's sensor
        gt.wait_for(lambda: "String 1 cell 3: sensor stopped answering" in texts(), timeout=10, what="sensor loss")
        gw.simulator.set_fault("bus1", 201, "no_answer")  # the I/O module
        gt.wait_for(lambda: any(t.endswith("stopped answering") and "address 201" in t for t in texts()), timeout=10,
                    what="device loss")
        gw.simulator.set_fault("bus1", 4, "none")
        gw.simulator.set_fault("bus1", 201, "none")
        gt.wait_for(lambda: not texts(), timeout=15, what="sensors answer again")

        gw.simulator.set_fault("bus1", None, "unplugged")
        gt.wait_for(lambda: "Bus bus1: no sensor answers" in texts(), timeout=20, what="bus loss")
        bus = texts()["Bus bus1: no sensor answers"]
        assert bus.severity == "critical" and bus.object == "bus bus1"
        assert level(gw, "bank.alarm_level") == 2
        gw.simulator.set_fault("bus1", None, "none")
        gt.wait_for(lambda: not texts(), timeout=20, what="bus back")
        events = mgr.history(limit=100)
        assert all(r["cleared"] for r in events)


def test_bmsgw_alarms_prints_the_log(tmp_path, capsys):
    from gateway.cli import main

    path = config(tmp_path)
    assert main(["alarms", "-c", str(path)]) == 0
    assert "no alarm log yet" in capsys.readouterr().err
    gt = GatewayThread(path)
    gt.gateway.simulator.model.battery(1, 2).float_offset += 1.0
    with gt:
        mgr = alarms.get_manager(gt.gateway)
        gt.wait_for(lambda: len(mgr.active()) == 2, timeout=10, what="alarms")
        mgr.acknowledge(mgr.active()[0].alarm_id, "carol")
        logged = mgr.history()
    assert main(["alarms", "-c", str(path), "--active"]) == 0
    out = capsys.readouterr().out
    assert "critical ACTIVE, acknowledged by carol" in out and "warning  ACTIVE" in out
    assert "String 1 cell 2: voltage on float 14." in out
    assert main(["alarms", "-c", str(path), "--json"]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)
    assert {r["severity"] for r in rows} == {"warning", "critical"}
    # the records the web page and REST hand out, with the rule that raised each
    assert rows == logged and [list(r) for r in rows] == [
        ["id", "severity", "message", "raised", "active", "point", "string", "cell", "channel", "value", "threshold",
         "cleared", "acknowledged_by", "acknowledged", "rule", "cleared_message"]] * 2
    assert {r["rule"] for r in rows} == {"cell_voltage_float"} and all(r["active"] for r in rows)
    assert [r["acknowledged_by"] for r in rows if r["severity"] == "critical"] == ["carol"]


def test_a_value_driven_around_the_setpoint_in_the_simulator_raises_once(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=2), overrides={
        "alarms": {"rules": {"cell_voltage_float": {"on_delay_s": 0, "off_delay_s": 3}}},
        "notify": {"relay": {"enabled": False}}})
    gt = GatewayThread(path)
    rec = Recorder()
    gt.gateway.pm.register(rec)
    with gt:
        gw = gt.gateway
        model = gw.simulator.model
        ref = PointRef("cell.voltage", 1, 1)
        seen = []
        gw.store.subscribe(lambda batch: seen.extend(r.value for p, r in batch if p == ref))

        def drive(volts):
            with model.lock:
                model.battery(1, 1).float_offset += volts - model.cell_voltage(1, 1)
            n = len(seen)
            gt.wait_for(lambda: len(seen) > n, timeout=10, what="a poll")

        for i in range(10):  # 14.14 V, 14.08 V, ... around the 14.10 V setpoint (hysteresis 0.03 V, off-delay 3 s)
            drive(14.14 if i % 2 == 0 else 14.08)
        above = [v > 14.10 for v in seen[-10:]]
        assert sum(a != b for a, b in pairwise(above)) >= 7  # the value really crossed, again and again
        crit = [e for e in rec.events if e.cell == 1 and e.severity == "critical"]
        assert [e.active for e in crit] == [True]  # one alarm, no flapping
        drive(13.5)
        gt.wait_for(lambda: any(not e.active for e in rec.events if e.cell == 1 and e.severity == "critical"),
                    timeout=15, what="clear after the off-delay")
        crit = [e for e in rec.events if e.cell == 1 and e.severity == "critical"]
        assert [e.active for e in crit] == [True, False]
