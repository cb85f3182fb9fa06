"""The B-TEK views in a real browser (Debian's chromium, driven by Playwright): a string's data table (sorted,
filtered, downloaded as CSV), the forecast scatter (a tap opens the battery) and a battery's predicted curve.

The forecasts are the real analytics': a string of 120 batteries runs on the simulator, each battery gets a
baseline and 200 days of daily ohmic aggregates in the analytics' state (rising at its own rate, battery 37
bending upwards), then the analytics' own job fits and publishes them.  The measured curve comes through the
``bmsgw_history_query`` hook, from a stand-in history module answering with the same daily values.
"""
from __future__ import annotations

import csv
import io
import math
import time

import pytest
import requests
from playwright.sync_api import expect

from gateway.analytics import analytics_for, state_path
from gateway.analytics.state import DAY_S, Baseline, StateDB
from gateway.hookspecs import hookimpl
from gateway.points import PointRef, Quality, Reading
from tests.support import GatewayThread, free_port, small_bank, write_config
from tests.web_support import ARTIFACTS, PASSWORD, Client, web_gateway

CELLS = 120
DAYS = 200
WORST, WARNED = 37, 12


def present_rise(cell: int) -> float:
    """% over the baseline today: 3 .. 24 % spread over the string, battery 37 the worst at 28 %."""
    return 28.0 if cell == WORST else 3.0 + 21.0 * ((cell * 53) % 100) / 100


def rise(cell: int, years_ago: float) -> float:
    """The battery's rise over its baseline ``years_ago`` (with a little day-to-day scatter)."""
    wobble = 0.6 * math.sin(cell * 1.7 + years_ago * 400)
    if cell == WORST:  # a weak unit: an accelerating rise
        return 28.0 * math.exp(-4.0 * years_ago) + wobble
    return present_rise(cell) * (1.0 - years_ago / 1.5) + wobble  # a straight rise since its baseline 1.5 years ago


