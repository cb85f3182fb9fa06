"""Security, one test per promise (issue 10, part 5), each against the real peer where there is one:
net-snmp's snmpget/snmpwalk for SNMPv3 and v1/v2c, mbpoll and raw frames for Modbus writes, HTTP from several
loopback source addresses for the web login, the Flask url_map for CSRF and headers, and the files on disk
for secrets.

One gateway (1 string x 4 batteries) serves every face; variants (a second SNMP agent, a second Modbus
server with writes on) run inside the same gateway on free ports.  Time-based rules (lockouts, session ends)
run on the stores' own clocks, moved forward by the test instead of waited for.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest
import requests
import yaml
from requests.adapters import HTTPAdapter

from gateway import secretfiles
from gateway.app import Gateway
from gateway.outputs.modbus_tcp.face import ModbusTcpService
from gateway.outputs.snmp.agent import SnmpAgent
from gateway.outputs.web.auth import DeviceKeys, LoginThrottle
from gateway.points import PointRef
from tests.conftest import DEFAULT_CONFIG, ROOT
from tests.snmp_support import V3_USER, NetSnmp, free_udp_port, v2c, v3
from tests.support import free_port, small_bank, write_config
from tests.web_support import PASSWORD, Client, web_gateway

LOGIN = {"max_failures": 2, "max_failures_per_client": 4, "max_failures_per_user": 4, "lockout_s": 600}
SESSION = {"idle_minutes": 2, "max_hours": 0.5}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@pytest.fixture(scope="module")
def sec(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    overrides = {"snmp": {"v2c": {"community": None}, "v3_users": [V3_USER]},
                 "analytics": {"enabled": False}}
    with web_gateway(tmp, strings=1, cells=4, alarms=True, web={"login": LOGIN, "session": SESSION},
                     overrides=overrides) as w:
        w.tmp = tmp
        yield w


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clocks(sec):
    clock = Clock()
    saved = sec.ctx.throttle.clock, sec.ctx.sessions.clock
    sec.ctx.throttle.clock = sec.ctx.sessions.clock = clock
    yield clock
    sec.ctx.throttle.clock, sec.ctx.sessions.clock = saved


class _From(HTTPAdapter):
    """Connections from a chosen loopback address (127.0.0.0/8 is all loopback on Linux)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def browser(w, source: str = "127.0.0.1", verify=True) -> Client:
    c = Client(w.url, verify=verify)
    c.mount("http://", _From(source))
    c.mount("https://", _From(source))
    return c


def admin_browser(w, name: str, source: str) -> Client:
    if w.ctx.users.get(name) is None:
        w.ctx.users.add(name, "admin", PASSWORD)
    return browser(w, source).login(name)


def attempt(c: Client, name: str, password: str) -> requests.Response:
    return c.post("/login", data={"csrf": c.csrf(), "username": name, "password": password}, allow_redirects=False)


def set_cookies(resp) -> dict[str, str]:
    """{cookie name: its whole Set-Cookie line} of one response."""
    return {line.split("=", 1)[0]: line for line in resp.raw.headers.getlist("Set-Cookie")}


# -- SNMP ------------------------------------------------------------------------------------------------------
def snmp_port(w) -> int:
    return w.gateway.service('snmp').agent.bound[1]


def test_snmpv3_authpriv_answers_net_snmp_and_wrong_keys_or_levels_get_nothing(sec):
    snmp = NetSnmp(snmp_port(sec), sec.tmp)
    got = snmp.get(v3(), "SNMPv2-MIB::sysName.0", "BMSGW-MIB::bmsgwCellCommStatus.1.1")
    assert got == {"sysName.0": sec.gateway.config.section("site")["name"], "bmsgwCellCommStatus.1.1": "ok"}
    walk = snmp.walk(v3(), "BMSGW-MIB::bmsgwCellVoltage", bulk=False)
    assert len(walk) == 4 and all(v for v in walk.values())

    def refused(auth: list[str]) -> None:
        proc = snmp.run("snmpget", auth, "-OQs", "SNMPv2-MIB::sysDescr.0", timeout=0.5, retries=0, check=False)
        assert proc.returncode != 0 and "sysDescr" not in proc.stdout, proc.stdout
    refused(v3(auth_key="wrong-auth-key"))
    wrong_priv = v3()
    wrong_priv[wrong_priv.index("-X") + 1] = "wrong-priv-key"
    refused(wrong_priv)
    refused(["-v3", "-l", "authPriv", "-u", "intruder", "-a", "SHA-256", "-A", "auth-secret-1", "-x", "AES", "-X",
             "priv-secret-1"])
    # the right user without privacy, or without authentication: the agent insists on authPriv
    refused(["-v3", "-l", "authNoPriv", "-u", "nms", "-a", "SHA-256", "-A", "auth-secret-1"])
    refused(["-v3", "-l", "noAuthNoPriv", "-u", "nms"])
    counters = sec.gateway.service('snmp').agent.counters()
    assert counters["usmStatsWrongDigests"] >= 1 and counters["usmStatsDecryptionErrors"] >= 1
    assert counters["usmStatsUnknownUserNames"] >= 1


