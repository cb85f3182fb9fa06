"""MQTT upload against a real Mosquitto on loopback: topics and payloads, store-and-forward across a broker
outage and a gateway restart, the bound, TLS with client certificates, the last will."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway.hookspecs import AlarmEvent
from gateway.outputs.mqtt.queue import MessageQueue
from tests.mqtt_peers import Mosquitto, Subscriber, make_pki
from tests.support import GatewayThread, small_bank, write_config


def mqtt_config(tmp_path: Path, port: int, cells: int = 4, **mqtt) -> Path:
    over = {"site": {"id": "demo", "name": "Demo room"}, "prometheus": {"enabled": False},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "interval_s": 0.25,
                     "reconnect_min_s": 1, "reconnect_max_s": 1, **mqtt}}
    return write_config(tmp_path, base=small_bank(strings=1, cells=cells), overrides=over)


def in_order_without_loss(seqs: list[int]) -> tuple[int, int]:
    """Every seq from the first to the last arrived, in order (a re-sent duplicate may repeat one)."""
    firsts = list(dict.fromkeys(seqs))
    assert firsts == sorted(firsts), "messages arrived out of order"
    missing = sorted(set(range(firsts[0], firsts[-1] + 1)) - set(firsts))
    assert not missing, f"lost {len(missing)} messages: {missing[:10]} ..."
    return firsts[0], firsts[-1]


def alarm(raised: bool) -> AlarmEvent:
    return AlarmEvent(alarm_id="cell_voltage_high:1:2", object="string 1 cell 2", point="cell.voltage",
                      value=14.35, threshold=14.1, severity="critical",
                      message="String 1 cell 2: voltage 14.35 V (critical above 14.1 V)", active=raised,
                      ts=1700000000.5)


# -- the queue on its own ------------------------------------------------------------------------------------------
def test_queue_keeps_order_bound_and_survives_reopen(tmp_path):
    q = MessageQueue(tmp_path / "q.sqlite", max_messages=5).open()
    seqs = q.put_many([(f"t/{i}", {"i": i}, False) for i in range(8)])  # link down: straight to disk
    assert seqs == list(range(1, 9))
    assert q.dropped == 3 and q.pending == 5  # the 3 oldest went
    first = q.take(2)
    assert [m.seq for m in first] == [4, 5] and b'"seq":4' in first[0].payload
    q.ack(4)
    q.flush()
    q.close()  # 5 was in flight, not acknowledged: it must come back
    q = MessageQueue(tmp_path / "q.sqlite", max_messages=5).open()
    assert q.dropped == 3
    assert [m.seq for m in q.take(10)] == [5, 6, 7, 8]
    x = q.put_many([("t/x", {}, False)])[0]
    assert x > 8, "a sequence number is never reused"
    q.set_link(True)
    live = q.put_many([("t/y", {}, False)])[0]  # link up: kept in memory, sent after what waits on disk
    assert [m.seq for m in q.take(10)] == [x, live]
    q.close()
    # after a clean close the numbers go on; after a crash (no close) they skip ahead, never back
    q = MessageQueue(tmp_path / "q.sqlite", max_messages=5).open()
    assert q.put_many([("t", {}, False)]) == [live + 1]
    crashed_at = live + 1
    q = MessageQueue(tmp_path / "q.sqlite", max_messages=5).open()
    assert q.put_many([("t", {}, False)])[0] > crashed_at + 1000
    q.close()


def test_queue_bytes_bound_drops_oldest(tmp_path):
    q = MessageQueue(tmp_path / "q.sqlite", max_messages=1000, max_bytes=2000).open()
    q.put_many([("t", {"pad": "x" * 300}, False) for _ in range(10)])
    assert q.pending_bytes <= 2000 and q.dropped == 10 - q.pending
    assert [m.seq for m in q.take(100)] == list(range(q.dropped + 1, 11))
    q.close()


def test_queue_gives_the_disk_space_back_once_drained(tmp_path):
    path = tmp_path / "q.sqlite"
    q = MessageQueue(path).open()
    q.put_many([("t", {"pad": "x" * 5000}, False) for _ in range(2000)])  # 10 MB queued while offline
    assert path.stat().st_size + Path(f"{path}-wal").stat().st_size > 10_000_000
    while batch := q.take(100):
        for m in batch:
            q.ack(m.seq)
        q.flush()
    q.close()
    assert path.stat().st_size < 100_000


# -- against mosquitto ---------------------------------------------------------------------------------------------
def test_topics_payloads_status_and_alarms(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port)
        sub.wait_connected()
        with GatewayThread(mqtt_config(tmp_path, broker.port, layout="string")) as gt:
            gw = gt.gateway
            sub.wait_for(lambda s: any(t.endswith("/cells") for t, _, _ in s.snapshot()), what="a cells message")
            # the string sensor and the I/O module may be read after the first publish: wait for their values
            sub.wait_for(lambda s: any(t == "bmsgw/demo/string/1" and "voltage" in p["values"]
                                       for t, p, _ in s.snapshot()), what="the string sensor's values")
            sub.wait_for(lambda s: any(t == "bmsgw/demo/bank" and "io.di" in p["values"]
                                       for t, p, _ in s.snapshot()), what="the I/O module's values")
            gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=alarm(True))
            sub.wait_for(lambda s: any(t == "bmsgw/demo/alarms" for t, _, _ in s.snapshot()), what="the alarm")
            status = gw.status()["mqtt"]
            assert status["connected"] and status["broker"] == f"mqtt://127.0.0.1:{broker.port}"
            assert gw.store.value(gw.pointmap.refs("gateway.mqtt_connected")[0]) == 1.0
        msgs = sub.snapshot()
        sub.close()
    by_topic = {}
    for topic, payload, _retained in msgs:
        by_topic.setdefault(topic, []).append(payload)
    assert {"bmsgw/demo/status", "bmsgw/demo/gateway", "bmsgw/demo/bank", "bmsgw/demo/string/1",
            "bmsgw/demo/string/1/cells", "bmsgw/demo/alarms"} <= set(by_topic)
    cells = by_topic["bmsgw/demo/string/1/cells"][-1]
    assert cells["site"] == "demo" and cells["string"] == 1 and cells["batteries"] == 4
    assert cells["units"]["voltage"] == "V" and cells["units"]["temperature"] == "C"
    assert len(cells["values"]["voltage"]) == 4 and all(7.5 < v < 15.6 for v in cells["values"]["voltage"])
    assert abs(cells["ts"] - time.time()) < 60 and cells["measured"][0] <= cells["measured"][1]
    string = by_topic["bmsgw/demo/string/1"][-1]
    assert string["values"]["voltage"]["unit"] == "V" and "ts" in string["values"]["voltage"]
    assert string["values"]["current"]["unit"] == "A"
    bank = by_topic["bmsgw/demo/bank"][-1]
    assert [c["channel"] for c in bank["values"]["io.di"]] == [1, 2, 3, 4]
    assert by_topic["bmsgw/demo/gateway"][-1]["values"]["gateway.bus_requests"][0]["channel"] == 1
    ev = by_topic["bmsgw/demo/alarms"][0]
    assert ev["alarm_id"] == "cell_voltage_high:1:2" and ev["state"] == "raised" and ev["severity"] == "critical"
    assert ev["value"] == 14.35 and ev["threshold"] == 14.1 and ev["ts"] == 1700000000.5 and "14.35 V" in ev["text"]
    assert ev["metric"] == "cell.voltage" and "point" not in ev  # the payload keeps its keys
    states = [p["state"] for p in by_topic["bmsgw/demo/status"]]
    assert states[0] == "online" and states[-1] == "offline"  # a clean stop says so, retained
    in_order_without_loss([p["seq"] for t, p, _ in msgs if t != "bmsgw/demo/status"])


def test_cell_layout_one_topic_per_battery(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, topic="bmsgw/demo/string/1/cell/+")
        sub.wait_connected()
        def measured(s):  # per battery, a message with its measured values (the first ones may precede a poll)
            return {t: p for t, p, _ in s.snapshot() if isinstance(p, dict) and "voltage" in p.get("values", {})}

        with GatewayThread(mqtt_config(tmp_path, broker.port, layout="cell")):
            sub.wait_for(lambda s: set(measured(s)) >= {f"bmsgw/demo/string/1/cell/{c}" for c in range(1, 5)},
                         what="4 cell topics with their voltage")
        sub.close()
    for topic, payload in measured(sub).items():
        assert payload["cell"] == int(topic.rsplit("/", 1)[1]) and payload["values"]["voltage"]["unit"] == "V"
        assert payload["values"]["balancing"]["state"] in ("on", "off")


def test_broker_outage_and_gateway_restart_lose_nothing_and_keep_order(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    try:
        sub.wait_connected()
        path = mqtt_config(tmp_path, broker.port)
        with GatewayThread(path) as gt:
            gw = gt.gateway
            sub.wait_for(lambda s: len(s.seqs()) >= 8, what="the first messages")
            broker.stop()
            gt.wait_for(lambda: not gw.status()["mqtt"]["connected"], timeout=15, what="the gateway to notice")
            gt.wait_for(lambda: gw.status()["mqtt"]["on_disk"] >= 12, timeout=15, what="messages queued on disk")
            gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=alarm(True))
            assert Path(gw.config.state_dir / "mqtt-queue.sqlite").exists()
            broker.start()
            sub.wait_connected()
            gt.wait_for(lambda: gw.status()["mqtt"]["connected"], timeout=15, what="the reconnection")
            gt.wait_for(lambda: gw.status()["mqtt"]["waiting"] == 0, timeout=30, what="the backlog to drain")
            last_before_stop = max(sub.seqs() or [0])
            st = gw.status()["mqtt"]
            assert st["dropped"] == 0 and st["sent"] >= 20
        # a restart with the broker down: what was queued on disk goes first when it is back
        broker.stop()
        with GatewayThread(path) as gt:
            gt.wait_for(lambda: gt.gateway.status()["mqtt"]["on_disk"] >= 4, timeout=15, what="queueing")
        q = MessageQueue(tmp_path / "var" / "mqtt-queue.sqlite").open()
        assert q.pending >= 4  # on disk while the gateway is stopped
        q.close()
        broker.start()
        with GatewayThread(path) as gt:
            gt.wait_for(lambda: gt.gateway.status()["mqtt"]["sent"] >= 8 and
                        gt.gateway.status()["mqtt"]["waiting"] == 0, timeout=30, what="the restart backlog")
            top = max(gt.gateway.status()["mqtt"]["sent"], 0)
        sub.wait_for(lambda s: max(s.seqs()) > last_before_stop + 4, what="messages after the restart")
        time.sleep(0.5)
        seqs = sub.seqs()
        first, last = in_order_without_loss(seqs)
        assert first == 1 and last > last_before_stop and top
        alarms = [p for t, p, _ in sub.snapshot() if t.endswith("/alarms")]
        assert len(alarms) >= 1 and alarms[0]["state"] == "raised"
    finally:
        sub.close()
        broker.stop()


def test_bound_drops_the_oldest_and_counts_them(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    try:
        sub.wait_connected()
        broker.stop()  # the subscriber's session stays on the broker; the gateway starts into an outage
        path = mqtt_config(tmp_path, broker.port, queue={"max_messages": 10})
        with GatewayThread(path) as gt:
            gw = gt.gateway
            gt.wait_for(lambda: gw.status()["mqtt"]["dropped"] >= 6, timeout=20, what="the queue to overflow")
            st = gw.status()["mqtt"]
            assert st["waiting"] == 10 and not st["connected"]
            assert st["last_error"] == f"cannot reach the broker at 127.0.0.1:{broker.port}"
            broker.start()
            gt.wait_for(lambda: gw.status()["mqtt"]["connected"] and gw.status()["mqtt"]["waiting"] == 0,
                        timeout=30, what="the backlog to drain")
            dropped = gw.status()["mqtt"]["dropped"]
            dropped_points = gw.store.value(gw.pointmap.refs("gateway.mqtt_dropped")[0])
            sub.wait_connected()
            sub.wait_for(lambda s: len(s.seqs()) >= 10, what="the kept messages")
        time.sleep(0.3)
        first, last = in_order_without_loss(sub.seqs())
        assert first == dropped + 1, "exactly the oldest were dropped"
        assert dropped_points is not None and dropped_points <= dropped
    finally:
        sub.close()
        broker.stop()


# -- TLS with client certificates and a password ---------------------------------------------------------------
def test_tls_with_client_certificate_and_password(tmp_path):
    pki = make_pki(tmp_path / "pki")
    passwd = tmp_path / "broker" / "passwd"
    passwd.parent.mkdir(parents=True)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gateway", "s3cret pass"], check=True,
                   capture_output=True)
    os.chmod(passwd, 0o600)
    listener = (f"cafile {pki['ca']}\ncertfile {pki['server_cert']}\nkeyfile {pki['server_key']}\n"
                f"require_certificate true\npassword_file {passwd}\n")
    with Mosquitto(tmp_path / "broker", listener_extra=listener, anonymous=False) as broker:
        sub = Subscriber(broker.port, tls={"ca_certs": pki["ca"], "certfile": pki["client_cert"],
                                           "keyfile": pki["client_key"]}, auth=("gateway", "s3cret pass"))
        sub.wait_connected()
        (tmp_path / "mqtt.pass").write_text("s3cret pass\n")
        tls = {"enabled": True, "ca_file": pki["ca"], "cert_file": pki["client_cert"], "key_file": pki["client_key"]}
        path = mqtt_config(tmp_path, broker.port, username="gateway", password_file=str(tmp_path / "mqtt.pass"),
                           tls=tls)
        with GatewayThread(path) as gt:
            assert f"mqtt: mqtts://127.0.0.1:{broker.port}" in gt.gateway.endpoints()
            sub.wait_for(lambda s: any(t.endswith("/cells") for t, _, _ in s.snapshot()), what="data over TLS")
        # a wrong password: refused, reported, nothing lost (it waits in the queue)
        path = mqtt_config(tmp_path, broker.port, username="gateway", password="wrong", tls=tls)
        with GatewayThread(path) as gt:
            gt.wait_for(lambda: "refused" in gt.gateway.status()["mqtt"].get("last_error", ""), timeout=15,
                        what="the refusal to be reported")
            assert not gt.gateway.status()["mqtt"]["connected"]
        sub.close()


def test_missing_certificate_file_names_the_key(tmp_path):
    from gateway.errors import ConfigError

    path = mqtt_config(tmp_path, 1883, tls={"enabled": True, "ca_file": "nope.pem"})
    gt = GatewayThread(path)
    try:
        with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: file .*nope.pem does not exist"):
            gt.start()
    finally:
        gt.stop()


def test_last_will_marks_a_killed_gateway_offline(tmp_path, bmsgw_env, venv_bin):
    with Mosquitto(tmp_path / "broker") as broker:
        path = mqtt_config(tmp_path, broker.port, keepalive_s=5)
        proc = subprocess.Popen([str(venv_bin / "bmsgw"), "run", "--config", str(path)], env=bmsgw_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sub = Subscriber(broker.port, topic="bmsgw/demo/status", client_id="will-watcher")
            sub.wait_for(lambda s: any(p.get("state") == "online" for _, p, _ in s.snapshot()), timeout=30,
                         what="online status")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            sub.wait_for(lambda s: s.snapshot()[-1][1].get("state") == "offline", what="the last will")
            assert sub.snapshot()[-1][1]["reason"] == "connection lost"
            sub.close()
            # retained: a dashboard that connects later still sees it
            late = Subscriber(broker.port, topic="bmsgw/demo/status", client_id="late")
            late.wait_for(lambda s: s.snapshot(), what="the retained status")
            topic, payload, retained = late.snapshot()[0]
            assert retained and payload["state"] == "offline"
            late.close()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_payloads_are_strict_json_with_null_for_bad_values(tmp_path):
    """Composed from the point map without a broker: NaN and stale readings become null, never 0 or NaN."""
    import json

    from gateway.app import Gateway
    from gateway.outputs.mqtt.face import PayloadBuilder
    from gateway.points import PointRef, Quality, Reading

    gw = Gateway(mqtt_config(tmp_path, 1883), simulator=False, port_overrides={"bus1": "(not opened)"})
    now = 1700000000.0
    gw.store.put_many([
        (PointRef("cell.voltage", 1, 1), Reading(13.2, Quality.GOOD, now)),
        (PointRef("cell.voltage", 1, 2), Reading(float("nan"), Quality.GOOD, now)),
        (PointRef("cell.voltage", 1, 3), Reading(12.9, Quality.COMM_FAIL, now)),
        (PointRef("string.current", 1), Reading(-12.30000001, Quality.GOOD, now)),
        (PointRef("string.voltage", 1), Reading(float("inf"), Quality.GOOD, now)),
    ])
    msgs = {topic: doc for topic, doc, _ in PayloadBuilder(gw, "bmsgw", "string").messages(gw.store.snapshot(), now)}
    for doc in msgs.values():
        json.dumps(doc, allow_nan=False)
    cells = msgs["bmsgw/demo/string/1/cells"]
    assert cells["values"]["voltage"] == [13.2, None, None, None]
    assert cells["quality"] == {"voltage": {"3": "COMM_FAIL"}}
    values = msgs["bmsgw/demo/string/1"]["values"]
    assert values["current"] == {"value": -12.3, "unit": "A", "ts": now}
    assert values["voltage"]["value"] is None
    assert set(msgs) == {"bmsgw/demo/string/1/cells", "bmsgw/demo/string/1"}  # nothing read elsewhere yet
