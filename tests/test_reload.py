"""Live reconfiguration (Gateway.reload): a saved change applies while polling goes on, and the answer says
honestly what was applied, what waits for a restart and what failed."""
from __future__ import annotations

import copy
import socket
import struct
import time

import pytest
import requests
import yaml

from gateway.app import Gateway
from gateway.config import CORE_SCHEMA
from tests.mqtt_peers import Mosquitto, Subscriber
from tests.snmp_support import NetSnmp, free_udp_port, v2c
from tests.support import GatewayThread, free_port, small_bank, write_config


def put_config(gt: GatewayThread, doc: dict) -> requests.Response:
    web = gt.gateway.service("web")
    token = web.ctx.users.add_token(f"reload-{time.monotonic_ns()}", "admin")[1]
    return requests.put(web.url + "api/v1/config", json={"config": doc},
                        headers={"Authorization": f"Bearer {token}"}, timeout=60)


def document(gt: GatewayThread) -> dict:
    return yaml.safe_load(gt.gateway.config.path.read_text())


def closed_by_the_server(sock: socket.socket) -> bool:
    """The server ended the connection (closed or reset it) instead of answering."""
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def float_voltage_alarms(gw: Gateway) -> list[dict]:
    rows = gw.pm.hook.bmsgw_alarms(gateway=gw, active=True, limit=500) or []
    return [r for r in rows if r["point"] == "cell.voltage"]


def test_a_lowered_float_setpoint_saved_through_the_api_raises_alarms_without_a_restart(tmp_path):
    path = write_config(tmp_path, base=small_bank(1, 4))
    with GatewayThread(path) as gt:
        gw = gt.gateway
        generation = gw.store.generation
        assert float_voltage_alarms(gw) == []
        doc = document(gt)
        # every 12 V battery floats near 13.5 V: a warning setpoint at 13.0 V with no on-delay is crossed by all
        doc.setdefault("alarms", {}).setdefault("rules", {})["cell_voltage_float"] = {
            "on_delay_s": 0, "high": {"warning": 13.0, "critical": 14.5}}
        r = put_config(gt, doc)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert "alarms" in answer["applied"] and answer["restart_required"] == [] and answer["failed"] == {}
        gt.wait_for(lambda: len(float_voltage_alarms(gw)) == 4, what="a float-voltage alarm on every battery")
        assert {a["severity"] for a in float_voltage_alarms(gw)} == {"warning"}
        assert all(a["threshold"] == 13.0 for a in float_voltage_alarms(gw))
        assert gw.store.generation > generation  # polling never stopped
        # raised back: the alarms clear (after the hysteresis) without a restart either
        doc["alarms"]["rules"]["cell_voltage_float"] = {"on_delay_s": 0, "off_delay_s": 0,
                                                        "high": {"warning": 14.2, "critical": 14.5}}
        assert put_config(gt, doc).status_code == 200
        gt.wait_for(lambda: float_voltage_alarms(gw) == [], what="the float-voltage alarms to clear")


def test_an_snmp_community_change_answers_with_the_new_one_at_once(tmp_path):
    port = free_udp_port()
    path = write_config(tmp_path, base=small_bank(1, 2),
                        overrides={"snmp": {"listen": f"127.0.0.1:{port}", "v2c": {"community": "public"}}})
    snmp = NetSnmp(port, tmp_path)
    with GatewayThread(path, wait_points=None) as gt:
        assert snmp.get(v2c("public"), "SNMPv2-MIB::sysName.0")
        doc = document(gt)
        doc["snmp"]["v2c"] = {"community": "night-shift-42"}
        r = put_config(gt, doc)
        assert r.status_code == 200 and "snmp" in r.json()["applied"], r.text
        assert snmp.get(v2c("night-shift-42"), "SNMPv2-MIB::sysName.0")
        old = snmp.run("snmpget", v2c("public"), "SNMPv2-MIB::sysName.0", check=False)
        assert old.returncode != 0 and "Timeout" in old.stderr


def test_a_modbus_allow_list_change_disconnects_and_refuses_the_old_client(tmp_path):
    port = free_port()
    path = write_config(tmp_path, base=small_bank(1, 2), overrides={"modbus_tcp": {"listen": f"127.0.0.1:{port}"}})
    request = struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 10000, 2)  # FC4: battery 1 and 2 voltage
    with GatewayThread(path) as gt:
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(request)
        assert client.recv(64)[7] == 4  # answered
        doc = document(gt)
        doc["modbus_tcp"]["allow_from"] = ["127.0.0.2"]
        r = put_config(gt, doc)
        assert r.status_code == 200 and "modbus_tcp" in r.json()["applied"], r.text
        assert any("no longer in allow_from" in n for n in r.json()["notes"])
        assert closed_by_the_server(client)  # the old client's connection
        client.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
            again.sendall(request)
            assert closed_by_the_server(again)  # refused at once
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)) as ok:
            ok.sendall(request)
            assert ok.recv(64)[7] == 4


