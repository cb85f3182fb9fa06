"""Home Assistant MQTT discovery against a real Mosquitto: the configs are retained and carry the fields Home
Assistant requires (and only fields it knows, by their full names), every state topic carries a message whose
value template renders (Jinja2, as Home Assistant renders it: ``value_json`` is the message), Home Assistant's
birth message gets the configs again, a removed string's configs are cleared, and discovery changes apply live."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.outputs.mqtt.discovery import RECORD_FILE
from gateway.points import PointRef, Quality
from tests.mqtt_peers import Mosquitto, Subscriber
from tests.support import GatewayThread, small_bank, write_config

# -- what Home Assistant accepts in a single-component discovery message ---------------------------------------
# Written from Home Assistant's documentation (github.com/home-assistant/home-assistant.io, source/_integrations/):
#   https://www.home-assistant.io/integrations/sensor.mqtt/#configuration          (sensor.mqtt.markdown)
#   https://www.home-assistant.io/integrations/binary_sensor.mqtt/#configuration   (binary_sensor.mqtt.markdown)
#   https://www.home-assistant.io/integrations/mqtt/#discovery-messages            (topic format, origin, payload)
#   https://www.home-assistant.io/integrations/sensor/#device-class                (device classes and their units)
#   https://www.home-assistant.io/integrations/binary_sensor/#device-class
# `platform` is "only allowed and required in device discovery messages", so it is not allowed here.
COMMON_OPTIONS = {
    "availability", "availability_mode", "availability_template", "availability_topic", "device",
    "enabled_by_default", "encoding", "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "origin", "payload_available",
    "payload_not_available", "qos", "state_topic", "unique_id", "value_template",
}
ALLOWED = {
    "sensor": COMMON_OPTIONS | {"device_class", "last_reset_value_template", "options", "state_class",
                                "suggested_display_precision", "unit_of_measurement"},
    "binary_sensor": COMMON_OPTIONS | {"device_class", "off_delay", "payload_off", "payload_on"},
}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}}
DEVICE_OPTIONS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
                  "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device"}
AVAILABILITY_OPTIONS = {"payload_available", "payload_not_available", "topic", "value_template"}
ORIGIN_OPTIONS = {"name", "sw_version", "support_url"}
# a few of the abbreviations the discovery page lists: we write full names only
ABBREVIATIONS = {"avty", "avty_t", "dev", "dev_cla", "en", "ent_cat", "ic", "o", "ops", "pl_avail", "pl_not_avail",
                 "pl_off", "pl_on", "stat_cla", "stat_t", "sug_dsp_prc", "uniq_id", "unit_of_meas", "val_tpl",
                 "ids", "mf", "mdl", "sw", "t"}
SENSOR_DEVICE_CLASS_UNITS = {  # the classes this gateway may use, with the units the sensor page allows
    "battery": {"%"}, "current": {"A", "mA"}, "duration": {"d", "h", "min", "s", "ms"}, "humidity": {"%"},
    "temperature": {"°C", "°F", "K"}, "voltage": {"V", "mV", "µV", "kV", "MV"},
}
BINARY_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config$")
# Home Assistant's MQTT entities read the template's output "None" as "no value" (state unknown)
NONE = "None"

TEMPLATES = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)  # HA's templates are sandboxed too


def render(template: str, payload: dict | bytes) -> str:
    value = payload if isinstance(payload, bytes) else json.dumps(payload)
    value_json = payload if isinstance(payload, dict) else None
    return TEMPLATES.from_string(template).render(value=value, value_json=value_json).strip()


def problems(topic: str, doc: dict, devices: set[str]) -> list[str]:
    """Everything Home Assistant's discovery would refuse or ignore in one config message."""
    m = TOPIC.match(topic)
    if not m:
        return [f"{topic}: not <prefix>/<component>/<node_id>/<object_id>/config"]
    component = m.group(1)
    out = [f"{topic}: abbreviated option {k}" for k in doc if k in ABBREVIATIONS]
    out += [f"{topic}: unknown option {k}" for k in doc if k not in ALLOWED[component]]
    out += [f"{topic}: {k} is required" for k in REQUIRED[component] if not doc.get(k)]
    if "availability" in doc and "availability_topic" in doc:
        out.append(f"{topic}: availability and availability_topic together")
    for avty in doc.get("availability", []):
        out += [f"{topic}: availability option {k}" for k in avty if k not in AVAILABILITY_OPTIONS]
        if not avty.get("topic"):
            out.append(f"{topic}: availability without a topic")
    origin = doc.get("origin", {})
    out += [f"{topic}: origin option {k}" for k in origin if k not in ORIGIN_OPTIONS]
    if "origin" in doc and not origin.get("name"):
        out.append(f"{topic}: origin without a name")
    device = doc.get("device")
    if not doc.get("unique_id"):
        out.append(f"{topic}: a device needs a unique_id")
    if not isinstance(device, dict) or not (device.get("identifiers") or device.get("connections")):
        out.append(f"{topic}: device without identifiers or connections")
    else:
        out += [f"{topic}: device option {k}" for k in device if k not in DEVICE_OPTIONS]
        if not device.get("name"):  # entities share a device by identifiers and name
            out.append(f"{topic}: device without a name")
        if "via_device" in device and device["via_device"] not in devices:
            out.append(f"{topic}: via_device {device['via_device']} is no announced device")
    dclass, unit = doc.get("device_class"), doc.get("unit_of_measurement")
    if component == "sensor":
        if "options" in doc:
            if not doc["options"] or dclass != "enum" or "state_class" in doc or "unit_of_measurement" in doc:
                out.append(f"{topic}: options need device_class enum, no state_class and no unit")
        elif dclass == "enum":
            out.append(f"{topic}: an enum sensor without options")
        elif dclass is not None and unit not in SENSOR_DEVICE_CLASS_UNITS.get(dclass, set()):
            out.append(f"{topic}: unit {unit!r} is not one of device class {dclass}")
        if "state_class" in doc and doc["state_class"] not in STATE_CLASSES:
            out.append(f"{topic}: state_class {doc['state_class']}")
        if doc.get("entity_category", "diagnostic") != "diagnostic":
            out.append(f"{topic}: a sensor's entity_category must be diagnostic")
    elif dclass is not None and dclass not in BINARY_DEVICE_CLASSES:
        out.append(f"{topic}: binary_sensor device class {dclass}")
    return out


