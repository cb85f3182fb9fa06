"""The setpoints page: every alarm rule's effective limits and where they come from; an admin's change goes
through the config's check-and-reload path and the real alarm engine judges the present values by it at once;
problems are named next to the cell; viewers read, never write."""
from __future__ import annotations

import re

import yaml

from tests.web_support import web_gateway

# the real alarm engine behind the page (the web tests' fakes stand in for it elsewhere)
REAL_ALARMS = {"plugins": {"disable": ["gateway.history"]}}


def cell(html: str, rule: str, field: str) -> str:
    """The text of one cell of the table (value and source), tags stripped."""
    row = re.search(rf'<tr id="rule-{rule}">(.*?)</tr>', html, re.S)
    assert row, f"no row {rule}"
    td = re.search(rf'<td class="sp[^"]*" data-field="{re.escape(field)}">(.*?)</td>', row.group(1), re.S)
    assert td, f"no {field} in {rule}"
    value = re.search(r'value="([^"]*)"', td.group(1))
    text = re.sub(r"<[^>]+>", " ", td.group(1))
    return " ".join(((value.group(1) + " ") if value else "").split() + text.split())


def form_of(html: str) -> dict:
    """What the browser would post back unchanged: every input's name and value."""
    out = {}
    for m in re.finditer(r'<input (?:type="hidden" )?name="([^"]+)"[^>]*?value="([^"]*)"', html):
        out[m.group(1)] = m.group(2)
    return out


def active_alarm_points(gw) -> set:
    return {a.get("point") for a in gw.pm.hook.bmsgw_alarms(gateway=gw, active=True, limit=100) or []}


def test_setpoints_page_edits_limits_live_names_problems_and_is_read_only_for_viewers(tmp_path):
    with web_gateway(tmp_path, cells=4, alarms=False, overrides=REAL_ALARMS) as w:
        gw = w.gateway
        admin = w.user("ada", "admin")
        page = admin.get("/setpoints?string=1")
        assert page.status_code == 200
        html = page.text
        assert 'href="/setpoints"' in admin.get("/").text, "linked in the navigation"
        # 12 V units: IEEE 1188's 2.32 / 2.35 V per cell times 6; the ohmic levels are the analytics' thresholds
        assert cell(html, "cell_voltage_float", "high.warning") == "13.92 default"
        assert 'title="IEEE 1188, 6 × 2 V: the built-in default' in html
        assert cell(html, "cell_voltage_float", "low.critical").startswith("12.78 ")
        assert cell(html, "cell_voltage_float", "on_delay_s").startswith("300 ")
        assert cell(html, "cell_ohmic_baseline", "high.warning") == "20 analytics.thresholds"
        for rule in ("cell_voltage_deviation", "cell_temperature", "cell_temperature_ambient", "cell_soc", "cell_soh",
                     "string_voltage_float", "string_current", "string_soc"):
            assert f'id="rule-{rule}"' in html, rule
        room = admin.get("/setpoints?string=room").text
        assert cell(room, "ambient_temperature", "high.warning").startswith("27 default")

        # a warning above its critical limit, a value no sensor measures: refused, the problem named, nothing saved
        before = gw.config.path.read_text()
        posted = form_of(html)
        bad = {**posted, "scope": "string", "v.cell_temperature.high.warning": "60",
               "v.cell_voltage_float.high.critical": "40"}
        r = admin.post("/setpoints?string=1", data=bad, allow_redirects=False)
        assert r.status_code == 400
        assert "the high warning must not be above the high critical limit (60 C vs 50 C)" in r.text
        assert "40 V is outside what the sensors measure (7.5 to 15.6 V)" in r.text
        assert gw.config.path.read_text() == before

        # moved under the present value (about 25 C in the room; above the low warning of 10 C) with no on-delay:
        # the alarm engine raises at once
        assert "io.ambient_temperature" not in active_alarm_points(gw)
        data = {**form_of(room), "scope": "site", "v.ambient_temperature.high.warning": "15",
                "v.ambient_temperature.on_delay_s": "0"}
        r = admin.post("/setpoints?string=room", data=data, allow_redirects=False)
        assert r.status_code == 302, r.text[:2000]
        w.gt.wait_for(lambda: "io.ambient_temperature" in active_alarm_points(gw), what="the ambient alarm")
        saved = yaml.safe_load(gw.config.path.read_text())["alarms"]["rules"]["ambient_temperature"]
        assert saved == {"high": {"warning": 15.0}, "on_delay_s": 0.0}
        room = admin.get("/setpoints?string=room").text
        assert "Saved. Applied now: alarms." in room
        assert cell(room, "ambient_temperature", "high.warning") == "15 site"
        assert cell(room, "ambient_temperature", "high.critical").startswith("35 default")

        # one string's own limit; a site-wide change cannot override it (the narrower scope wins), and says so
        data = {**form_of(admin.get("/setpoints?string=1").text), "scope": "string",
                "v.cell_temperature.high.warning": "38"}
        assert admin.post("/setpoints?string=1", data=data, allow_redirects=False).status_code == 302
        html = admin.get("/setpoints?string=1").text
        assert cell(html, "cell_temperature", "high.warning") == "38 string 1"
        doc = yaml.safe_load(gw.config.path.read_text())["alarms"]
        assert doc["strings"] == [{"id": 1, "rules": {"cell_temperature": {"high": {"warning": 38.0}}}}]
        data = {**form_of(html), "scope": "site", "v.cell_temperature.high.warning": "39"}
        r = admin.post("/setpoints?string=1", data=data, allow_redirects=False)
        assert r.status_code == 400 and "the string 1 override sets this value" in r.text
        # reset at the string's scope: back to the default
        data = {**form_of(html), "scope": "string", "reset.cell_temperature": "1"}
        assert admin.post("/setpoints?string=1", data=data, allow_redirects=False).status_code == 302
        html = admin.get("/setpoints?string=1").text
        assert cell(html, "cell_temperature", "high.warning").startswith("40 default")

        # a viewer reads the same table, without a field to edit, and cannot post one
        viewer = w.user("vic", "viewer")
        html = viewer.get("/setpoints?string=room").text
        assert 'name="v.' not in html and "Only an administrator can change setpoints." in html
        assert cell(html, "ambient_temperature", "high.warning") == "15 site"
        r = viewer.post("/setpoints?string=room", data={"csrf": viewer.csrf("/setpoints"), "scope": "site",
                                                        "v.ambient_temperature.high.warning": "50"},
                        allow_redirects=False)
        assert r.status_code == 403
        # and an admin's form without its CSRF token is refused
        r = admin.post("/setpoints?string=room", data={"scope": "site", "v.ambient_temperature.high.warning": "50"},
                       allow_redirects=False)
        assert r.status_code == 403
        assert yaml.safe_load(gw.config.path.read_text())["alarms"]["rules"]["ambient_temperature"]["high"] == \
            {"warning": 15.0}


