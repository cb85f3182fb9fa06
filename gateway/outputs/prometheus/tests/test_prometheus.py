"""Prometheus exporter: the fast renderer against prometheus-client, promtool, and a real Prometheus server."""
from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from gateway.app import Gateway
from gateway.errors import ConfigError
from gateway.exposition import BankCollector, exposition_for, render_metrics
from gateway.hookspecs import AlarmEvent
from gateway.points import PointRef, Quality, Reading
from tests.conftest import ROOT
from tests.support import GatewayThread, free_port, small_bank, write_config

QUALITIES = [Quality.GOOD] * 17 + [Quality.STALE, Quality.COMM_FAIL, Quality.OUT_OF_RANGE]


def offline_gateway(tmp_path: Path, **over) -> Gateway:
    """The default 4 x 120 bank, not started, with every point of the map filled from a seeded RNG."""
    path = write_config(tmp_path, overrides=over)
    gw = Gateway(path, simulator=False, port_overrides={f"bus{i}": "(not opened)" for i in range(1, 5)})
    return gw


def fill(gw: Gateway, seed: int, share: float = 1.0) -> None:
    rnd = random.Random(seed)
    now = time.time()
    batch = []
    for e in gw.pointmap.entries:
        if rnd.random() > share:
            continue
        value = rnd.randint(-30000, 60000) * e.spec.scale
        if rnd.random() < 0.01:
            value = rnd.choice([float("nan"), float("inf"), 1.7e9, 123456789.125, -0.0])
        batch.append((e.ref, Reading(value, rnd.choice(QUALITIES), now)))
    gw.store.put_many(batch)


def alarm(alarm_id, raised, severity="warning", obj="string 1 cell 3", point="cell.voltage"):
    return AlarmEvent(alarm_id=alarm_id, object=obj, point=point, value=14.3, threshold=14.1, severity=severity,
                      message=f"{obj}: voltage 14.3 V (alarm at 14.1 V)", active=raised, ts=time.time())


def reference(gw: Gateway, snapshot) -> bytes:
    exp = exposition_for(gw)
    registry = CollectorRegistry()
    registry.register(BankCollector(exp, lambda: exp.context(snapshot)))
    return generate_latest(registry)


def test_fast_path_is_byte_identical_to_generate_latest_of_the_collector(tmp_path):
    gw = offline_gateway(tmp_path)
    exp = exposition_for(gw)
    gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=alarm("cell_voltage_high:1:3", True))
    gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=alarm("string_current:2", True, "critical", "string 2",
                                                         "string.current"))
    for seed in (1, 2):
        fill(gw, seed, share=1.0 if seed == 1 else 0.3)  # the second pass changes a third: the line cache
        snapshot = gw.store.snapshot()
        fast = exp.model.render(exp.context(snapshot))
        assert fast == reference(gw, snapshot)
    # and through the cached entry point, which renders the live store
    body, ctype = render_metrics(gw)
    assert body == reference(gw, gw.store.snapshot())
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert render_metrics(gw)[0] is body, "a second scrape of the same generation is not rendered again"
    text = body.decode()
    # stale points are left out, not exported as 0
    snap = gw.store.snapshot()
    bad = next(ref for ref, r in snap.items() if ref.point == "cell.voltage" and r.quality is Quality.COMM_FAIL)
    assert f'bms_cell_voltage_volts{{cell="{bad.cell}",string="{bad.string}"}} ' not in text
    good = next(ref for ref, r in snap.items() if ref.point == "cell.voltage" and r.quality is Quality.GOOD)
    assert f'bms_cell_voltage_volts{{cell="{good.cell}",string="{good.string}"}} ' in text
    assert 'bms_alarm_active{alarm="string_current:2",metric="string.current",object="string 2",' \
           'severity="critical"} 1.0' in text