def test_snmp_v1_and_v2c_switched_off_get_no_answer(sec):
    snmp = NetSnmp(snmp_port(sec), sec.tmp)
    for auth in (v2c("public"), v2c("private"), ["-v1", "-c", "public"]):
        proc = snmp.run("snmpget", auth, "-OQs", "SNMPv2-MIB::sysDescr.0", timeout=0.5, retries=0, check=False)
        assert proc.returncode != 0 and "Timeout" in proc.stderr and proc.stdout == "", (auth, proc.stderr)
        proc = snmp.run("snmpwalk", auth, "-OQs", "SNMPv2-MIB::system", timeout=0.5, retries=0, check=False)
        assert proc.returncode != 0 and "Timeout" in proc.stderr and proc.stdout == ""
    assert snmp.get(v3(), "SNMPv2-MIB::sysUpTime.0")  # v3 still answers on the same port


def test_snmp_v2c_when_on_answers_only_allow_from_and_v1_never(sec, caplog):
    port = free_udp_port()
    cfg = {**sec.gateway.config.section("snmp"), "listen": f"127.0.0.1:{port}",
           "v2c": {"community": "ro-Xq81", "allow_from": ["127.0.0.1/32"]}}
    agent = SnmpAgent(sec.gateway, cfg)
    sec.gt.call(agent.start())
    try:
        snmp = NetSnmp(port, sec.tmp)
        assert snmp.get(v2c("ro-Xq81"), "SNMPv2-MIB::sysUpTime.0")
        assert snmp.walk(v2c("ro-Xq81"), "SNMPv2-MIB::system", bulk=False)
        other = ["--clientaddr=127.0.0.2"]
        proc = snmp.run("snmpget", [*v2c("ro-Xq81"), *other], "-OQs", "SNMPv2-MIB::sysUpTime.0", timeout=0.5,
                        retries=0, check=False)
        assert proc.returncode != 0 and "Timeout" in proc.stderr and proc.stdout == ""
        assert agent.status()["refused_sources"] == 1
        # SNMPv3 authenticates itself: it is answered from anywhere
        proc = snmp.run("snmpget", [*v3(), *other], "-OQs", "SNMPv2-MIB::sysUpTime.0")
        assert "sysUpTime.0" in proc.stdout
        proc = snmp.run("snmpget", ["-v1", "-c", "ro-Xq81"], "-OQs", "SNMPv2-MIB::sysUpTime.0", timeout=0.5,
                        retries=0, check=False)
        assert proc.returncode != 0 and proc.stdout == ""
    finally:
        sec.gt.call(agent.stop())
    # a well-known community open to every address is called out at start (and the allow-list is the cure)
    caplog.set_level(logging.WARNING, logger="gateway.outputs.snmp.agent")
    open_agent = SnmpAgent(sec.gateway, {**cfg, "v2c": {"community": "public", "allow_from": []}})
    lan = ("192.0.2.1", 161)  # as if it listened on a LAN address (the test binds nothing there)
    open_agent._warn_open_community(lan)
    assert "the well-known community 'public' from any address" in caplog.text
    caplog.clear()
    SnmpAgent(sec.gateway, cfg)._warn_open_community(lan)
    assert caplog.text == ""


# -- Modbus TCP ------------------------------------------------------------------------------------------------
def relay_address(w) -> int:
    return w.gateway.pointmap.by_ref[PointRef("io.do", channel=1)].address