def rendered_problem(topic: str, doc: dict, result: str) -> str | None:
    """The template's output is something the entity takes: a number, one of its options, its on/off payload."""
    if topic.startswith("homeassistant/binary_sensor/"):
        ok = {doc.get("payload_on", "ON"), doc.get("payload_off", "OFF"), NONE}
        return None if result in ok else f"{topic}: {result!r} is not one of {sorted(ok)}"
    if "options" in doc:
        return None if result in doc["options"] + [NONE] else f"{topic}: {result!r} not in {doc['options']}"
    try:
        float(result)
    except ValueError:
        return None if result == NONE else f"{topic}: {result!r} is not a number"
    return None


# -- harness ---------------------------------------------------------------------------------------------------
def ha_config(tmp_path, port: int, strings: int = 2, cells: int = 3, layout: str = "string", username: str = "",
              password_file: str = "", profile: str = "bm-bcs-12", **discovery):
    over = {"site": {"id": "demo", "name": "Demo room"}, "prometheus": {"enabled": False},
            # the ohmic values and the strings' derived values (analytics) soon
            "gateway": {"poll": {"slow_s": 1}}, "analytics": {"interval_s": 0.5},
            "alarms": {"di": [{"channel": 1, "name": "Smoke detector", "active": "closed", "severity": "critical"}]},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "interval_s": 0.25, "layout": layout,
                     "reconnect_min_s": 1, "reconnect_max_s": 1,
                     **({"username": username, "password_file": password_file} if username else {}),
                     "discovery": {"enabled": True, **discovery}}}
    base = small_bank(strings=strings, cells=cells, profile=profile)
    if profile == "bm-bcs-02":  # the default bank's cells
        for s in base["strings"]:
            s["battery"] = {"model": "2V 500Ah VRLA", "nominal_voltage": 2, "capacity_ah": 500}
    return write_config(tmp_path, base=base, overrides=over)


def discovery_status(gt: GatewayThread) -> dict:
    return gt.gateway.status()["mqtt"].get("discovery", {})


def announced(gt: GatewayThread, count: int = 1) -> None:
    gt.wait_for(lambda: discovery_status(gt).get("announcements", 0) >= count, what="the discovery announcement")