def test_setpoints_in_chromium_edit_a_limit_and_see_it_applied(tmp_path):
    """Debian's chromium (Playwright, no download): an admin edits a limit in the table, a bad value is named
    next to its cell, a good one is applied and the alarm it raises is on the alarms page."""
    from playwright.sync_api import expect, sync_playwright

    from tests.web_support import ARTIFACTS, PASSWORD

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with web_gateway(tmp_path, cells=4, alarms=False, overrides=REAL_ALARMS) as w, sync_playwright() as p:
        w.ctx.users.add("ada", "admin", PASSWORD)
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP too
            page.goto(w.url + "login")
            page.fill("input[name=username]", "ada")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(w.url)
            page.click("nav >> text=Setpoints")
            expect(page.locator("h1")).to_have_text("Setpoints")
            expect(page.locator("#v-cell_voltage_float-high-warning")).to_have_value("13.92")
            page.screenshot(path=str(ARTIFACTS / "setpoints-string.png"), full_page=True)
            page.click(".tabs >> text=Room")
            warning = page.locator("#v-ambient_temperature-high-warning")
            expect(warning).to_have_value("27")
            warning.fill("40")  # above the critical limit of 35: refused, said next to the cell
            page.click("form.setpoints button[type=submit]")
            expect(page.locator("#rule-ambient_temperature td.bad .error")).to_contain_text(
                "the high warning must not be above the high critical limit (40 C vs 35 C)")
            assert errors == ["Failed to load resource: the server responded with a status of 400 (BAD REQUEST)"]
            errors.clear()  # the refused form's answer is a 400 on purpose
            page.locator("#v-ambient_temperature-high-warning").fill("15")
            page.locator("#v-ambient_temperature-on_delay_s").fill("0")
            page.click("form.setpoints button[type=submit]")
            expect(page.locator(".flash.ok")).to_contain_text("Saved. Applied now: alarms.")
            expect(page.locator("#v-ambient_temperature-high-warning")).to_have_value("15")
            expect(page.locator("#rule-ambient_temperature [data-field='high.warning'] .src")).to_have_text("site")
            page.screenshot(path=str(ARTIFACTS / "setpoints.png"), full_page=True)
            page.click("nav >> text=Alarms")
            expect(page.locator("table.alarms").first).to_contain_text("mbient temperature")
            assert not errors, errors
        finally:
            browser.close()
