"""The web face's parts on their own: sessions that expire, lockouts, users, XML, the trend buffer, the
first-start page seen from the network, the config form, start-up errors."""
from __future__ import annotations

import asyncio
import socket
import xml.etree.ElementTree as ET

import pytest

from gateway.app import Gateway
from gateway.config import parse_listen
from gateway.errors import GatewayError
from gateway.outputs.web import auth as auth_mod
from gateway.outputs.web.app import create_app
from gateway.outputs.web.auth import AuthError, LoginThrottle, SessionStore, User, UserStore
from gateway.outputs.web.configedit import FieldError, form_fields, parse_form
from gateway.outputs.web.context import WebContext, is_local
from gateway.outputs.web.schema import SCHEMA
from gateway.outputs.web.sources import LiveBuffer, decimate
from gateway.outputs.web.xmlout import to_xml
from gateway.points import PointRef, Quality, Reading
from tests.support import free_port, small_bank, write_config
from tests.web_support import PASSWORD


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_sessions_end_after_idle_time_and_maximum_age(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(auth_mod.time, "time", clock)
    store = SessionStore(idle_s=1800, max_age_s=12 * 3600)
    s = store.create(User("ann", "viewer", "file"))
    clock.t += 1700
    assert store.get(s.sid) is s  # used: the idle clock restarts
    clock.t += 1700
    assert store.get(s.sid) is s
    clock.t += 1801
    assert store.get(s.sid) is None  # idle too long
    s = store.create(User("ann", "viewer", "file"))
    for _ in range(30):  # busy all day long still ends at the maximum age
        clock.t += 1500
        store.get(s.sid)
    assert store.get(s.sid) is None
    s = store.create(User("bob", "viewer", "file"))
    store.drop_user("bob")
    assert store.get(s.sid) is None


def test_lockout_counts_failures_per_user_and_address(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(auth_mod.time, "time", clock)
    th = LoginThrottle(max_failures=3, lockout_s=300)
    for _ in range(3):
        assert th.locked("ann", "10.0.0.1") == 0
        th.failed("ann", "10.0.0.1")
    assert th.locked("ann", "10.0.0.1") == pytest.approx(300)
    assert th.locked("ann", "10.0.0.2") == 0 and th.locked("bob", "10.0.0.1") == 0
    clock.t += 301
    assert th.locked("ann", "10.0.0.1") == 0


def test_user_store_hashes_with_argon2_and_keeps_an_admin(tmp_path):
    store = UserStore(tmp_path)
    store.add("root", "admin", PASSWORD)
    text = (tmp_path / "web" / "users.json").read_text()
    assert PASSWORD not in text and "$argon2id$" in text
    assert (tmp_path / "web" / "users.json").stat().st_mode & 0o777 == 0o600
    assert store.authenticate("root", PASSWORD).role == "admin"
    assert store.authenticate("root", "wrong-password") is None
    assert store.authenticate("nobody", PASSWORD) is None
    with pytest.raises(AuthError, match="last admin"):
        store.delete("root")
    with pytest.raises(AuthError, match="last admin"):
        store.set_role("root", "viewer")
    with pytest.raises(AuthError, match="name"):
        store.add("bad name", "viewer", PASSWORD)
    with pytest.raises(AuthError, match="role"):
        store.add("eve", "superuser", PASSWORD)
    tid, token = store.add_token("dcim", "viewer")
    assert store.check_token(token) == User("token:dcim", "viewer", "token")
    assert store.check_token(token[:-1] + "x") is None
    store.revoke_token(tid)
    assert store.check_token(token) is None
    # another process (the CLI) adds a user: seen without a restart
    UserStore(tmp_path).add("late", "operator", PASSWORD)
    assert store.get("late").role == "operator"


def test_xml_keeps_odd_keys_and_text_safe():
    data = {"1": "x", "a b": [1, None, True], "ok": "<&>\x01", "xmlish": {"v": 1.5}}
    root = ET.fromstring(to_xml(data))
    entries = {e.get("key"): e for e in root.findall("entry")}
    assert entries["1"].text == "x"
    assert [i.text for i in entries["a b"].findall("item")] == ["1", None, "true"]
    assert entries["a b"].findall("item")[1].get("nil") == "true"
    assert root.findtext("ok") == "<&>\ufffd"
    assert entries["xmlish"].findtext("v") == "1.5"


def test_trend_buffer_keeps_one_sample_per_interval_in_a_ring():
    class PM:
        entries = ()

        def __iter__(self):
            from gateway.pointmap import MappedPoint
            from gateway.points import PointSpec

            spec = PointSpec("cell.voltage", "cell", "V", "", 0)
            yield MappedPoint(PointRef("cell.voltage", 1, 1), spec, 0, (), "m", 1.0, (), "/x")

    buf = LiveBuffer(PM(), interval_s=10, samples=5)
    ref = PointRef("cell.voltage", 1, 1)
    for k in range(100):  # one reading a second for 100 s
        quality = Quality.COMM_FAIL if k == 50 else Quality.GOOD
        buf.on_batch([(ref, Reading(13.0 + k / 100, quality, 1000.0 + k)),
                      (PointRef("cell.other", 1, 1), Reading(1.0, Quality.GOOD, 1000.0 + k))])
    got = buf.query(ref, 0, 1e9, 100)
    assert [t for t, _ in got] == [1050.0, 1060.0, 1070.0, 1080.0, 1090.0]
    assert got[0][1] is None and got[1][1] == pytest.approx(13.6)
    assert len(buf) == 1
    assert decimate([(float(i), float(i)) for i in range(10)], 2) == [(2.0, 2.0), (7.0, 7.0)]


def test_trend_buffer_shares_one_time_axis_and_takes_late_readings_and_a_clock_set_back():
    from gateway.pointmap import MappedPoint
    from gateway.points import PointSpec

    refs = [PointRef("cell.voltage", 1, c) for c in (1, 2, 3)]

    class PM:
        def __iter__(self):
            for ref in refs:
                yield MappedPoint(ref, PointSpec("cell.voltage", "cell", "V", "", 0), 0, (), "m", 1.0, (), "/x")

    buf = LiveBuffer(PM(), interval_s=15, samples=4)
    a, b, c = refs
    buf.on_batch([(a, Reading(2.001, Quality.GOOD, 1503.25))])  # slot 100
    buf.on_batch([(a, Reading(2.002, Quality.GOOD, 1531.0)),  # slot 102 (nothing for slot 101: a gap)
                  (a, Reading(2.003, Quality.GOOD, 1540.0))])  # the same slot: not kept
    buf.on_batch([(b, Reading(2.1, Quality.GOOD, 1512.0))])  # a slower bus: an earlier slot, still in the window
    assert buf.query(a, 0, 1e9, 100) == [(pytest.approx(1503.25, abs=1e-3), pytest.approx(2.001)),
                                         (pytest.approx(1531.0, abs=1e-3), pytest.approx(2.002))]
    assert buf.query(b, 0, 1e9, 100) == [(pytest.approx(1512.0, abs=1e-3), pytest.approx(2.1))]
    assert buf.query(c, 0, 1e9, 100) == [] and len(buf) == 2
    buf.on_batch([(a, Reading(2.004, Quality.GOOD, 1566.0))])  # slot 104: slot 100 leaves the 4-slot window
    assert [round(t) for t, _ in buf.query(a, 0, 1e9, 100)] == [1531, 1566]
    assert [round(t) for t, _ in buf.query(a, 1540, 1e9, 100)] == [1566]
    buf.on_batch([(a, Reading(2.005, Quality.GOOD, 1000.0))])  # the clock set back an hour: start over
    assert buf.query(a, 0, 1e9, 100) == [(1000.0, pytest.approx(2.005))] and buf.query(b, 0, 1e9, 100) == []
    # 6 bytes a sample, whatever the bank: a float32 value and a uint16 offset in its slot
    assert buf._values.itemsize + buf._offsets.itemsize == 6 and len(buf._values) == len(refs) * 4


def test_listen_parsing():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:8443") == ("::1", 8443)
    with pytest.raises(ValueError):
        parse_listen("8080")
    assert is_local("127.0.0.1") and is_local("::1") and is_local("::ffff:127.0.0.1")
    assert not is_local("192.0.2.7") and not is_local(None)


def test_config_form_round_trip_names_bad_fields():
    fields = form_fields(SCHEMA, {"session": {"idle_minutes": 20}}, "web")
    by_path = {}

    def walk(node):
        by_path[node["path"]] = node
        for c in node.get("children", []):
            walk(c)

    walk(fields)
    assert by_path["web.session.idle_minutes"]["value"] == "20"
    assert by_path["web.session.max_hours"]["value"] == "" and by_path["web.session.max_hours"]["default"] == 12
    assert by_path["web.users"]["kind"] == "yaml"
    present, value = parse_form(SCHEMA, {"web.session.idle_minutes": "20", "web.tls.enabled": "true",
                                         "web.users": "- {name: a, role: viewer, password_hash: '$argon2id$x'}"},
                                "web")
    assert value == {"tls": {"enabled": True}, "session": {"idle_minutes": 20},
                     "users": [{"name": "a", "role": "viewer", "password_hash": "$argon2id$x"}]}
    with pytest.raises(FieldError) as err:
        parse_form(SCHEMA, {"web.threads": "four"}, "web")
    assert err.value.path == "web.threads"
    with pytest.raises(FieldError) as err:
        parse_form(SCHEMA, {"web.users": "- [unclosed"}, "web")
    assert err.value.path == "web.users" and "not valid YAML" in err.value.message


@pytest.fixture
def offline_gateway(tmp_path):
    path = write_config(tmp_path, base=small_bank(1, 2), overrides={"web": {"listen": f"127.0.0.1:{free_port()}"}})
    return Gateway(path, simulator=False, port_overrides={"bus1": "(not opened)"})


def test_first_start_page_only_from_the_controller_itself(offline_gateway):
    app = create_app(WebContext(offline_gateway))
    remote = app.test_client()
    r = remote.get("/setup", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert r.status_code == 403 and b"only be set up from the controller itself" in r.data
    r = remote.get("/login", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert r.status_code == 503 and b"bmsgw user add" in r.data
    local = app.test_client()
    r = local.get("/login", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup")
    r = local.post("/setup", data={"username": "admin", "password": PASSWORD, "password2": PASSWORD},
                   environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 403  # no CSRF token: refused even from the controller


def test_a_port_in_use_stops_start_up_with_a_clear_error(offline_gateway):
    from gateway.outputs.web.face import WebService

    host, port = "127.0.0.1", int(offline_gateway.config.section("web")["listen"].rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind((host, port))
        s.listen()
        svc = WebService(offline_gateway, offline_gateway.config.section("web"))
        with pytest.raises(GatewayError,
                           match=rf"web\.listen: cannot listen on 127\.0\.0\.1:{port}: Address already in use"):
            asyncio.run(svc.start())


def test_tls_needs_both_files(offline_gateway, tmp_path):
    from gateway.outputs.web.face import WebService

    offline_gateway.config.data["web"]["tls"] = {"enabled": True, "cert": str(tmp_path / "c.pem"), "key": ""}
    with pytest.raises(GatewayError, match=r"web\.tls: give both cert and key"):
        offline_gateway.check(offline_gateway.config.data)
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    offline_gateway.config.data["web"]["tls"]["key"] = str(tmp_path / "k.pem")
    offline_gateway.check(offline_gateway.config.data)  # both files are there: what is in them, start finds out
    svc = WebService(offline_gateway, offline_gateway.config.section("web"))
    with pytest.raises(GatewayError, match=r"web\.tls\.cert: cannot load"):
        asyncio.run(svc.start())


def test_web_off_means_no_server_and_no_buffer(tmp_path):
    path = write_config(tmp_path, base=small_bank(1, 2), overrides={"web": {"enabled": False}})
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "(not opened)"})
    services = [s for r in gw.pm.hook.bmsgw_services(gateway=gw) for s in r]
    assert services and not [s for s in services if s.name == "web"]  # the other faces are still there
    assert not [listener for listener in gw.store._listeners if "LiveBuffer" in repr(listener)]


@pytest.mark.parametrize("section", ["site", "gateway", "simulator", "buses", "strings", "bank", "web"])
def test_config_form_posts_back_exactly_what_the_file_holds(section):
    """Opening a section and saving it unchanged must not change the file (empty strings, nulls, lists)."""
    import yaml

    from gateway.config import CORE_SCHEMA
    from gateway.outputs.web.configedit import MISSING
    from tests.conftest import DEFAULT_CONFIG

    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc.setdefault("site", {})["note"] = ""  # an empty string written in the file stays
    schema = {**CORE_SCHEMA, "web": SCHEMA}[section]
    if section == "site":
        schema = {**schema, "properties": {**schema["properties"], "note": {"type": "string"}}}
    raw = doc.get(section, MISSING)
    form = {}

    def walk(node):
        if node["kind"] == "object":
            for child in node["children"]:
                walk(child)
        else:
            form[node["path"]] = node["value"]
            if node["present"]:
                form["present:" + node["path"]] = "1"

    walk(form_fields(schema, raw, section))
    present, value = parse_form(schema, form, section)
    assert present and value == raw


def test_web_limits_old_keys_are_read_and_allow_from_refuses_other_addresses(tmp_path, caplog):
    from gateway.outputs.web.schema import WebSettings
    from tests.fuzz.netcheck import recv_until_closed
    from tests.support import GatewayThread, section_with_defaults

    s = WebSettings.from_section(section_with_defaults("web", {"api": {"max_body_kib": 100},
                                                               "limits": {"slow_per_address": 2}}))
    assert s.max_body == s.limits.max_request_bytes == 100 * 1024
    assert "web.api.max_body_kib is deprecated" in caplog.text and "web.limits.slow_per_address is no longer used" \
        in caplog.text
    port = free_port()
    path = write_config(tmp_path, base=small_bank(1, 2), overrides={
        "web": {"listen": f"127.0.0.1:{port}", "allow_from": ["127.0.0.2/32"]},
        "snmp": {"enabled": False}, "prometheus": {"enabled": False}, "modbus_tcp": {"enabled": False}})
    with GatewayThread(path, wait_points=None):
        request = b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)) as c:
            c.sendall(request)
            assert recv_until_closed(c, 10).startswith(b"HTTP/1.1 302 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            assert recv_until_closed(c, 10) == b""  # 127.0.0.1 is not in web.allow_from
    assert "web: connection from 127.0.0.1 refused: not in web.allow_from" in caplog.text
