"""Configuration from the web: validation naming the field, atomic save keeping comments and a backup,
reload without stopping polling; HTTPS with the self-signed certificate; `bmsgw user` / `bmsgw token`."""
from __future__ import annotations

import os
import ssl
import subprocess
import urllib.request

import pytest
import requests
import yaml

from gateway.hookspecs import hookimpl
from gateway.outputs.web.configedit import atomic_write
from tests.support import small_bank, write_config
from tests.web_support import PASSWORD, Client, web_gateway

COMMENT = "# site comment kept by the web page\n"


def _with_comment(path):
    text = path.read_text()
    path.write_text(COMMENT + text.replace("site:\n", "site:  # where this bank is\n", 1))


class NoBasement:
    @hookimpl
    def bmsgw_check_config(self, gateway_config):
        return ["site.name: no batteries in the basement"] if gateway_config.section("site").get("name") == \
            "Basement" else []


def test_put_config_validates_saves_atomically_and_reloads_live(tmp_path):
    with web_gateway(tmp_path, cells=4, overrides={"site": {"name": "Old room"}}) as w:
        path = w.gateway.config.path
        _with_comment(path)
        before = path.read_text()
        admin = {"Authorization": f"Bearer {w.token('admin')}"}
        url = w.url + "api/v1/config"
        doc = requests.get(url, headers=admin, timeout=30).json()["config"]
        assert doc["site"]["name"] == "Old room"

        bad = yaml.safe_load(before)
        bad["web"]["session"] = {"idle_minutes": 0}
        r = requests.put(url, json={"config": bad}, headers=admin, timeout=30)
        assert r.status_code == 400
        assert r.json()["field"] == "web.session.idle_minutes" and "minimum of 1" in r.json()["message"]
        bad = yaml.safe_load(before)
        bad["strings"][0]["devices"][1]["bus"] = "bus9"
        r = requests.put(url, json={"config": bad}, headers=admin, timeout=30)
        assert r.status_code == 400 and r.json()["field"] == "strings[0].devices[1].bus"
        assert "unknown bus 'bus9'" in r.json()["message"]
        # what a plugin finds wrong in its section (bmsgw_check_config): the gateway would not start with it
        w.gateway.pm.register(NoBasement(), name="test-checker")
        bad = yaml.safe_load(before)
        bad["site"]["name"] = "Basement"
        r = requests.put(url, json={"config": bad}, headers=admin, timeout=30)
        assert r.status_code == 400 and r.json()["field"] == "site.name"
        assert r.json()["message"] == "site.name: no batteries in the basement"
        w.gateway.pm.unregister(name="test-checker")
        assert path.read_text() == before  # nothing written

        r = requests.put(url, data="site: {}", headers={**admin, "Content-Type": "text/yaml"}, timeout=30)
        assert r.status_code == 415

        gen = w.gateway.store.generation
        new = yaml.safe_load(before)
        new["site"]["name"] = "New room"
        new["web"]["session"] = {"idle_minutes": 45}
        r = requests.put(url, json={"config": new}, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer.pop("notes") == [f"snmp: a new agent serves the new settings (SNMPv3 engine boots "
                                       f"{w.gateway.service('snmp').agent.boots})"]  # sysName is the site's
        assert answer == {"saved": True, "changed": ["site", "web"], "applied": ["site", "web"],
                          "restart_required": [], "failed": {}}
        text = path.read_text()
        assert text.startswith(COMMENT) and "site:  # where this bank is" in text
        assert yaml.safe_load(text) == new
        assert (path.parent / "config.yaml.bak").read_text() == before
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        # applied while running: the gateway's config, the web face's settings
        assert w.gateway.config.section("site")["name"] == "New room"
        assert w.ctx.sessions.idle_s == 45 * 60
        page = w.user("admin", "admin").get("/")
        assert "New room" in page.text
        w.gt.wait_for(lambda: w.gateway.store.generation > gen + 2, timeout=10, what="polling to go on")

        # a bus change is saved but waits for a restart; the running topology stays
        new["buses"][0]["baud"] = 9600
        r = requests.put(url, json={"config": new}, headers=admin, timeout=30)
        assert r.json()["restart_required"] == ["buses"]
        assert yaml.safe_load(path.read_text())["buses"][0]["baud"] == 9600
        assert w.gateway.config.data["buses"][0]["baud"] == 115200
        assert w.gateway.topology.bus("bus1").baud == 115200


def test_config_page_form_saves_a_section(tmp_path):
    with web_gateway(tmp_path, cells=4) as w:
        c = w.user("admin", "admin")
        page = c.get("/config/gateway")
        assert 'name="gateway.poll.fast_s"' in page.text
        r = c.form("/config/gateway", "/config/gateway",
                   {"gateway.poll.fast_s": "abc", "gateway.state_dir": w.gateway.config.data["gateway"]["state_dir"]})
        assert r.status_code == 400 and "gateway.poll.fast_s: expected a number, got &#39;abc&#39;" in r.text
        r = c.form("/config/gateway", "/config/gateway",
                   {"gateway.poll.fast_s": "0.25", "gateway.log_level": "WARNING",
                    "gateway.state_dir": w.gateway.config.data["gateway"]["state_dir"]})
        assert r.status_code == 302
        assert "Saved. Applied now: gateway." in c.get(r.headers["Location"]).text
        saved = yaml.safe_load(w.gateway.config.path.read_text())["gateway"]
        assert saved["poll"] == {"fast_s": 0.25} and saved["log_level"] == "WARNING"
        assert w.gateway.engine.fast_s == 0.25  # polling goes on at the new pace, no restart
        # a YAML field with a syntax error names the field
        r = c.form("/config/site", "/config/site", {"site.name": "x", "site.id": "bad id!"})
        assert r.status_code == 400 and "site.id" in r.text and "does not match" in r.text
        # only admins
        r = w.user("vic", "viewer").get("/config/gateway")
        assert r.status_code == 403


def test_atomic_write_keeps_the_previous_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: 1\n")
    os.chmod(p, 0o640)
    atomic_write(p, "a: 2\n")
    assert p.read_text() == "a: 2\n" and (tmp_path / "c.yaml.bak").read_text() == "a: 1\n"
    assert p.stat().st_mode & 0o777 == 0o640


def test_https_with_a_self_signed_certificate_made_on_first_start(tmp_path):
    with web_gateway(tmp_path, cells=2, alarms=False, web={"tls": {"enabled": True}}) as w:
        cert = w.gateway.config.state_dir / "web" / "tls" / "cert.pem"
        key = cert.with_name("key.pem")
        assert cert.exists() and key.stat().st_mode & 0o777 == 0o600
        assert w.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(w.url + "login", context=ctx, timeout=30) as r:
            assert r.status == 200
            assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
        c = Client(w.url, verify=str(cert))
        w.ctx.users.add("admin", "admin", PASSWORD)
        r = c.post("/login", data={"csrf": c.csrf(), "username": "admin", "password": PASSWORD}, allow_redirects=False)
        assert "Secure" in r.headers["Set-Cookie"]
        status = c.get("/api/v1/status").json()
        assert status["web"]["tls_fingerprint"] == w.service.cert_fingerprint
        with pytest.raises(requests.exceptions.SSLError):  # an unknown certificate is refused by default
            requests.get(w.url, timeout=30)
        first = cert.read_bytes()
    # kept across restarts, so a browser's exception stays valid
    with web_gateway(tmp_path, cells=2, alarms=False, web={"tls": {"enabled": True}}):
        assert cert.read_bytes() == first


def _bmsgw(venv_bin, env, config, *args, stdin=None):
    return subprocess.run([str(venv_bin / "bmsgw"), *args, "--config", str(config)], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_users_and_tokens(tmp_path, venv_bin, bmsgw_env):
    path = write_config(tmp_path, base=small_bank(1, 2))
    r = _bmsgw(venv_bin, bmsgw_env, path, "user", "add", "ops", "--role", "operator", "--password-stdin",
               stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    r = _bmsgw(venv_bin, bmsgw_env, path, "token", "add", "dcim", "--role", "viewer")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("bmsgw_") and token not in (tmp_path / "var" / "web" / "users.json").read_text()
    r = _bmsgw(venv_bin, bmsgw_env, path, "user", "hash", "--password-stdin", stdin="config-pass-99\n")
    assert r.returncode == 0 and r.stdout.startswith("$argon2id$")
    data = yaml.safe_load(path.read_text())
    data["web"] = {"listen": data.get("web", {}).get("listen", "127.0.0.1:8080"),
                   "users": [{"name": "cfg", "role": "admin", "password_hash": r.stdout.strip()}]}
    path.write_text(yaml.safe_dump(data))
    r = _bmsgw(venv_bin, bmsgw_env, path, "user", "list")
    assert r.returncode == 0 and "ops\toperator" in r.stdout and "cfg\tadmin\tconfig file" in r.stdout
    with web_gateway(tmp_path, cells=2, alarms=False,
                     web={"users": data["web"]["users"]}) as w:
        assert requests.get(w.url + "api/v1/strings", headers={"Authorization": f"Bearer {token}"},
                            timeout=30).status_code == 200
        Client(w.url).login("ops")
        Client(w.url).login("cfg", "config-pass-99")
        # a user added while the gateway runs can log in at once
        r = _bmsgw(venv_bin, bmsgw_env, w.gateway.config.path, "user", "add", "late", "--password-stdin",
                   stdin=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        Client(w.url).login("late")
        # and refused ones say why, with exit code 2
        r = _bmsgw(venv_bin, bmsgw_env, w.gateway.config.path, "user", "add", "late", "--password-stdin",
                   stdin="abc\n")
        assert r.returncode == 2 and "at least 8 characters" in r.stderr