def test_names_units_help_and_values(tmp_path):
    gw = offline_gateway(tmp_path)
    now = time.time()
    gw.store.put_many([
        (PointRef("cell.voltage", 1, 3), Reading(13521 * 0.001, Quality.GOOD, now)),
        (PointRef("cell.ohmic", 2, 7), Reading(4321 * 0.000001, Quality.GOOD, now)),
        (PointRef("string.current", 1), Reading(-123 * 0.1, Quality.GOOD, now)),
        (PointRef("string.soc", 1), Reading(953 * 0.1, Quality.GOOD, now)),
        (PointRef("gateway.bus_timeouts", channel=2), Reading(17.0, Quality.GOOD, now)),
        (PointRef("gateway.bus_poll_duration", channel=1), Reading(0.8123456, Quality.GOOD, now)),
        (PointRef("cell.eol_date", 1, 1), Reading(1.8e9, Quality.GOOD, now)),
    ])
    text = render_metrics(gw)[0].decode()
    assert 'bms_cell_voltage_volts{cell="3",string="1"} 13.521\n' in text  # no float noise
    assert 'bms_cell_ohmic_ohms{cell="7",string="2"} 0.004321\n' in text
    assert 'bms_string_current_amperes{string="1"} -12.3\n' in text
    assert "# HELP bms_string_current_amperes String current; positive = charging, negative = discharging" in text
    assert 'bms_string_soc_ratio{string="1"} 0.953\n' in text  # % as a 0-1 ratio
    assert "# TYPE bms_gateway_bus_timeouts_total counter" in text
    assert 'bms_gateway_bus_timeouts_total{bus="2"} 17.0\n' in text
    assert 'bms_gateway_bus_poll_duration_seconds{bus="1"} 0.812\n' in text
    assert 'bms_cell_eol_date_timestamp_seconds{cell="1",string="1"} 1.8e+09\n' in text
    assert 'bms_gateway_bus_info{baud="115200",bus="1",name="bus1",port="sim"} 1.0' in text
    assert 'bms_gateway_points{quality="missing"} ' in text
    # families with no reading at all are not announced
    assert "bms_cell_temperature_celsius" not in text


def promtool_check(body: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)


def test_promtool_prints_nothing_for_a_full_bank(tmp_path):
    gw = offline_gateway(tmp_path)
    fill(gw, 3)
    gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=alarm("a1", True))
    body = render_metrics(gw)[0]
    assert body.count(b"\n") > 7000
    res = promtool_check(body)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def live(tmp_path):
    port = free_port()
    path = write_config(tmp_path, base=small_bank(strings=2, cells=6),
                        overrides={"prometheus": {"listen": f"127.0.0.1:{port}"},
                                   "gateway": {"poll": {"stale_after_cycles": 1, "lost_retry_s": 0.2}}})
    with GatewayThread(path) as gt:
        gt.url = f"http://127.0.0.1:{port}/metrics"
        yield gt


def test_live_metrics_endpoint(live):
    gw = live.gateway
    assert live.url in " ".join(gw.endpoints())
    status, headers, body = get(live.url)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    res = promtool_check(body)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")
    text = body.decode()
    v = gw.store.value(PointRef("cell.voltage", 2, 4))
    assert re.search(r'^bms_cell_voltage_volts\{cell="4",string="2"\} 1[0-5]\.\d+$', text, re.M)
    assert v is not None
    # the bus counters are published after a bus's first poll cycle, which may end after the cells are read
    live.wait_for(lambda: re.search(r'^bms_gateway_bus_requests_total\{bus="1"\} \d+', get(live.url)[2].decode(),
                                    re.M), what="the bus counters in the scrape")
    text = get(live.url)[2].decode()
    assert re.search(r'^bms_gateway_bus_poll_duration_seconds\{bus="2"\} ', text, re.M)
    # gzip, as Prometheus asks for it
    status, headers, zbody = get(live.url, {"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip" and gzip.decompress(zbody).startswith(b"# HELP")
    assert get(live.url.replace("/metrics", "/nope"))[0] == 404
    # a sensor that stops answering disappears from the scrape instead of reading 0
    gw.simulator.set_fault("bus2", 5, "no_answer")  # string 2, cell 4 sits at address 5
    ref = PointRef("cell.voltage", 2, 4)
    live.wait_for(lambda: gw.store.get(ref).quality is not Quality.GOOD, timeout=20, what="cell 4 to go stale")
    live.wait_for(lambda: 'bms_cell_voltage_volts{cell="4",string="2"}' not in get(live.url)[2].decode(),
                  timeout=10, what="the series to disappear")
    text = get(live.url)[2].decode()
    assert 'bms_cell_voltage_volts{cell="3",string="2"}' in text
    assert re.search(r'^bms_gateway_points\{quality="(stale|comm_fail)"\} [1-9]', text, re.M)
    assert gw.status()["prometheus"]["renders"] >= 1


def test_alarm_events_show_in_bms_alarm_active(live):
    gw = live.gateway
    gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=alarm("cell_temp:1:2", True, "critical", "string 1 cell 2",
                                                         "cell.temperature"))
    text = get(live.url)[2].decode()
    assert 'bms_alarm_active{alarm="cell_temp:1:2",metric="cell.temperature",object="string 1 cell 2",' \
           'severity="critical"} 1.0' in text
    assert 'bms_alarm_events_total{severity="critical"} 1.0' in text
    gw.pm.hook.bmsgw_alarm_event(gateway=gw, event=alarm("cell_temp:1:2", False, "critical", "string 1 cell 2",
                                                         "cell.temperature"))
    text = get(live.url)[2].decode()
    assert "bms_alarm_active{" not in text
    assert 'bms_alarm_events_total{severity="critical"} 2.0' in text


def test_a_port_in_use_refuses_start_up_with_the_address(tmp_path):
    """The same policy as every face: start-up stops and says which face, which address and why."""
    import socket

    from gateway.service import StartError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, base=small_bank(strings=1, cells=4),
                            overrides={"prometheus": {"listen": f"127.0.0.1:{port}"}})
        gt = GatewayThread(path)
        try:
            with pytest.raises(StartError, match=rf"prometheus\.listen: cannot listen on 127\.0\.0\.1:{port}: "
                                                 "Address already in use"):
                gt.start()
            assert gt.gateway.services == {}  # what had started was stopped again
        finally:
            gt.stop()