def retained(port: int, topic: str, client_id: str, expect: int | None = None) -> dict[str, dict | bytes]:
    """What a client subscribing now gets: the retained messages under ``topic``."""
    sub = Subscriber(port, topic=topic, client_id=client_id)
    try:
        sub.wait_connected()
        if expect:
            sub.wait_for(lambda s: len(s.snapshot()) >= expect, what=f"{expect} retained messages")
        time.sleep(0.3)  # retained messages arrive right after the subscription: anything more comes now
        msgs = sub.snapshot()
    finally:
        sub.close()
    assert all(r for _t, _p, r in msgs), "a message that is not retained"
    return {t: p for t, p, _r in msgs}


def latest(sub: Subscriber) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for topic, payload, _ in sub.snapshot():
        if isinstance(payload, dict):
            out[topic] = payload
    return out


# derived points a floating simulated bank has no value for (asserted below, so the list cannot hide a bug)
UNKNOWN_WHILE_FLOATING = ("soh", "runtime_remaining")


# 12 V blocs, and the default bank's 2 V cells (other scales, another model)
@pytest.mark.parametrize(("layout", "profile", "model"), [("string", "bm-bcs-12", "12V VRLA"),
                                                         ("cell", "bm-bcs-02", "2V 500Ah VRLA")])
def test_configs_are_retained_valid_and_every_template_renders_the_published_value(tmp_path, layout, profile, model):
    strings, cells = (2, 3) if layout == "string" else (1, 2)
    with Mosquitto(tmp_path / "broker") as broker:
        states = Subscriber(broker.port, topic="bmsgw/#", client_id="states")
        states.wait_connected()
        with GatewayThread(ha_config(tmp_path, broker.port, strings, cells, layout, profile=profile)) as gt:
            announced(gt)
            status = discovery_status(gt)
            expected = 13 + strings * (11 + 3 * cells)  # gateway and room, per string, per battery
            assert status["configs"] == expected and status["cleared"] == 0 and status["prefix"] == "homeassistant"
            configs = retained(broker.port, "homeassistant/#", "late-ha", expect=expected)
            assert len(configs) == expected
            docs = {t: p for t, p in configs.items() if isinstance(p, dict)}
            assert len(docs) == expected, "every config is a JSON object"
            devices = {i for d in docs.values() for i in d["device"]["identifiers"]}
            assert devices == {"bmsgw_demo"} | {f"bmsgw_demo_string{s}" for s in range(1, strings + 1)}
            found = [p for t, d in docs.items() for p in problems(t, d, devices)]
            assert found == []
            unique_ids = [d["unique_id"] for d in docs.values()]
            assert len(set(unique_ids)) == len(unique_ids)

            def renders(topic: str, doc: dict) -> str | None:
                msg = latest(states).get(doc["state_topic"])
                return None if msg is None else render(doc["value_template"], msg)

            def known(topic: str, doc: dict) -> bool:
                return topic.split("/")[3].split("_", 1)[-1] in UNKNOWN_WHILE_FLOATING or renders(topic, doc) not in (
                    None, NONE)

            # every entity has a value (the ohmic values come with the slow poll)
            gt.wait_for(lambda: all(known(t, d) for t, d in docs.items()),
                        what="a value for every entity: " + ", ".join(t for t, d in docs.items() if not known(t, d)))
            results = {t: renders(t, d) for t, d in docs.items()}
            assert [p for t, d in docs.items() if (p := rendered_problem(t, d, results[t] or ""))] == []
            store = gt.gateway.store
            for name in UNKNOWN_WHILE_FLOATING:  # really unknown: published as null, rendered as None
                assert store.get(PointRef(f"string.{name}", 1)).quality is not Quality.GOOD \
                    or store.value(PointRef(f"string.{name}", 1)) is None
                assert results[f"homeassistant/sensor/bmsgw_demo/string1_{name}/config"] == NONE
            # the values are the gateway's, in Home Assistant's units
            voltage = float(results["homeassistant/sensor/bmsgw_demo/string1_voltage/config"])
            assert abs(voltage - store.value(PointRef("string.voltage", 1))) < 0.05 * voltage
            cell2 = float(results["homeassistant/sensor/bmsgw_demo/string1_battery2_voltage/config"])
            assert abs(cell2 - store.value(PointRef("cell.voltage", 1, 2))) < 0.05 * cell2
            ohmic = float(results["homeassistant/sensor/bmsgw_demo/string1_battery2_ohmic/config"])
            assert abs(ohmic - 1000 * store.value(PointRef("cell.ohmic", 1, 2))) < 0.1 * ohmic  # milliohm
            assert results["homeassistant/sensor/bmsgw_demo/string1_state/config"] == "float"
            assert results["homeassistant/binary_sensor/bmsgw_demo/string1_alarm/config"] in ("ON", "OFF")
            assert results["homeassistant/binary_sensor/bmsgw_demo/di1/config"] == "open"  # payload_off
            status_msg = latest(states)["bmsgw/demo/status"]
        # the gateway stops: its retained status turns every entity unavailable (the will says the same)
        states.wait_for(lambda s: latest(s)["bmsgw/demo/status"]["state"] != "online", what="the offline status")
        offline_msg = latest(states)["bmsgw/demo/status"]
        states.close()
    # the samples Home Assistant builds its entities from
    volt = docs["homeassistant/sensor/bmsgw_demo/string1_voltage/config"]
    assert volt["device_class"] == "voltage" and volt["unit_of_measurement"] == "V"
    assert volt["state_class"] == "measurement" and volt["name"] == "Voltage"
    assert volt["device"] == {"identifiers": ["bmsgw_demo_string1"], "name": "String 1", "manufacturer": "bmsgw",
                              "model": f"{cells} x {model}", "sw_version": volt["origin"]["sw_version"],
                              "via_device": "bmsgw_demo"}
    assert volt["availability"] == [{"topic": "bmsgw/demo/status", "value_template": "{{ value_json['state'] }}",
                                     "payload_available": "online", "payload_not_available": "offline"}]
    assert render(volt["availability"][0]["value_template"], status_msg) == "online"
    assert render(volt["availability"][0]["value_template"], offline_msg) == "offline"
    state = docs["homeassistant/sensor/bmsgw_demo/string1_state/config"]
    assert state["device_class"] == "enum" and state["options"] == ["unknown", "float", "charging", "discharging",
                                                                    "rest"]
    battery = docs["homeassistant/sensor/bmsgw_demo/string1_battery1_temperature/config"]
    assert battery["enabled_by_default"] is False and battery["unit_of_measurement"] == "°C"
    assert all(d.get("enabled_by_default", True) for t, d in docs.items() if "_battery" not in t)
    smoke = docs["homeassistant/binary_sensor/bmsgw_demo/di1/config"]
    assert smoke["name"] == "Smoke detector (DI 1)" and (smoke["payload_on"], smoke["payload_off"]) == ("closed",
                                                                                                       "open")
    assert docs["homeassistant/sensor/bmsgw_demo/ambient_temperature/config"]["device"]["identifiers"] == [
        "bmsgw_demo"]