def test_a_modbus_listen_change_moves_the_server_and_a_busy_address_keeps_the_old_one(tmp_path):
    port, new_port = free_port(), free_port()
    path = write_config(tmp_path, base=small_bank(1, 2), overrides={"modbus_tcp": {"listen": f"127.0.0.1:{port}"}})
    with GatewayThread(path, wait_points=None) as gt, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        doc = document(gt)
        doc["modbus_tcp"]["listen"] = f"127.0.0.1:{busy.getsockname()[1]}"
        answer = put_config(gt, doc).json()
        assert "modbus_tcp.listen" in answer["failed"] and "in use" in answer["failed"]["modbus_tcp.listen"]
        assert f"still listening on modbus-tcp://127.0.0.1:{port}" in answer["failed"]["modbus_tcp.listen"]
        socket.create_connection(("127.0.0.1", port), timeout=10).close()  # the old address still serves
        doc["modbus_tcp"]["listen"] = f"127.0.0.1:{new_port}"
        answer = put_config(gt, doc).json()
        assert "modbus_tcp" in answer["applied"] and answer["failed"] == {}
        socket.create_connection(("127.0.0.1", new_port), timeout=10).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)


def test_an_mqtt_host_change_reconnects_to_the_new_broker(tmp_path):
    with Mosquitto(tmp_path / "a") as first, Mosquitto(tmp_path / "b") as second:
        path = write_config(tmp_path, base=small_bank(1, 2), overrides={
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": first.port, "interval_s": 0.5}})
        sub = Subscriber(second.port, topic="bmsgw/+/status", client_id="reload-test")
        sub.wait_connected()
        try:
            with GatewayThread(path, wait_points=None) as gt:
                gt.wait_for(lambda: gt.gateway.service("mqtt").uploader.connected, what="the first broker")
                doc = document(gt)
                doc["mqtt"]["port"] = second.port
                r = put_config(gt, doc)
                assert r.status_code == 200 and "mqtt" in r.json()["applied"], r.text
                assert any(f"127.0.0.1:{second.port}" in n for n in r.json()["notes"])
                gt.wait_for(lambda: any(isinstance(p, dict) and p.get("state") == "online"
                                        for _t, p, _r in sub.snapshot()), what="online on the second broker")
                assert gt.gateway.service("mqtt").uploader.port == second.port
        finally:
            sub.close()


def mutate(schema: dict, value, path: str) -> tuple[str, object] | None:
    """One valid change to ``value`` under ``schema`` (depth first: a boolean flipped, a number or an enum
    moved), with the key path changed; None when this part of the schema offers none."""
    kind = schema.get("type")
    if "enum" in schema:
        others = [v for v in schema["enum"] if v != value]
        return (path, others[0]) if others else None
    if kind == "boolean":
        return path, not value
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 10**6)
        new = value + 1 if value is not None and value + 1 <= hi else lo
        return (path, new) if new != value else None
    if kind == "object" and isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            found = mutate(sub, value.get(key, sub.get("default")), f"{path}.{key}")
            if found is not None:
                return found
    if kind == "array" and isinstance(value, list) and value and isinstance(schema.get("items"), dict):
        return mutate(schema["items"], value[0], f"{path}[0]")
    return None


def set_path(doc: dict, path: str, value) -> None:
    node = doc
    parts = path.replace("[0]", ".0").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value


# What the generic mutation cannot say for a section: a change a user might make there, valid as it is.
MANUAL = {"plugins": ("plugins.disable", ["gateway.outputs.nothing_by_this_name"]), "site": ("site.name", "Room B"),
          "simulator": ("simulator.seed", 2), "bank": ("bank.devices[0].address", 210)}


def test_every_config_section_is_applied_live_or_reported_as_waiting_for_a_restart(tmp_path):
    """Enumerated from the schema, so a new section cannot be forgotten: change something in each, and the
    answer must name the section as applied or list it (or a key of it) under restart_required."""
    path = write_config(tmp_path, base=small_bank(1, 2))
    with GatewayThread(path, wait_points=None) as gt:
        gw = gt.gateway
        schema = {**CORE_SCHEMA, **gw.extra_sections}
        live = copy.deepcopy(gw.config.data)
        missed = []
        for section, sub in schema.items():
            change = MANUAL.get(section) or mutate(sub, live.get(section), section)
            if change is None:
                missed.append(f"{section}: no change found (add one to MANUAL)")
                continue
            doc = copy.deepcopy(live)
            set_path(doc, *change)
            try:
                new = gw.check(doc)
            except Exception as exc:
                missed.append(f"{section}: the change {change} does not pass the checks: {exc}")
                continue
            report = gt.call(gw.reload(new), timeout=60)
            said = set(report.applied) | {k.split(".")[0].split("[")[0] for k in report.restart_required}
            said |= {k.split(".")[0] for k in report.failed}
            if section not in report.changed or section not in said:
                missed.append(f"{section}: {change} changed {report.changed}, answer {report.as_dict()}")
            live = copy.deepcopy(gw.config.data)
        assert missed == []