def mbpoll_write(port: int, address: int, value: int) -> subprocess.CompletedProcess:
    return subprocess.run(["mbpoll", "-m", "tcp", "-a", "1", "-0", "-t", "4", "-r", str(address), "-p", str(port),
                           "127.0.0.1", str(value)], capture_output=True, text=True, timeout=30)


def raw(port: int, pdu: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(struct.pack(">HHHB", 9, 0, len(pdu) + 1, 1) + pdu)
        head = b""
        while len(head) < 7:
            head += s.recv(7 - len(head))
        length = struct.unpack(">H", head[4:6])[0] - 1
        body = b""
        while len(body) < length:
            body += s.recv(length - len(body))
        return body


def test_modbus_writes_are_off_by_default_and_refused_with_exception_02(sec):
    svc = sec.gateway.service('modbus_tcp')
    assert svc.writes_enabled is False
    port, relay = svc.port, relay_address(sec)
    model = sec.gateway.simulator.model
    before = model.do_state
    proc = mbpoll_write(port, relay, 1 - before)
    assert "Illegal data address" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert raw(port, struct.pack(">BHH", 6, relay, 1)) == bytes([0x86, 0x02])
    assert raw(port, struct.pack(">BHHBH", 16, relay, 1, 2, 1)) == bytes([0x90, 0x02])
    # the other write functions are not served at all: 01
    assert raw(port, struct.pack(">BHH", 5, 0, 0xFF00)) == bytes([0x85, 0x01])
    assert raw(port, struct.pack(">BHHBB", 15, 0, 1, 1, 1)) == bytes([0x8F, 0x01])
    assert raw(port, struct.pack(">BHHH", 22, relay, 0, 1)) == bytes([0x96, 0x01])
    assert raw(port, struct.pack(">BHHHHBH", 23, relay, 1, relay, 1, 2, 1)) == bytes([0x97, 0x01])
    assert model.do_state == before
    assert svc.counters["refused_writes"] >= 3 and svc.counters["writes"] == 0


def test_modbus_writes_when_on_only_from_writes_allow_from(sec):
    cfg = {**sec.gateway.config.section("modbus_tcp"), "listen": f"127.0.0.1:{free_port()}",
           "writes": {"enabled": True, "allow_from": ["127.0.0.1/32"], "role": "operator"}}
    svc = ModbusTcpService(sec.gateway, cfg)
    sec.gt.call(svc.start())
    model, relay = sec.gateway.simulator.model, relay_address(sec)
    try:
        port = svc.port
        target = 1 - model.do_state
        proc = mbpoll_write(port, relay, target)
        assert proc.returncode == 0 and "Written 1 references" in proc.stdout, proc.stdout + proc.stderr
        assert model.do_state == target
        # another address, even on the same host: refused, nothing reaches the relay
        assert raw(port, struct.pack(">BHH", 6, relay, 1 - target), source="127.0.0.2") == bytes([0x86, 0x02])
        assert model.do_state == target
        assert raw(port, struct.pack(">BHH", 6, relay, 1 - target)) == struct.pack(">BHH", 6, relay, 1 - target)
        assert model.do_state == 1 - target
        # measured values stay read-only for everybody
        cell_v = sec.gateway.pointmap.by_ref[PointRef("cell.voltage", 1, 1)].address
        assert raw(port, struct.pack(">BHH", 6, cell_v, 1)) == bytes([0x86, 0x02])
    finally:
        sec.gt.call(svc.stop())
    # on, with an empty allow-list: nobody may write
    svc = ModbusTcpService(sec.gateway, {**cfg, "listen": f"127.0.0.1:{free_port()}",
                                         "writes": {"enabled": True, "allow_from": [], "role": "operator"}})
    sec.gt.call(svc.start())
    try:
        assert raw(svc.port, struct.pack(">BHH", 6, relay, 0)) == bytes([0x86, 0x02])
    finally:
        sec.gt.call(svc.stop())


# -- web: login throttling ---------------------------------------------------------------------------------------
def test_login_lockout_per_user_and_address_answers_429_then_ends(sec, clocks):
    sec.ctx.users.add("ulla", "viewer", PASSWORD)
    c = browser(sec, "127.0.0.11")
    for _ in range(LOGIN["max_failures"]):
        assert attempt(c, "ulla", "wrong-password").status_code == 401
    r = attempt(c, "ulla", PASSWORD)  # the right password is not even checked now
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    assert 500 <= int(r.headers["Retry-After"]) <= 601
    assert browser(sec, "127.0.0.12").login("ulla")  # the same user from elsewhere
    clocks.offset += LOGIN["lockout_s"] + 1
    assert attempt(c, "ulla", PASSWORD).status_code == 302


def test_login_lockout_per_client_across_user_names(sec, clocks):
    sec.ctx.users.add("vera", "viewer", PASSWORD)
    sprayer = browser(sec, "127.0.0.21")
    for name in ("root", "admin", "operator", "vera"):  # one guess each: under the per-user limit
        assert attempt(sprayer, name, "Summer2024!").status_code == 401
    r = attempt(sprayer, "vera", PASSWORD)
    assert r.status_code == 429
    assert browser(sec, "127.0.0.22").login("vera")  # another address is not held
    clocks.offset += LOGIN["lockout_s"] + 1
    assert attempt(sprayer, "vera", PASSWORD).status_code == 302


def test_login_lockout_per_user_cannot_lock_the_admin_out_of_a_known_browser(sec, clocks):
    sec.ctx.users.add("boss", "admin", PASSWORD)
    own = browser(sec, "127.0.0.31")
    r = attempt(own, "boss", PASSWORD)
    assert r.status_code == 302
    device = set_cookies(r)[DeviceKeys.COOKIE]
    assert "HttpOnly" in device and "SameSite=Strict" in device and "Path=/login" in device
    # a botnet: one guess from each of many addresses (under the per-address limits), all at the admin
    for i in range(LOGIN["max_failures_per_user"]):
        assert attempt(browser(sec, f"127.0.1.{i + 1}"), "boss", f"guess-{i}-pass").status_code == 401
    # the name is now locked for every stranger, even with the right password ...
    assert attempt(browser(sec, "127.0.0.32"), "boss", PASSWORD).status_code == 429
    # ... but not for the browser the admin used before, from its usual address or another one
    own.cookies.set("bmsgw_session", None)
    assert attempt(own, "boss", PASSWORD).status_code == 302
    moved = browser(sec, "127.0.0.33")
    moved.cookies.set(DeviceKeys.COOKIE, own.cookies.get(DeviceKeys.COOKIE), path="/login")
    assert attempt(moved, "boss", PASSWORD).status_code == 302
    # a device cookie is only good for its own user, and a forged one for nobody
    stranger = browser(sec, "127.0.0.34")
    stranger.cookies.set(DeviceKeys.COOKIE, sec.ctx.devices.issue("someone-else"), path="/login")
    assert attempt(stranger, "boss", PASSWORD).status_code == 429
    stranger.cookies.set(DeviceKeys.COOKIE, own.cookies.get(DeviceKeys.COOKIE)[:-4] + "AAAA", path="/login")
    assert attempt(stranger, "boss", PASSWORD).status_code == 429
    # the known browser has a budget of its own: guessing with a stolen device cookie ends in a lockout too
    for _ in range(LOGIN["max_failures"]):
        assert attempt(moved, "boss", "not-the-password").status_code == 401
    assert attempt(moved, "boss", PASSWORD).status_code == 429
    # and no lock lasts: once the failures age out, a stranger's right password works again
    clocks.offset += LOGIN["lockout_s"] + 1
    assert attempt(browser(sec, "127.0.0.32"), "boss", PASSWORD).status_code == 302


def test_login_sends_only_to_pages_of_this_site(sec):
    sec.ctx.users.get("nina") or sec.ctx.users.add("nina", "viewer", PASSWORD)
    for target, where in (("/strings/1?x=1", "/strings/1?x=1"), ("//evil.example/", "/"),
                          ("/\t/evil.example/", "/"), ("/\\evil.example", "/"), ("https://evil.example/", "/"),
                          ("/\r\nSet-Cookie: x=1", "/")):
        c = browser(sec, "127.0.0.91")
        r = c.post("/login", data={"csrf": c.csrf(), "username": "nina", "password": PASSWORD, "next": target},
                   allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"] == where, (target, r.status_code)


def test_login_throttle_table_stays_bounded_and_keeps_recent_locks(monkeypatch):
    monkeypatch.setattr(LoginThrottle, "MAX_KEYS", 300)
    th = LoginThrottle(max_failures=2, lockout_s=600, max_failures_per_client=1000, max_failures_per_user=1000)
    for _ in range(2):
        th.failed("admin", "10.9.9.9")
    for i in range(2000):  # a flood of names from many addresses
        th.failed(f"user{i}", f"10.0.{i // 250}.{i % 250}")
        if i % 50 == 0:  # the attacker keeps the admin's pair locked meanwhile
            th.failed("admin", "10.9.9.9")
    assert len(th) <= 300
    assert th.locked("admin", "10.9.9.9") > 0


def test_account_page_throttles_current_password_guesses(sec, clocks):
    sec.ctx.users.add("cora", "operator", PASSWORD)
    c = browser(sec, "127.0.0.41").login("cora")
    for _ in range(LOGIN["max_failures"]):
        c.form("/account", "/account",
               {"current": "guess-guess", "password": "new-pass-123", "password2": "new-pass-123"})
    c.form("/account", "/account", {"current": PASSWORD, "password": "new-pass-123", "password2": "new-pass-123"})
    assert "Too many wrong passwords" in c.get("/account").text
    assert sec.ctx.users.authenticate("cora", PASSWORD) is not None  # not changed


# -- web: sessions -----------------------------------------------------------------------------------------------
def test_sessions_end_after_the_configured_idle_time_and_maximum_age(sec, clocks):
    idle, max_age = SESSION["idle_minutes"] * 60, SESSION["max_hours"] * 3600
    assert (sec.ctx.sessions.idle_s, sec.ctx.sessions.max_age_s) == (idle, max_age)
    sec.ctx.users.add("sami", "viewer", PASSWORD)
    c = browser(sec, "127.0.0.51")
    r = attempt(c, "sami", PASSWORD)
    assert f"Max-Age={int(max_age)}" in set_cookies(r)["bmsgw_session"]
    assert c.get("/api/v1/status").status_code == 200
    clocks.offset += idle - 5
    assert c.get("/api/v1/status").status_code == 200  # used: the idle time starts again
    clocks.offset += idle - 5
    assert c.get("/api/v1/status").status_code == 200
    clocks.offset += idle + 1
    assert c.get("/api/v1/status").status_code == 401
    r = c.get("/", allow_redirects=False)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    # busy all the time still ends at the maximum age
    assert attempt(c, "sami", PASSWORD).status_code == 302
    start = clocks.offset
    while clocks.offset - start < max_age - idle:
        clocks.offset += idle - 10
        assert c.get("/api/v1/status").status_code == 200
    clocks.offset = start + max_age + 1
    assert c.get("/api/v1/status").status_code == 401


def test_session_settings_change_with_a_config_reload(sec):
    ctx = sec.ctx
    saved = ctx.gateway.config.data["web"]
    try:
        ctx.gateway.config.data["web"] = {**saved, "session": {"idle_minutes": 7, "max_hours": 2},
                                          "login": {**saved["login"], "max_failures_per_user": 9}}
        ctx.reload(ctx.gateway.config)
        assert (ctx.sessions.idle_s, ctx.sessions.max_age_s, ctx.throttle.max_failures_per_user) == (420, 7200, 9)
    finally:
        ctx.gateway.config.data["web"] = saved
        ctx.reload(ctx.gateway.config)


# -- web: CSRF and headers on every route ------------------------------------------------------------------------
def _url(rule) -> str:
    values = {}
    for name, conv in rule._converters.items():
        values[name] = 1 if type(conv).__name__ in ("IntegerConverter", "NumberConverter") else \
            ("app.js" if name == "filename" else "site")
    path = rule.rule
    for name, value in values.items():
        path = re.sub(rf"<(?:[^:<>]+:)?{name}>", str(value), path)
    return path


def test_every_state_changing_route_needs_the_csrf_token(sec):
    """Every rule of the Flask url_map with an unsafe method: a logged-in admin's request without the form's
    token, or with another visitor's, is refused before the view runs.  A route added later is checked too."""
    admin = admin_browser(sec, "csrf-admin", "127.0.0.61")
    other = browser(sec, "127.0.0.62")
    foreign_token = other.csrf("/login")
    routes = [(method, _url(rule)) for rule in sec.service.app.url_map.iter_rules()
              for method in sorted(rule.methods & UNSAFE)]
    assert {("POST", "/login"), ("POST", "/logout"), ("POST", "/users/add"), ("PUT", "/api/v1/config"),
            ("POST", "/config/site"), ("POST", "/api/v1/alarms/site/acknowledge")} <= set(routes)
    for method, url in routes:
        for headers, data in (({}, {}), ({"X-CSRF-Token": foreign_token}, {"csrf": foreign_token}),
                              ({"X-CSRF-Token": "forged"}, {})):
            r = admin.request(method, url, headers={**headers, "Accept": "application/json"}, data=data,
                              allow_redirects=False)
            assert r.status_code == 403 and "CSRF" in r.json()["message"], (method, url, r.status_code, r.text[:200])
    assert admin.get("/api/v1/status").status_code == 200  # still logged in: nothing above took effect
    assert sec.alarms.acks == []


def check_headers(r, tls: bool = False) -> None:
    for name, value in HEADERS.items():
        assert value in r.headers.get(name, ""), (r.url, r.status_code, name, dict(r.headers))
    assert ("Strict-Transport-Security" in r.headers) == tls, (r.url, r.status_code)
    assert "no-store" in r.headers.get("Cache-Control", "") or r.headers["Cache-Control"].startswith("public")


def raw_http(port: int, request: bytes, tls_context: ssl.SSLContext | None = None) -> tuple[int, dict]:
    """Status and headers of the server's answer to raw bytes (for what HTTP libraries will not send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sock = tls_context.wrap_socket(s, server_hostname="localhost") if tls_context else s
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), headers


def test_security_headers_on_every_response(sec):
    admin = admin_browser(sec, "hdr-admin", "127.0.0.71")
    anon = browser(sec, "127.0.0.72")
    gets = [_url(rule) for rule in sec.service.app.url_map.iter_rules() if "GET" in rule.methods]
    assert len(gets) > 10
    seen = set()
    for url in gets:
        for c in (anon, admin):
            r = c.get(url, allow_redirects=False)
            check_headers(r)
            seen.add(r.status_code)
    viewer = {"Authorization": f"Bearer {sec.token('viewer')}"}
    for r in (anon.get("/no/such/page"), anon.delete("/api/v1/strings", headers=viewer),
              anon.get("/api/v1/config", headers=viewer), anon.post("/login", data={"username": "x"}),
              anon.get("/api/v1/strings/1/cells/1/history?max_points=lots", headers=viewer)):
        check_headers(r)
        seen.add(r.status_code)
    # the HTTP server's own answers: a malformed request, a body over the limit
    port = sec.service.port
    for request in (b"NONSENSE\r\n\r\n",
                    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"):
        status, headers = raw_http(port, request)
        seen.add(status)
        for name, value in HEADERS.items():
            assert value in headers.get(name, ""), (request, status, headers)
    assert {200, 302, 400, 401, 403, 404, 405, 413} <= seen
    # cookies: not readable by scripts, not sent by other sites
    for resp, name in ((browser(sec, "127.0.0.73").get("/login"), "bmsgw_pre"),
                       (attempt(browser(sec, "127.0.0.73"), "hdr-admin", PASSWORD), "bmsgw_session")):
        line = set_cookies(resp)[name]
        assert "HttpOnly" in line and "SameSite=Strict" in line and "Secure" not in line  # plain HTTP here


def test_tls_adds_hsts_and_secure_cookies_to_every_response(tmp_path):
    with web_gateway(tmp_path, cells=2, alarms=False, web={"tls": {"enabled": True}}) as w:
        cert = w.gateway.config.state_dir / "web" / "tls" / "cert.pem"
        w.ctx.users.add("tls-admin", "admin", PASSWORD)
        c = browser(w, verify=str(cert))
        r = c.get("/login")
        check_headers(r, tls=True)
        assert "Secure" in set_cookies(r)["bmsgw_pre"]
        r = attempt(c, "tls-admin", PASSWORD)
        check_headers(r, tls=True)
        cookies = set_cookies(r)
        assert "Secure" in cookies["bmsgw_session"] and "Secure" in cookies[DeviceKeys.COOKIE]
        for url in ("/", "/api/v1/status", "/nope", "/static/app.js"):
            check_headers(c.get(url, allow_redirects=False), tls=True)
        ctx = ssl.create_default_context(cafile=str(cert))
        status, headers = raw_http(w.service.port, b"NONSENSE\r\n\r\n", ctx)
        assert status == 400 and headers["Strict-Transport-Security"] == "max-age=31536000"
        assert (w.gateway.config.state_dir / "web" / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600


def test_a_tls_key_of_your_own_readable_by_others_is_reported(tmp_path, caplog):
    from gateway.outputs.web.tlscert import ensure_self_signed

    cert, key = ensure_self_signed(tmp_path / "own", "127.0.0.1")
    os.chmod(key, 0o644)
    caplog.set_level(logging.WARNING, logger="gateway.outputs.web.face")
    with web_gateway(tmp_path, cells=2, alarms=False,
                     web={"tls": {"enabled": True, "cert": str(cert), "key": str(key)}}) as w:
        assert w.url.startswith("https://")
    assert f"web.tls.key {key}: mode 0644: every user can read it" in caplog.text


# -- secrets at rest ---------------------------------------------------------------------------------------------
def test_web_passwords_are_argon2_and_the_files_the_gateway_writes_are_private(sec):
    import json

    if sec.ctx.users.get("file-check") is None:
        sec.ctx.users.add("file-check", "viewer", PASSWORD)
    browser(sec, "127.0.0.97").login("file-check")  # the device key is made at the first login (this test's own)
    tid, token = sec.ctx.users.add_token("file-check", "viewer")
    web_dir = sec.gateway.config.state_dir / "web"
    users = web_dir / "users.json"
    text = users.read_text()
    assert PASSWORD not in text and token not in text
    data = json.loads(text)
    assert data["users"]["file-check"]["hash"].startswith("$argon2id$")
    assert all(len(t["sha256"]) == 64 for t in data["tokens"].values())
    assert web_dir.stat().st_mode & 0o777 == 0o700
    for f in (users, web_dir / DeviceKeys.KEY_FILE):
        assert f.stat().st_mode & 0o777 == 0o600, f
    # config.yaml saved from the web page: the gateway never leaves it world-readable
    from gateway.outputs.web.configedit import atomic_write

    cfg = sec.tmp / "saved.yaml"
    cfg.write_text("a: 1\n")
    os.chmod(cfg, 0o644)
    atomic_write(cfg, "a: 2\n")
    assert cfg.stat().st_mode & 0o777 == 0o640 and (sec.tmp / "saved.yaml.bak").stat().st_mode & 0o777 == 0o640
    new = sec.tmp / "new.yaml"
    atomic_write(new, "a: 1\n")
    assert new.stat().st_mode & 0o777 == 0o640


def test_config_with_secrets_readable_by_others_is_reported(sec, tmp_path, caplog):
    # the running gateway's config holds SNMPv3 passphrases and was written 0644 by the test harness
    os.chmod(sec.gateway.config.path, 0o644)
    found = secretfiles.check_config(sec.gateway)
    assert len(found) == 1 and "snmp.v3_users[0].auth_key, snmp.v3_users[0].priv_key" in found[0]
    assert "every user can read it" in found[0] and "chmod 640" in found[0]
    assert sec.gateway.status()["secrets"]["warnings"] == found  # said at start, and in `bmsgw status`
    os.chmod(sec.gateway.config.path, 0o640)  # owner and the gateway's own group
    assert secretfiles.check_config(sec.gateway) == []
    os.chmod(sec.gateway.config.path, 0o600)
    assert secretfiles.check_config(sec.gateway) == []
    # every kind of secret the faces declare is found; a config without any is not reported whatever its mode
    over = {"mqtt": {"username": "u", "password": "mq-pass"},
            "notify": {"email": {"password": "smtp-pass"}, "webhook": {"headers": {"Authorization": "Bearer x"}}},
            "snmp": {"v2c": {"community": None}, "v3_users": [V3_USER]}}
    path = write_config(tmp_path, over, base=small_bank(1, 2))
    os.chmod(path, 0o604)
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "x"})
    text = secretfiles.check_config(gw)[0]
    for key in ("mqtt.password", "notify.email.password", "notify.webhook.headers.Authorization",
                "snmp.v3_users[0].auth_key"):
        assert key in text
    (tmp_path / "plain").mkdir()
    plain = write_config(tmp_path / "plain", {"snmp": {"v3_users": []}}, base=small_bank(1, 2))
    os.chmod(plain, 0o666)
    assert secretfiles.check_config(Gateway(plain, simulator=False, port_overrides={"bus1": "x"})) == []
    # password files (MQTT, SMTP, SIM PIN) read through one helper that says the same
    caplog.set_level(logging.WARNING, logger="gateway.secretfiles")
    pw = tmp_path / "mqtt.pass"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o644)
    assert secretfiles.read_secret(pw, "mqtt.password_file") == "s3cret"
    assert "mqtt.password_file" in caplog.text and "chmod 600" in caplog.text
    caplog.clear()
    os.chmod(pw, 0o600)
    assert secretfiles.read_secret(pw, "mqtt.password_file") == "s3cret" and caplog.text == ""
    from gateway.outputs.mqtt.face import MqttService

    os.chmod(pw, 0o644)
    (tmp_path / "mq").mkdir()
    mq = write_config(tmp_path / "mq", {"mqtt": {"enabled": True, "username": "u", "password_file": str(pw)}},
                      base=small_bank(1, 2))
    gw = Gateway(mq, simulator=False, port_overrides={"bus1": "x"})
    assert MqttService(gw, gw.config.section("mqtt")).uploader.password == "s3cret"
    assert "mqtt.password_file" in caplog.text
    # `bmsgw check-config` says it too (the config is valid: exit 0)
    env = {k: v for k, v in os.environ.items() if k != "BMSGW_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "valid" in res.stdout
    assert "warning:" in res.stderr and "mqtt.password" in res.stderr and "every user can read it" in res.stderr
    # and the config page does not put a password on screen
    page = admin_browser(sec, "cfg-admin", "127.0.0.81").get("/config/mqtt").text
    assert re.search(r'<input id="[^"]+" name="mqtt.password" value="[^"]*" type="password"', page)
    assert re.search(r'<input id="[^"]+" name="mqtt.username" value="[^"]*"\s*(placeholder|>)', page)


# -- defaults ----------------------------------------------------------------------------------------------------
def _listens(data: dict) -> dict[str, str]:
    return {name: sec["listen"] for name, sec in data.items() if isinstance(sec, dict) and "listen" in sec}


def test_default_config_keeps_every_face_on_loopback_and_writes_off():
    gw = Gateway(DEFAULT_CONFIG, simulator=False, port_overrides={f"bus{i}": "x" for i in range(1, 5)})
    listens = _listens(gw.config.data)  # with every face's schema defaults filled in
    assert set(listens) >= {"modbus_tcp", "snmp", "web", "prometheus", "nut"}
    for face, listen in listens.items():
        assert listen.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]", "localhost"), (face, listen)
    # and a face that forgets `listen` in the file falls back to loopback too
    for name, schema in secretfiles.config_schema(gw)["properties"].items():
        default = schema.get("properties", {}).get("listen", {}).get("default")
        if default is not None:
            assert default.startswith("127.0.0.1:"), (name, default)
    data = gw.config.data
    assert data["modbus_tcp"]["writes"]["enabled"] is False
    assert data["mqtt"]["host"] == "127.0.0.1" and data["notify"]["webhook"]["url"].startswith("http://127.0.0.1")
    assert data["web"]["setup_from_localhost"] is True and data["web"]["users"] == []


def test_packaged_config_is_safe_on_the_network():
    """debian/config.yaml listens on every interface: writes off, no v2c community open to all, TLS on."""
    data = yaml.safe_load((ROOT / "debian" / "config.yaml").read_text())
    assert data["modbus_tcp"]["writes"]["enabled"] is False
    v2c_cfg = data["snmp"].get("v2c") or {}
    community = v2c_cfg.get("community")
    assert community is None or (community.lower() not in ("public", "private") and v2c_cfg.get("allow_from"))
    assert not data["snmp"].get("v3_users")  # no shipped credentials
    assert data["web"]["tls"]["enabled"] is True and not data["web"].get("users")
    for face in ("prometheus", "mqtt"):
        sec = data.get(face) or {}
        assert sec.get("enabled") is False or sec.get("listen", "127.0.0.1:0").startswith("127.0.0.1:"), face
    assert data["nut"]["enabled"] is False and not data["nut"]["users"]  # NUT: off until an admin turns it on
    assert "statoverride bmsgw bmsgw 0640 \"$CONFIG\"" in (ROOT / "debian" / "bmsgw.postinst").read_text()
    assert "UMask=0077" in (ROOT / "debian" / "bmsgw.service").read_text()
