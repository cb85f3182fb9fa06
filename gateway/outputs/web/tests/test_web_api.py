"""The REST API and the web face's security, over real HTTP against the running gateway."""
from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET

import pytest
import requests

from gateway.points import PointRef
from tests.web_support import PASSWORD, Client, FakeHistory, web_gateway


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with web_gateway(tmp_path_factory.mktemp("web-api"), strings=1, cells=8,
                     web={"login": {"max_failures": 3, "lockout_s": 600}}) as w:
        yield w


@pytest.fixture(scope="module")
def viewer(web):
    return {"Authorization": f"Bearer {web.token('viewer')}"}


def api(web, path, headers=None, **kw):
    return requests.get(web.url + "api/v1/" + path.lstrip("/"), headers=headers or {}, timeout=30, **kw)


def test_api_needs_a_session_or_a_token(web):
    r = api(web, "strings")
    assert r.status_code == 401
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"status": 401, "message": "login or an API token needed"}
    r = api(web, "strings", {"Authorization": "Bearer bmsgw_not-a-real-token"})
    assert r.status_code == 401 and r.json()["message"] == "invalid API token"
    r = api(web, "strings", {"Accept": "application/xml"})
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/xml")
    assert ET.fromstring(r.content).findtext("message") == "login or an API token needed"
    # pages send a person to the login form instead
    r = requests.get(web.url + "strings/1", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"].endswith("/login?next=/strings/1")


def test_cells_in_json_and_the_same_in_xml(web, viewer):
    body = api(web, "strings/1/cells", viewer).json()
    assert body["string"] == 1 and [c["cell"] for c in body["cells"]] == list(range(1, 9))
    v3 = body["cells"][2]["points"]["voltage"]
    assert v3["unit"] == "V" and v3["quality"] == "GOOD" and 10 < v3["value"] < 15
    assert body["cells"][2]["points"]["alarm_level"]["state"] == "normal"
    for how in ({"headers": {**viewer, "Accept": "application/xml"}}, {"params": {"format": "xml"}, "headers": viewer}):
        r = requests.get(web.url + "api/v1/strings/1/cells/3", timeout=30, **how)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/xml")
        root = ET.fromstring(r.content)
        assert root.tag == "response" and root.findtext("cell") == "3"
        assert float(root.findtext("points/voltage/value")) == pytest.approx(v3["value"], abs=0.2)
        assert root.findtext("points/voltage/unit") == "V"
    r = api(web, "strings/1/cells/3?format=yaml", viewer)
    assert r.status_code == 400 and r.json()["field"] == "format"


def test_strings_io_status_and_registers(web, viewer):
    s = api(web, "strings", viewer).json()["strings"][0]
    assert s["id"] == 1 and s["cells"] == 8 and s["points"]["voltage"]["unit"] == "V"
    # the gateway is up once the cell voltages are in; the I/O module may answer a poll later
    web.gt.wait_for(lambda: web.gateway.store.value(PointRef("io.di", channel=1)) is not None, timeout=20,
                    what="the I/O module's first poll")
    io = {(p["point"], p["channel"]): p for p in api(web, "io", viewer).json()["points"]}
    assert io[("io.ambient_temperature", None)]["unit"] == "C"
    assert io[("io.di", 1)]["state"] in ("open", "closed")
    st = api(web, "status", viewer).json()
    assert st["points"] == len(web.gateway.pointmap) and "bus1" in st["buses"]
    assert st["web"]["history"] == "in-memory buffer" and st["web"]["alarms"] is True
    regs = api(web, "registers?table=input&point=cell.voltage", viewer).json()
    assert regs["total"] == 8
    first = regs["registers"][0]
    assert (first["address"], first["string"], first["cell"], first["unit"]) == (10000, 1, 1, "V")
    page = api(web, "registers?offset=2&limit=3", viewer).json()
    assert len(page["registers"]) == 3 and page["total"] == 2 * len(web.gateway.pointmap)


def test_errors_carry_a_message_and_never_a_stack_trace(web, viewer):
    r = api(web, "strings/3", viewer)
    assert r.status_code == 404 and r.json()["message"] == "no string 3; configured: 1"
    r = api(web, "strings/1/cells/9", viewer)
    assert r.status_code == 404 and "no battery 9" in r.json()["message"]
    r = api(web, "strings/1/cells/3/history?point=voltage&max_points=many", viewer)
    assert r.status_code == 400 and r.json() == {"status": 400, "field": "max_points",
                                                 "message": "parameter max_points: expected an integer, got 'many'"}
    r = api(web, "history?point=cell.nonsense&string=1&cell=1", viewer)
    assert r.status_code == 404 and r.json()["field"] == "point"
    r = requests.delete(web.url + "api/v1/strings", headers=viewer, timeout=30)
    assert r.status_code == 405 and "GET" in r.headers["Allow"] and r.json()["status"] == 405
    r = api(web, "no/such/thing", viewer)
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("application/json")
    web.alarms.fail = True
    try:
        r = api(web, "alarms", viewer)
        assert r.status_code == 500
        assert r.json() == {"status": 500, "message": "internal error; the gateway log has the details"}
        assert "Traceback" not in r.text and "exploded" not in r.text
        admin = web.user("admin", "admin")
        page = admin.get("/alarms")
        assert page.status_code == 500 and "Traceback" not in page.text and "exploded" not in page.text
    finally:
        web.alarms.fail = False
    page = admin.get("/strings/9")
    assert page.status_code == 404 and "There is no string 9." in page.text
    page = admin.get("/config/nonsense")
    assert page.status_code == 404 and "No config section" in page.text


def test_roles_decide_who_acknowledges_and_configures(web):
    viewer = {"Authorization": f"Bearer {web.token('viewer')}"}
    operator = {"Authorization": f"Bearer {web.token('operator')}"}
    admin = {"Authorization": f"Bearer {web.token('admin')}"}
    url = web.url + "api/v1/alarms/12/acknowledge"
    r = requests.post(url, headers=viewer, timeout=30)
    assert r.status_code == 403 and "operator" in r.json()["message"]
    r = requests.post(url, headers=operator, timeout=30)
    assert r.status_code == 200 and r.json()["acknowledged"] is True and r.json()["by"].startswith("token:t-operator")
    assert web.alarms.table["12"]["acknowledged_by"].startswith("token:")
    r = requests.post(web.url + "api/v1/alarms/nope/acknowledge", headers=operator, timeout=30)
    assert r.status_code == 404
    active = api(web, "alarms?state=active", viewer).json()
    assert active["available"] is True and {a["id"] for a in active["alarms"]} == {"12", "37"}
    assert {a["id"] for a in api(web, "alarms?state=log", viewer).json()["alarms"]} >= {"3"}
    assert api(web, "config", operator).status_code == 403
    assert api(web, "config", admin).json()["config"]["web"]["login"]["max_failures"] == 3


def test_session_posts_need_the_csrf_token(web):
    c = web.user("otto", "operator")
    url = "/api/v1/alarms/37/acknowledge"
    r = c.post(url)
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
    r = c.post(url, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403
    r = c.post(url, headers={"X-CSRF-Token": c.csrf("/")})
    assert r.status_code == 200 and r.json()["by"] == "otto"
    # the login form too
    anon = Client(web.url)
    r = anon.post("/login", data={"username": "otto", "password": PASSWORD}, allow_redirects=False)
    assert r.status_code == 403
    # logging out ends the session on the server
    token = c.csrf("/")
    c.post("/logout", data={"csrf": token}, allow_redirects=False)
    assert c.get("/api/v1/strings").status_code == 401


def test_security_headers_and_cookie_flags(web):
    c = Client(web.url)
    r = c.get("/login")
    h = r.headers
    csp = h["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert h["X-Content-Type-Options"] == "nosniff" and h["X-Frame-Options"] == "DENY"
    assert h["Referrer-Policy"] == "no-referrer" and h["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in h  # plain HTTP on loopback
    web.ctx.users.get("admin") or web.ctx.users.add("admin", "admin", PASSWORD)
    r = c.post("/login", data={"csrf": c.csrf(), "username": "admin", "password": PASSWORD}, allow_redirects=False)
    cookie = r.headers["Set-Cookie"]
    assert "bmsgw_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert requests.get(web.url + "static/app.js", timeout=30).headers["Cache-Control"].startswith("public")


def test_repeated_wrong_passwords_lock_the_user_out(web):
    web.ctx.users.add("lena", "viewer", PASSWORD)
    c = Client(web.url)
    for _ in range(3):
        r = c.post("/login", data={"csrf": c.csrf(), "username": "lena", "password": "wrong-password"})
        assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = c.post("/login", data={"csrf": c.csrf(), "username": "lena", "password": PASSWORD}, allow_redirects=False)
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    # an unknown name gets the same answer as a wrong password
    r = c.post("/login", data={"csrf": c.csrf(), "username": "nobody", "password": PASSWORD})
    assert r.status_code == 401 and "Wrong user name or password" in r.text


def test_trend_from_the_in_memory_buffer(web, viewer):
    ref = PointRef("cell.voltage", 1, 3)
    web.gt.wait_for(lambda: len(web.ctx.sources.buffer.query(ref, 0, 1e10, 100)) >= 2, timeout=20,
                    what="two buffered samples")
    body = api(web, "strings/1/cells/3/history?point=voltage", viewer).json()
    assert body["source"] == "memory" and body["point"] == "cell.voltage" and body["unit"] == "V"
    ts = [s["t"] for s in body["samples"]]
    assert len(ts) >= 2 and ts == sorted(ts) and ts[-1] - ts[0] >= 0.9
    assert all(12 < s["v"] < 15 for s in body["samples"])
    same = api(web, "history?point=cell.voltage&string=1&cell=3&max_points=1", viewer).json()
    assert len(same["samples"]) == 1
    assert api(web, "strings/1/history?point=voltage", viewer).json()["unit"] == "V"
    r = api(web, "history?point=cell.voltage&string=1&cell=3&from=100&to=50", viewer)
    assert r.status_code == 400 and r.json()["field"] == "from"


def test_metrics_are_public_by_default_gzipped_when_asked_and_can_need_a_login(web, monkeypatch):
    r = requests.get(web.url + "metrics", timeout=30)  # requests asks for gzip and unpacks it
    assert r.status_code == 200 and r.headers["Content-Encoding"] == "gzip"
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE bms_cell_voltage_volts gauge" in r.text and 'cell="3",string="1"' in r.text
    plain = requests.get(web.url + "metrics", headers={"Accept-Encoding": "identity"}, timeout=30)
    assert "Content-Encoding" not in plain.headers and "# TYPE bms_cell_voltage_volts gauge" in plain.text
    monkeypatch.setattr(web.ctx, "settings", dataclasses.replace(web.ctx.settings, metrics_public=False))
    assert requests.get(web.url + "metrics", timeout=30).status_code == 401


def test_history_module_answers_when_installed(tmp_path):
    hist = FakeHistory()
    with web_gateway(tmp_path, cells=4, alarms=False, history=hist) as w:
        hdr = {"Authorization": f"Bearer {w.token('viewer')}"}
        body = api(w, "strings/1/cells/2/history?point=voltage&from=1000&to=2000&max_points=50", hdr).json()
        assert body["source"] == "history" and len(body["samples"]) == 50
        assert body["samples"][0] == {"t": 1000.0, "v": 13.5}
        # no second copy in memory of what history keeps; what it does not keep comes from memory
        buffer = w.ctx.sources.buffer
        assert PointRef("cell.voltage", 1, 2) not in buffer and PointRef("string.voltage", 1) in buffer
        w.gt.wait_for(lambda: len(buffer.query(PointRef("string.voltage", 1), 0, 1e10, 10)) >= 2, timeout=20,
                      what="two buffered samples")
        body = api(w, "strings/1/history?point=voltage", hdr).json()
        assert body["source"] == "memory" and len(body["samples"]) >= 2
        # no alarm engine: the API says so instead of inventing alarms
        assert api(w, "alarms", hdr).json() == {"available": False, "state": "active", "alarms": []}
        r = requests.post(w.url + "api/v1/alarms/x/acknowledge",
                          headers={"Authorization": f"Bearer {w.token('operator')}"}, timeout=30)
        assert r.status_code == 503 and r.json()["message"] == "no alarm engine is installed"


def test_a_stopped_web_face_no_longer_listens_to_the_store(tmp_path):
    # ahead of every polled reading; a whole second: the buffer keeps a sample's time as an offset in its
    # interval_s slot (1 s here), exact at the slot's start
    ref, later = PointRef("cell.voltage", 1, 1), float(int(time.time()) + 3600)
    with web_gateway(tmp_path, cells=2, alarms=False) as w:
        store, buffer = w.gateway.store, w.ctx.sources.buffer
        store.put(ref, 12.5, ts=later)
        assert buffer.query(ref, later, later, 10) == [(later, 12.5)]  # listening while it runs
    assert w.ctx.sources.buffer is None
    store.put(ref, 12.75, ts=later + 3600)
    assert buffer.query(ref, later + 1, later + 3600, 10) == []


def _trend_source(w, path):
    """Wait until a trend has two samples; its source and samples."""
    hdr = {"Authorization": f"Bearer {w.token('viewer')}"}
    got = {}

    def two():  # the last 5 min: raw samples, also when history records one a second
        got.update(api(w, path, hdr, params={"from": time.time() - 300}).json())
        return len(got["samples"]) >= 2
    w.gt.wait_for(two, timeout=30, what=f"two samples of {path}")
    return got["source"], got["samples"]


def test_with_history_off_trends_come_from_the_memory_buffer(tmp_path):
    with web_gateway(tmp_path, cells=2, alarms=False, overrides={
            "plugins": {"disable": ["gateway.alarms"]}, "history": {"enabled": False}}) as w:
        hdr = {"Authorization": f"Bearer {w.token('viewer')}"}
        assert api(w, "status", hdr).json()["web"]["history"] == "in-memory buffer"
        source, samples = _trend_source(w, "strings/1/cells/2/history?point=voltage")
        assert source == "memory" and all(12 < s["v"] < 15 for s in samples)


def test_families_history_does_not_record_come_from_the_memory_buffer(tmp_path):
    with web_gateway(tmp_path, cells=2, alarms=False, overrides={
            "plugins": {"disable": ["gateway.alarms"]}, "history": {"flush_s": 0.5, "raw": {"interval_s": 1}}}) as w:
        hdr = {"Authorization": f"Bearer {w.token('viewer')}"}
        assert api(w, "status", hdr).json()["web"]["history"] == "history module"
        # the gateway's own counters are left out of history by default (exclude: gateway.*)
        source, samples = _trend_source(w, "history?point=gateway.uptime")
        assert source == "memory" and samples[-1]["v"] > samples[0]["v"]
        source, _ = _trend_source(w, "strings/1/cells/2/history?point=voltage")
        assert source == "history"
        assert PointRef("cell.voltage", 1, 2) not in w.ctx.sources.buffer  # no second copy in memory


def test_commands_are_listed_and_written_through_the_one_write_path(tmp_path):
    """GET /commands lists what may be written and who may; POST /points/<path> writes through Gateway.write
    (the command's role, the value's range, a device that must answer); the string page's form does the same."""
    with web_gateway(tmp_path, cells=4) as w:
        viewer = {"Authorization": f"Bearer {w.token('viewer')}"}
        operator = {"Authorization": f"Bearer {w.token('operator')}"}
        listed = {c["path"]: c for c in api(w, "commands", viewer).json()["commands"]}
        reset = listed["strings/1/commands/reset_ohmic_baseline"]
        assert reset["role"] == "operator" and reset["modbus_register"] == 9100 and reset["range"] == [1, 256]
        relay = next(c for c in listed.values() if c["point"] == "io.do")
        assert relay["values"] == {"0": "off", "1": "on"} and relay["modbus_register"] == 1080
        assert "gateway/commands/acknowledge_alarms" not in listed  # nothing here carries it out: not offered
        assert {c["path"] for c in api(w, "commands?string=1", viewer).json()["commands"]} == {
            p for p, c in listed.items() if c.get("string") == 1}

        def post(path, value, headers):
            return requests.post(w.url + "api/v1/points/" + path, json={"value": value}, headers=headers, timeout=30)

        assert post(reset["path"], 2, viewer).status_code == 403
        r = post(reset["path"], 2, operator)
        assert r.status_code == 200, r.text
        assert r.json()["result"].startswith("string 1 battery 2: baseline cleared") and r.json()["string"] == 1
        r = post(reset["path"], 9, operator)
        assert r.status_code == 400 and "batteries 1..4" in r.json()["message"]
        assert post("strings/9/commands/reset_ohmic_baseline", 1, operator).status_code == 404
        model = w.gateway.simulator.model
        r = post(relay["path"], 1, operator)
        assert r.status_code == 200 and model.do_state == 1
        assert post(relay["path"], 5, operator).status_code == 400 and model.do_state == 1
        assert post(relay["path"], 0, operator).status_code == 200 and model.do_state == 0
        r = requests.post(w.url + "api/v1/points/" + relay["path"], data="1", timeout=30,
                          headers={**operator, "Content-Type": "text/plain"})
        assert r.status_code == 415

        ops = w.user("olga", "operator")
        page = ops.get("/strings/1").text
        assert 'data-command="string.reset_ohmic_baseline"' in page
        assert 'data-command="string.reset_ohmic_baseline"' not in w.user("vic", "viewer").get("/strings/1").text
        r = ops.form("/strings/1", "/write/strings/1/commands/reset_ohmic_baseline",
                     {"value": "3", "next": "/strings/1"})
        assert r.status_code == 302 and r.headers["Location"].endswith("/strings/1")
        assert "String 1 battery 3: baseline cleared" in ops.get("/strings/1").text
        r = ops.form("/io", f"/write/{relay['path']}", {"value": "1", "next": "/io"})
        assert r.status_code == 302 and model.do_state == 1
