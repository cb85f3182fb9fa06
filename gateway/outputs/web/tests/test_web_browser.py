"""The web page in a real browser (Debian's chromium, driven by Playwright): first start, login, the bar
chart of 120 batteries, a trend with zoom, the forecast, acknowledging an alarm, a phone-sized screen.

Screenshots go to test-artifacts/web/.  Playwright never downloads a browser here: it launches
/usr/bin/chromium.
"""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web_support import ARTIFACTS, PASSWORD, web_gateway

# counts pixels of each level colour on a chart's canvas (uPlot draws one canvas per chart)
COUNT_COLOURS = """el => {
  const c = el.querySelector('canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const want = {normal: [0x2e, 0x8b, 0x57], warning: [0xe6, 0xa1, 0x00], critical: [0xd0, 0x31, 0x2d]};
  const out = {normal: 0, warning: 0, critical: 0};
  for (let i = 0; i < d.length; i += 4) for (const k in want) {
    const w = want[k]; if (Math.abs(d[i]-w[0]) < 8 && Math.abs(d[i+1]-w[1]) < 8 && Math.abs(d[i+2]-w[2]) < 8) out[k]++;
  }
  return out;
}"""


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with web_gateway(tmp_path_factory.mktemp("web-browser"), strings=1, cells=120) as w:
        yield w


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def login(browser, web, name="admin", viewport=None):
    if web.ctx.users.get(name) is None:  # when a test runs on its own
        web.ctx.users.add(name, "admin", PASSWORD)
    ctx = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(web.url + "login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(web.url)
    return page


def test_first_start_sets_up_the_admin_then_the_overview_shows_the_bank(web, browser):
    assert not web.ctx.users.has_users()
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP violations too
    page.goto(web.url)  # not logged in -> login -> no user yet and we are on the controller -> setup
    expect(page.locator("h1")).to_have_text("First start: create the administrator")
    shot(page, "01-first-start")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(web.url)
    expect(page.locator(".flash.ok")).to_contain_text("Welcome, admin")
    card = page.locator(".card[data-string='1']")
    expect(card).to_contain_text("String 1")
    expect(card).to_contain_text(" V")
    expect(page.locator("table.alarms")).to_contain_text("battery 37: ohmic value 6.1 mOhm")
    shot(page, "02-overview")
    assert web.ctx.users.get("admin").role == "admin"
    # the setup page is gone for good
    page.goto(web.url + "setup")
    assert "setup" not in page.url
    expect(page.locator("h1")).to_have_text("Log in")
    assert not errors
    ctx.close()


def test_bar_chart_draws_all_120_batteries_coloured_by_alarm_state(web, browser):
    page = login(browser, web)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP violations too
    page.goto(web.url + "strings/1")
    for point in ("voltage", "temperature", "ohmic"):
        chart = page.locator(f".chart.bar[data-point={point}]")
        expect(chart).to_have_attribute("data-drawn", "120", timeout=15000)
    n = page.evaluate("() => window.bmsgw.charts.voltage.data[0].length")
    assert n == 120
    colours = page.locator(".chart.bar[data-point=voltage]").evaluate(COUNT_COLOURS)
    # battery 37 critical (red), battery 12 warning (amber), the other 118 normal (green)
    assert colours["critical"] > 50 and colours["warning"] > 50
    assert colours["normal"] > 50 * colours["critical"]
    page.locator(".chart.bar[data-point=voltage] .u-over").hover()
    expect(page.locator("#readout")).to_contain_text("Battery")
    shot(page, "03-string-bars")
    assert not errors


def test_clicking_a_bar_opens_its_trend_and_dragging_zooms(web, browser):
    page = login(browser, web)
    page.goto(web.url + "strings/1")
    chart = page.locator(".chart.bar[data-point=voltage]")
    expect(chart).to_have_attribute("data-drawn", "120", timeout=15000)
    over = chart.locator(".u-over")
    box = over.bounding_box()
    # battery 37 sits at 36.5/120 of the plot width
    page.mouse.click(box["x"] + box["width"] * (36.5 / 120), box["y"] + box["height"] / 2)
    page.wait_for_url("**/trend?point=cell.voltage&string=1&cell=37**")
    page.wait_for_function("() => Number(document.getElementById('trend').dataset.points) > 1", timeout=20000)
    expect(page.locator("#t-title")).to_contain_text("string 1 battery 37")
    shot(page, "04-trend")
    before = page.evaluate("() => [window.bmsgw.trend.scales.x.min, window.bmsgw.trend.scales.x.max]")
    box = page.locator("#trend .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.6, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, y, steps=5)
    page.mouse.up()
    page.wait_for_function("() => !document.getElementById('trend').dataset.loading")
    # just after start the in-memory trend spans a few seconds: the zoom must still load, not fail
    expect(page.locator("#t-info")).not_to_contain_text("Could not load")
    page.wait_for_function(f"() => window.bmsgw.trend.scales.x.max - window.bmsgw.trend.scales.x.min < "
                           f"{(before[1] - before[0]) * 0.5}", timeout=10000)
    after = page.evaluate("() => [window.bmsgw.trend.scales.x.min, window.bmsgw.trend.scales.x.max]")
    assert before[0] < after[0] < after[1] < before[1]
    page.click("#t-reset")
    page.wait_for_function(f"() => window.bmsgw.trend.scales.x.max - window.bmsgw.trend.scales.x.min > "
                           f"{(before[1] - before[0]) * 0.9}", timeout=10000)


def test_forecast_scatter_shows_every_battery(web, browser):
    page = login(browser, web)
    page.goto(web.url + "forecast")
    page.wait_for_function("() => document.getElementById('forecast').dataset.points === '120'", timeout=15000)
    expect(page.locator("#f-table")).to_contain_text("37")
    shot(page, "05-forecast")


def test_operator_acknowledges_an_alarm(web, browser):
    web.ctx.users.add("olga", "operator", PASSWORD)
    page = login(browser, web, "olga")
    page.goto(web.url + "alarms")
    row = page.locator("#active-alarms tr[data-alarm='37']")
    expect(row).to_contain_text("critical")
    shot(page, "06-alarms-before")
    row.locator("button.ack").click()
    expect(page.locator(".flash.ok")).to_contain_text("Alarm 37 acknowledged")
    expect(page.locator("#active-alarms tr[data-alarm='37']")).to_contain_text("olga")
    assert ("37", "olga") in web.alarms.acks
    shot(page, "07-alarms-acknowledged")


def test_viewer_sees_no_acknowledge_button_and_no_configuration(web, browser):
    web.ctx.users.add("vera", "viewer", PASSWORD)
    page = login(browser, web, "vera")
    page.goto(web.url + "alarms")
    expect(page.locator("#active-alarms tr[data-alarm='12']")).to_be_visible()
    assert page.locator("button.ack").count() == 0
    assert page.locator("nav >> text=Configuration").count() == 0
    resp = page.goto(web.url + "config")
    assert resp.status == 403


def test_configuration_error_names_the_field(web, browser):
    page = login(browser, web)
    page.goto(web.url + "config/web")
    page.fill("#f-web-session-idle_minutes", "0")
    page.click("form.config button[type=submit]")
    expect(page.locator("#config-error")).to_contain_text("web.session.idle_minutes")
    expect(page.locator("#config-error")).to_contain_text("minimum of 1")
    expect(page.locator("#f-web-session-idle_minutes")).to_have_value("0")
    shot(page, "08-config-error")


def test_phone_screen(web, browser):
    page = login(browser, web, viewport={"width": 390, "height": 844})
    shot(page, "09-phone-overview")
    assert page.locator("nav").is_hidden()
    page.click("label.navbutton")
    expect(page.locator("nav")).to_be_visible()
    page.click("nav >> text=String 1")
    expect(page.locator(".chart.bar[data-point=voltage]")).to_have_attribute("data-drawn", "120", timeout=15000)
    width = page.evaluate("() => document.querySelector('.chart.bar canvas').getBoundingClientRect().width")
    assert width <= 390
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(page, "10-phone-string")