class DailyOhmicHistory:
    """The history module's side of ``bmsgw_history_query`` for cell.ohmic: one value a day, the same days the
    analytics' state holds."""

    def __init__(self) -> None:
        self.baselines: dict[int, float] = {}

    @hookimpl
    def bmsgw_history_query(self, gateway, ref, start, end, max_points):
        if ref.point != "cell.ohmic":
            return None
        base = self.baselines.get(ref.cell or 0)
        if base is None or end <= start:
            return []
        today = int(time.time() // DAY_S)
        out = []
        for day in range(today - DAYS, today):
            t = day * DAY_S + DAY_S / 2
            if start <= t <= end:
                out.append((t, base * (1 + rise(ref.cell, (time.time() - t) / (365.25 * DAY_S)) / 100)))
        return out[-max_points:]


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web-forecast")
    port = free_port()
    bank = small_bank(1, CELLS)
    # The sensors answer from a thread of this process, beside the browser: on a busy machine one may miss a
    # 100 ms timeout, and its values (the ohmic test's, read every slow_s) then show "–" until read again.
    # The table is what this module tests, not the bus.
    bank["buses"][0]["timeout_ms"] = 2000
    path = write_config(tmp, base=bank, overrides={
        "web": {"listen": f"127.0.0.1:{port}", "trend_buffer": {"interval_s": 1}},
        "plugins": {"disable": ["gateway.alarms", "gateway.history"]},
        # the analytics' jobs run when this test says (below), not a minute after start
        "analytics": {"jobs_delay_s": 86400, "interval_s": 0.5}})
    gt = GatewayThread(path)
    history = DailyOhmicHistory()
    gt.gateway.pm.register(history, name="test-history")
    with gt:
        gw = gt.gateway
        refs = [PointRef("cell.ohmic", 1, c) for c in range(1, CELLS + 1)]
        gt.wait_for(lambda: all((r := gw.store.get(ref)) is not None and r.quality is Quality.GOOD for ref in refs),
                    timeout=60, what="every battery's ohmic value")
        now = time.time()
        today = int(now // DAY_S)
        state = StateDB(state_path(gw.config))
        rows = []
        for c, ref in enumerate(refs, start=1):
            base = gw.store.get(ref).value / (1 + present_rise(c) / 100)
            history.baselines[c] = base
            state.set_baseline(Baseline(1, c, base, now - 1.5 * 365.25 * DAY_S, "user", 25.0))
            for day in range(today - DAYS, today):
                years_ago = (now - (day * DAY_S + DAY_S / 2)) / (365.25 * DAY_S)
                rows.append((1, c, day, {"ohmic": (base * (1 + rise(c, years_ago) / 100), 24), "temp": (25.0, 24)}))
        state.add_daily(rows)
        state.close()
        engine = analytics_for(gw)
        assert engine is not None
        with engine.lock:
            engine.check_external(time.time())  # the baselines set "from outside", as `bmsgw battery` does
        engine.run_jobs(time.time())
        # the alarm engine's part: battery 37 critical, 12 warning, the rest normal
        gw.store.put_many([(PointRef("cell.alarm_level", 1, c),
                            Reading(2.0 if c == WORST else 1.0 if c == WARNED else 0.0, Quality.GOOD, time.time()))
                           for c in range(1, CELLS + 1)])
        eol = PointRef("cell.eol_date", 1, WORST)
        gt.wait_for(lambda: gw.store.value(eol) is not None, timeout=30, what="battery 37's forecast published")
        gt.wait_for(lambda: all(gw.store.value(PointRef("cell.ohmic_baseline_deviation", 1, c)) is not None
                                for c in range(1, CELLS + 1)), timeout=30, what="every battery's baseline deviation")
        gt.gateway.service("web").ctx.users.add("admin", "admin", PASSWORD)
        gt.gateway.service("web").ctx.users.add("vera", "viewer", PASSWORD)
        yield gt


def url(web) -> str:
    return web.gateway.service("web").url


def open_page(browser, web, path: str):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP violations too
    page.goto(url(web) + "login?next=/" + path)
    page.fill("input[name=username]", "vera")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url(web) + path)
    return page, errors


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def column(page, index: int) -> list[str]:
    return page.locator(f"#batteries tbody tr td:nth-child({index})").all_inner_texts()


def test_the_table_and_its_csv_come_from_one_request_with_every_battery(web):
    viewer = Client(url(web)).login("vera")
    body = viewer.get("/api/v1/strings/1/batteries").json()
    rows = {r["cell"]: r for r in body["batteries"]}
    assert len(rows) == CELLS
    assert all(r["ohmic_baseline_deviation"] is not None and r["voltage"] is not None for r in rows.values())
    assert all(0 <= r["age_years"] < 0.01 for r in rows.values())  # in service since this gateway first saw them
    worst = rows[WORST]
    assert worst["alarm"] == "critical" and worst["verdict"] == "warning"  # +28 %: over 20 %, under 30 %
    assert abs(worst["ohmic_baseline_deviation"] - 28.0) < 2.0
    assert worst["eol_date"] is not None and worst["eol_date_early"] <= worst["eol_date"] <= worst["eol_date_late"]
    assert rows[WARNED]["alarm"] == "warning"
    r = viewer.get("/api/v1/strings/1/batteries.csv")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == CELLS
    line = next(t for t in table if t["battery"] == str(WORST))
    assert line["alarm"] == "critical" and line["replace_by"][:2] == "20" and line["years_in_service"] == "0.00"
    assert abs(float(line["ohmic_mOhm"]) - worst["ohmic"] * 1000) < 0.01
    assert requests.get(url(web) + "api/v1/strings/1/batteries.csv", timeout=10).status_code == 401
    assert viewer.get("/api/v1/strings/9/batteries.csv").status_code == 404


def test_the_table_sorts_by_any_column_and_filters_to_warning_or_worse(web, browser):
    page, errors = open_page(browser, web, "strings/1")
    table = page.locator("#batteries")
    expect(table).to_have_attribute("data-rows", str(CELLS), timeout=15000)
    assert column(page, 1)[:3] == ["1", "2", "3"]
    header = page.locator("#batteries th[data-key=ohmic_baseline_deviation] button")
    header.click()  # ascending
    devs = [float(t) for t in column(page, 5)]
    assert devs == sorted(devs)
    header.click()  # descending: the worst battery first
    sorted_by = page.locator("#batteries th[data-key=ohmic_baseline_deviation]")
    expect(sorted_by).to_have_attribute("aria-sort", "descending")
    assert column(page, 1)[0] == str(WORST)
    devs = [float(t) for t in column(page, 5)]
    assert devs == sorted(devs, reverse=True)
    page.locator("#batteries th[data-key=cell] button").click()
    page.locator("#batteries th[data-key=cell] button").click()
    assert column(page, 1)[0] == str(CELLS)
    page.locator("#batteries th[data-key=eol_date] button").click()  # the soonest replacement first
    assert column(page, 1)[0] == str(WORST)
    page.check("#bt-filter")
    expect(table).to_have_attribute("data-rows", "2")
    assert sorted(column(page, 1)) == sorted([str(WORST), str(WARNED)])
    expect(page.locator("#bt-count")).to_have_text(f"2 of {CELLS} batteries")
    shot(page, "20-string-table-filtered")
    page.uncheck("#bt-filter")
    expect(table).to_have_attribute("data-rows", str(CELLS))
    with page.expect_download() as dl:
        page.click("#bt-csv")
    assert dl.value.suggested_filename.startswith("string1-batteries-")
    assert not errors


def test_the_scatter_draws_the_forecasts_and_a_tap_opens_the_battery(web, browser):
    page, errors = open_page(browser, web, "strings/1")
    scatter = page.locator("#scatter")
    # the page draws what the store held when it loaded: the analytics may still be publishing forecasts then
    # (a loaded machine), so it is loaded again until it shows every forecast the store holds
    deadline = time.monotonic() + 60
    while True:
        dated = sum(1 for c in range(1, CELLS + 1)
                    if web.gateway.store.value(PointRef("cell.eol_date", 1, c)) is not None)
        try:
            expect(scatter).to_have_attribute("data-points", str(dated), timeout=5000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            page.reload()
            scatter = page.locator("#scatter")
    assert dated >= 10
    assert scatter.locator("g.pt").count() == dated
    point = scatter.locator(f"g.pt[data-cell='{WORST}']")
    assert point.get_attribute("data-verdict") == "warning"
    assert point.locator("line.errbar").count() == 3  # the early-late bar and its two ends
    # the colour is the verdict's
    assert point.locator("circle").get_attribute("fill") == "#e6a100"
    shot(page, "21-string-scatter")
    page.select_option("#scatter-x", "age")  # across the years in service: the same batteries, no verdict lines
    expect(scatter).to_have_attribute("data-across", "age")
    expect(scatter).to_have_attribute("data-points", str(dated))
    assert scatter.locator("line.limit").count() == 0
    page.select_option("#scatter-x", "rise")
    expect(scatter).to_have_attribute("data-across", "rise")
    assert scatter.locator("line.limit").count() == 2  # warning and replace (critical, +50 %, is off the chart)
    point = scatter.locator(f"g.pt[data-cell='{WORST}']")
    point.locator("circle").click()
    page.wait_for_url(f"**/strings/1/batteries/{WORST}")
    expect(page.locator("h1")).to_contain_text(f"battery {WORST}")
    assert not errors


def test_the_battery_page_draws_its_predicted_curve(web, browser):
    page, errors = open_page(browser, web, f"strings/1/batteries/{WORST}")
    curve = page.locator("#curve")
    expect(curve).to_have_attribute("data-measured", str(DAYS), timeout=15000)
    assert int(curve.get_attribute("data-fit")) > 10
    assert curve.locator("polyline.fitline").count() == 1 and curve.locator("polyline.extraline").count() == 1
    assert curve.locator("polygon.range").count() == 1 and curve.locator("circle.eolmark").count() == 1
    assert curve.locator("g.measured circle").count() == DAYS
    expect(page.locator("#curve-info")).to_contain_text("replace by 20")
    expect(page.locator("#battery-facts")).to_contain_text("critical")
    # the extrapolation rises to the replacement line: its last point is at or above it
    ys = page.evaluate("""() => {
      const pts = document.querySelector('#curve polyline.extraline').getAttribute('points').trim().split(' ');
      const limit = document.querySelector('#curve line.limit-line');
      const y = p => Number(p.split(',')[1]);
      return [y(pts[0]), y(pts[pts.length - 1]), Number(limit.getAttribute('y1'))];
    }""")
    assert ys[1] < ys[0] and ys[1] <= ys[2] + 1  # SVG y grows downwards
    shot(page, "22-battery-curve")
    assert not errors


def test_the_forecast_page_scatters_the_whole_bank(web, browser):
    page, errors = open_page(browser, web, "forecast")
    page.wait_for_function("() => Number(document.getElementById('scatter').dataset.points) >= 10", timeout=15000)
    page.select_option("#scatter-string", "1")
    page.wait_for_function("() => Number(document.getElementById('scatter').dataset.points) >= 10")
    shot(page, "23-forecast-scatter")
    page.locator(f"#scatter g.pt[data-cell='{WORST}'] circle").click()
    page.wait_for_url(f"**/strings/1/batteries/{WORST}")
    assert not errors


def test_without_analytics_the_views_say_what_is_missing(tmp_path):
    """No analytics (no baselines, no fit): the table has its measured columns and no verdict, the curve endpoint
    answers with what there is, the battery page still opens."""
    no_analytics = {"plugins": {"disable": ["gateway.alarms", "gateway.history", "gateway.analytics"]}}
    with web_gateway(tmp_path, strings=1, cells=8, overrides=no_analytics) as w:
        viewer = w.user("vera", "viewer")
        rows = viewer.get("/api/v1/strings/1/batteries").json()["batteries"]
        assert len(rows) == 8 and all(r["verdict"] == "no baseline" for r in rows)
        assert all(r["voltage"] is not None for r in rows)
        body = viewer.get("/api/v1/strings/1/cells/3/forecast").json()
        assert body["fit"] == [] and body["extrapolation"] == [] and body["baseline"] is None
        assert body["eol"] is not None  # the stand-in alarm engine's forecast dates are shown as they are
        assert viewer.get("/strings/1/batteries/3").status_code == 200
        assert viewer.get("/strings/1/batteries/9").status_code == 404
        assert viewer.get("/api/v1/strings/1/cells/9/forecast").status_code == 404