def test_templates_render_none_for_what_is_not_known_and_never_fail(tmp_path):
    """A message before the first poll, a stale value, a battery missing from the list: 'None' (unknown in Home
    Assistant), not 0 and not a template error."""
    from gateway.app import Gateway
    from gateway.outputs.mqtt.discovery import DiscoveryPlan
    from gateway.outputs.mqtt.face import PayloadBuilder

    gw = Gateway(ha_config(tmp_path, 1883), simulator=False,
                 port_overrides={"bus1": "(not opened)", "bus2": "(not opened)"})
    builder = PayloadBuilder(gw, "bmsgw", "string")
    plan = DiscoveryPlan(gw, gw.config.section("mqtt")["discovery"], builder, builder.topic("status"))
    configs = {t: json.loads(p) for t, p in plan.configs().items()}
    empty = {"site": "demo", "ts": 1.0, "values": {}}
    stale = {"site": "demo", "ts": 1.0, "string": 1, "batteries": 3, "values": {
        "voltage": {"value": None, "unit": "V", "ts": 1.0, "quality": "STALE"},
        "state": {"value": None, "ts": 1.0, "quality": "COMM_FAIL"},
        "alarm_level": {"value": None, "ts": 1.0, "quality": "STALE"},
        "io.di": [{"channel": 1, "value": None, "ts": 1.0, "quality": "STALE"}],
        "ohmic": [None], "temperature": []}}
    for topic, doc in configs.items():
        for msg in (empty, stale):
            assert render(doc["value_template"], msg) == NONE, topic
    assert render(configs["homeassistant/binary_sensor/bmsgw_demo/string1_alarm/config"]["value_template"],
                  {"values": {"alarm_level": {"value": 1.0, "state": "warning"}}}) == "ON"