def test_bad_listen_address_names_the_key(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=4), overrides={"prometheus": {"listen": "9108"}})
    with pytest.raises(ConfigError) as err:
        Gateway(path)
    assert "prometheus.listen" in str(err.value)
    path = write_config(tmp_path, base=small_bank(strings=1, cells=4),
                        overrides={"prometheus": {"listen": "127.0.0.1:70000"}})
    gt = GatewayThread(path)
    try:
        with pytest.raises(ConfigError, match=r"prometheus\.listen: port 70000"):
            gt.start()
    finally:
        gt.stop()


EXAMPLES = ROOT / "docs" / "examples"


class Prometheus:
    """A real Prometheus server on loopback with its storage in a temp folder."""

    def __init__(self, folder: Path, config: dict, *flags: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = folder / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={folder / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn", *flags],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.target = f"127.0.0.1:{self.port}"

    def query(self, promql: str, timeout: float = 60) -> list:
        """Poll an instant query until it returns something."""
        url = f"http://{self.target}/api/v1/query?query=" + urllib.parse.quote(promql)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            try:
                result = json.loads(get(url)[2])["data"]["result"]
                if result:
                    return result
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"Prometheus on {self.target} returned nothing for {promql} within {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def fast(config: dict, targets: list[str]) -> dict:
    """An example config pointed at loopback targets, with 1 s intervals so a test sees data at once."""
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        for sc in job["static_configs"]:
            sc["targets"] = targets
    return config


def test_a_real_prometheus_scrapes_the_gateway_and_a_central_one_federates_it(live, tmp_path):
    """The site example (docs/examples/prometheus-site.yml) scrapes the gateway; the central federation
    example pulls the series from it, labelled with the site."""
    target = urllib.parse.urlsplit(live.url).netloc
    site = Prometheus(tmp_path / "site", fast(yaml.safe_load((EXAMPLES / "prometheus-site.yml").read_text()),
                                              [target]))
    central = None
    try:
        result = site.query('bms_cell_voltage_volts{string="1",cell="3",job="bmsgw"}')
        scraped = float(result[0]["value"][1])
        actual = live.gateway.store.value(PointRef("cell.voltage", 1, 3))
        assert 7.5 < scraped < 15.6 and abs(scraped - actual) < 0.2  # the simulator drifts slowly
        assert site.query('up{job="bmsgw"}')[0]["value"][1] == "1"
        central = Prometheus(tmp_path / "central", fast(yaml.safe_load(
            (EXAMPLES / "prometheus-central-federation.yml").read_text()), [site.target]))
        result = central.query('bms_cell_voltage_volts{site="demo",string="1",cell="3",job="bmsgw"}')
        assert abs(float(result[0]["value"][1]) - actual) < 0.2
        assert result[0]["metric"]["instance"] == target  # honor_labels kept the gateway's identity
    finally:
        site.stop()
        if central is not None:
            central.stop()


def test_the_content_type_is_prometheus_clients():
    """The exposition names it itself (prometheus-client is loaded by the first scrape); the same text."""
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from gateway.exposition import CONTENT_TYPE

    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4