def test_home_assistant_birth_reannounces_and_removed_strings_and_discovery_off_clear_the_configs(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        ha = Subscriber(broker.port, topic="homeassistant/#", client_id="ha")
        ha.wait_connected()
        per_string = 11 + 3 * 3
        with GatewayThread(ha_config(tmp_path, broker.port, strings=2)) as gt:
            announced(gt)
            gt.gateway.service("mqtt").uploader.birth_min_interval_s = 0  # the birth is answered at once
            assert len(retained(broker.port, "homeassistant/+/bmsgw_demo/+/config", "late1")) == 13 + 2 * per_string
            first = len(ha.snapshot())
            # Home Assistant restarts: its birth message asks for the configs again
            ha.client.publish("homeassistant/status", "online", qos=1)
            ha.wait_for(lambda s: len(s.snapshot()) >= first + 13 + 2 * per_string, what="the configs again")
            announced(gt, 2)
        record = json.loads((tmp_path / "var" / RECORD_FILE).read_text())
        assert len(record["topics"]) == 13 + 2 * per_string
        # string 2 leaves the config: its configs are cleared at the next start (the record remembers them)
        with GatewayThread(ha_config(tmp_path, broker.port, strings=1)) as gt:
            announced(gt)
            assert discovery_status(gt)["cleared"] == per_string
            now = retained(broker.port, "homeassistant/#", "late2")
            assert len(now) == 13 + per_string and not any("string2" in t for t in now)
        cleared = [t for t, p, _ in ha.snapshot() if p == b""]
        assert len(cleared) == per_string and all("/bmsgw_demo/string2_" in t for t in cleared)
        assert len(json.loads((tmp_path / "var" / RECORD_FILE).read_text())["topics"]) == 13 + per_string
        # discovery switched off while the gateway was stopped: the next start clears everything
        with GatewayThread(ha_config(tmp_path, broker.port, strings=1, enabled=False)) as gt:
            gt.wait_for(lambda: not (tmp_path / "var" / RECORD_FILE).exists(), what="the record to be emptied")
            assert "discovery" not in gt.gateway.status()["mqtt"]
        assert retained(broker.port, "homeassistant/#", "late3") == {}
        ha.close()


def test_a_storm_of_birth_messages_is_answered_once_and_not_sooner_than_the_minimum_interval(tmp_path):
    """Anyone who may publish on the broker could send Home Assistant's birth message in a loop: each would make
    the gateway send all its configs (1 MB on a full bank).  Births while an announcement is due are answered by
    it; the next one waits until the minimum interval since the last announcement has passed."""
    interval = 3.0
    with Mosquitto(tmp_path / "broker") as broker, \
            GatewayThread(ha_config(tmp_path, broker.port, strings=1, cells=2)) as gt:
        count = 13 + 11 + 3 * 2
        announced(gt)
        uploader = gt.gateway.service("mqtt").uploader
        uploader.birth_min_interval_s = interval
        ha = Subscriber(broker.port, topic="homeassistant/+/bmsgw_demo/+/config", client_id="ha")
        ha.wait_connected()
        ha.wait_for(lambda s: len(s.snapshot()) >= count, what="the retained configs")
        for _ in range(20):
            ha.client.publish("homeassistant/status", "online", qos=1)
        announced(gt, 2)
        second = uploader._announced_at  # when the second announcement started
        ha.client.publish("homeassistant/status", "online", qos=1)  # right after an announcement: waits
        announced(gt, 3)
        assert uploader._announced_at - second >= interval
        ha.wait_for(lambda s: len(s.snapshot()) >= 3 * count, what="the configs of three announcements")
        assert discovery_status(gt)["announcements"] == 3 and len(ha.snapshot()) == 3 * count
        ha.close()


def test_discovery_changes_apply_live_on_the_same_connection(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker, \
            GatewayThread(ha_config(tmp_path, broker.port, strings=1, cells=2)) as gt:
        gw = gt.gateway
        announced(gt)
        uploader = gw.service("mqtt").uploader
        uploader.birth_min_interval_s = 0  # the birth below is answered at once
        count = 13 + 11 + 3 * 2
        assert len(retained(broker.port, "homeassistant/#", "a")) == count

        def reload(**discovery):
            doc = copy.deepcopy(gw.config.data)
            doc["mqtt"]["discovery"].update(discovery)
            return gt.call(gw.reload(gw.check(doc)), timeout=60)

        # another prefix: the configs move, the old ones are cleared
        report = reload(prefix="ha/discovery")
        assert "mqtt" in report.applied and report.restart_required == [] and report.failed == {}
        assert any("ha/discovery/" in n for n in report.notes)
        assert gw.service("mqtt").uploader is uploader, "the connection stays"
        gt.wait_for(lambda: discovery_status(gt)["announcements"] >= 2 and discovery_status(gt)["announced"],
                    what="the announcement under the new prefix")
        assert discovery_status(gt)["cleared"] == count
        assert retained(broker.port, "homeassistant/#", "b") == {}
        moved = retained(broker.port, "ha/discovery/#", "c", expect=count)
        assert len(moved) == count and all(t.startswith("ha/discovery/") for t in moved)
        # the batteries' entities dropped
        reload(batteries=False)
        gt.wait_for(lambda: discovery_status(gt)["announcements"] >= 3, what="the announcement without batteries")
        assert len(retained(broker.port, "ha/discovery/#", "d")) == count - 3 * 2
        # Home Assistant's birth on the new prefix is followed
        ha = Subscriber(broker.port, topic="ha/discovery/#", client_id="ha2")
        ha.wait_connected()
        before = len(ha.snapshot())
        ha.client.publish("ha/discovery/status", "online", qos=1)
        ha.wait_for(lambda s: len(s.snapshot()) >= before + count - 6, what="configs after the birth message")
        ha.close()
        # discovery off: everything cleared, the record emptied, nothing announced any more
        report = reload(enabled=False)
        assert any("cleared" in n for n in report.notes)
        gt.wait_for(lambda: not (tmp_path / "var" / RECORD_FILE).exists(), what="the configs to be cleared")
        assert retained(broker.port, "ha/discovery/#", "e") == {}
        assert gw.service("mqtt").uploader is uploader and uploader.connected


def test_the_readmes_broker_acl_lets_the_gateway_announce_and_answer_home_assistant(tmp_path):
    """The Mosquitto ACL the README gives the gateway's user, on a broker with passwords: the configs and the
    values reach Home Assistant's user, and Home Assistant's birth message reaches the gateway."""
    from tests.conftest import ROOT

    readme = (ROOT / "gateway" / "outputs" / "mqtt" / "README.md").read_text()
    acl_text = re.search(r"Mosquitto's ACL file.*?```\n(.*?)```", readme, re.S).group(1)
    assert acl_text.startswith("user bmsgw\n")
    folder = tmp_path / "broker"
    folder.mkdir()
    passwd, acl = folder / "passwd", folder / "acl"
    for i, (user, password) in enumerate([("bmsgw", "gw pass"), ("homeassistant", "ha pass")]):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(passwd), user, password], check=True,
                       capture_output=True)
    os.chmod(passwd, 0o600)
    acl.write_text(acl_text + "\nuser homeassistant\ntopic readwrite homeassistant/#\ntopic read bmsgw/#\n")
    (tmp_path / "mqtt.pass").write_text("gw pass\n")
    with Mosquitto(folder, extra=f"password_file {passwd}\nacl_file {acl}", anonymous=False) as broker:
        ha = Subscriber(broker.port, topic="#", client_id="ha", auth=("homeassistant", "ha pass"))
        ha.wait_connected()
        path = ha_config(tmp_path, broker.port, strings=1, cells=2, username="bmsgw",
                         password_file=str(tmp_path / "mqtt.pass"))
        count = 13 + 11 + 3 * 2
        with GatewayThread(path) as gt:
            announced(gt)
            gt.gateway.service("mqtt").uploader.birth_min_interval_s = 0
            ha.wait_for(lambda s: sum(t.startswith("homeassistant/") for t, _, _ in s.snapshot()) >= count
                        and "bmsgw/demo/string/1" in latest(s), what="the configs and the values")
            ha.client.publish("homeassistant/status", "online", qos=1)
            announced(gt, 2)  # the gateway read the birth message
        assert sum(t.startswith("homeassistant/") and t.endswith("/config") for t, _, _ in ha.snapshot()) == 2 * count
        ha.close()
