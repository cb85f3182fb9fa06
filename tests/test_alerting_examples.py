"""The shipped alert rules and Grafana dashboard (docs/examples, docs/alerting.md) work: promtool checks the rules
and runs their unit tests, and a real Prometheus that scraped a running gateway answers every query of the
dashboard (template variables resolved as Grafana resolves them) with at least one series, evaluates every
rule without error and fires the alert of an alarm the gateway raised."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tests.mqtt_peers import Mosquitto
from tests.support import GatewayThread, free_port, small_bank, write_config

EXAMPLES = ROOT / "docs" / "examples"
RULES = EXAMPLES / "prometheus-rules.yml"
DASHBOARD = EXAMPLES / "grafana-dashboard.json"
# Grafana's $__rate_interval is at least 4 scrape intervals; the test's Prometheus scrapes every second
RATE_INTERVAL = "15s"
# a rule's final comparison with a number: taken off, what is left must return series from a running gateway
THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+$")
# the rules whose condition holds on the test's bank: floating, its sensors answering, its room above a warning
# and a critical limit; every other alert is expected to stay empty on such a bank
EXPECTED_ON_A_HEALTHY_BANK = {"BmsAlarmWarning", "BmsAlarmCritical"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=EXAMPLES)


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    res = promtool("check", "rules", RULES.name)
    assert res.returncode == 0 and "SUCCESS: 8 rules found" in res.stdout, res.stdout + res.stderr
    res = promtool("test", "rules", "prometheus-rules.test.yml")
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    # every alert of the file has a unit test
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((EXAMPLES / "prometheus-rules.test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert alerts == tested


def test_state_codes_in_the_rules_and_the_dashboard_are_the_catalogs():
    """bms_string_state and the alarm levels are numbers in Prometheus: the rules and the dashboard's value
    mappings must use the catalog's codes (profiles/points.yaml), whatever the classifier becomes."""
    catalog = {p["id"]: p for p in yaml.safe_load((ROOT / "profiles" / "points.yaml").read_text())["points"]}
    state = {label: code for code, label in catalog["string.state"]["states"]}
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert rules["BmsStringOnBattery"]["expr"].strip() == f"bms_string_state == {state['discharging']}"
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    on_battery = [e for e in exprs if "bms_string_state" in e and "==" in e]
    assert on_battery and all(e.endswith(f"== bool {state['discharging']})") for e in on_battery)

    def mapping(title: str) -> dict[int, str]:
        panel = next(p for p in dash["panels"] if p["title"] == title)
        opts = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
        return {int(k): v["text"] for k, v in opts.items()}

    assert mapping("String state") == dict(catalog["string.state"]["states"])
    assert mapping("Alarm level") == dict(catalog["bank.alarm_level"]["states"])
    assert mapping("Dry contacts") == dict(catalog["io.di"]["states"])


def test_the_dashboard_is_a_wellformed_grafana_model():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["battery"]["multi"] and "cell" in variables["battery"]["definition"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if "repeat" in p:
            assert variables[p["repeat"]]["multi"], p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
            assert used <= set(variables), f"{p['title']}: {used - set(variables)} undefined"
    assert {"stat", "bargauge", "timeseries", "table", "state-timeline"} <= {p["type"] for p in dash["panels"]}


# -- against a real Prometheus that scraped a running gateway ------------------------------------------------------
def api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc = json.load(resp)
    assert doc["status"] == "success", doc
    return doc["data"]


class Prometheus:
    """``prometheus`` on loopback with its storage in a temp folder, scraping and evaluating every second."""

    def __init__(self, folder: Path, target: str, rules: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = folder / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "bmsgw", "scrape_interval": "1s", "scrape_timeout": "1s",
                                "static_configs": [{"targets": [target]}]}]}))
        self.proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={folder / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait(self, promql: str, timeout: float = 30) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""
            try:
                result = api(self.base, "query", query=promql)["result"]
                if result:
                    return result
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"Prometheus returned nothing for {promql} within {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def label_values(prom: Prometheus, definition: str) -> list[str]:
    """Grafana's ``label_values(selector, label)`` for a query variable."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition.strip())
    assert m, definition
    selector, label = m.groups()
    values = api(prom.base, f"label/{label}/values", **{"match[]": selector})
    return sorted(values, key=lambda v: (len(v), v))


def substitute(text: str, values: dict[str, list[str]]) -> str:
    """Template variables as Grafana puts them into PromQL: a multi-value variable in a regex matcher becomes
    ``(a|b)``, a single value stays as it is; ``$__rate_interval`` a duration."""
    text = text.replace("$__rate_interval", RATE_INTERVAL)
    for name in sorted(values, key=len, reverse=True):
        vals = values[name]
        text = text.replace(f'=~"${name}"', f'=~"({"|".join(map(re.escape, vals))})"')
        text = text.replace(f'="${name}"', f'="{vals[0]}"')
    return text


def test_every_dashboard_query_returns_data_from_a_prometheus_that_scraped_the_gateway(tmp_path):
    over = {"site": {"id": "demo", "name": "Demo room"},
            "gateway": {"poll": {"slow_s": 1}}, "analytics": {"interval_s": 0.5},
            # real alarms of the gateway's engine: the room at 22 C is above a 15 C warning at once, its
            # humidity (about 45 %) above a 10 % critical limit
            "alarms": {"rules": {"ambient_temperature": {"on_delay_s": 0, "high": {"warning": 15.0,
                                                                                    "critical": 35.0}},
                                 "ambient_humidity": {"on_delay_s": 0, "high": {"warning": 5.0, "critical": 10.0}}}}}
    with Mosquitto(tmp_path / "broker") as broker:
        over["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "interval_s": 0.5}
        path = write_config(tmp_path, base=small_bank(strings=2, cells=4), overrides=over)
        with GatewayThread(path) as gt:
            target = gt.gateway.config.section("prometheus")["listen"]
            prom = Prometheus(tmp_path / "prometheus", target, RULES)
            try:
                # two scrapes with every kind of value: rates, the slow ohmic poll, analytics, the alarm
                for ready in (f"rate(bms_gateway_bus_timeouts_total[{RATE_INTERVAL}])", "bms_cell_ohmic_ohms",
                              "bms_cell_voltage_average_deviation_volts", "bms_alarm_active",
                              "bms_gateway_mqtt_queued", 'ALERTS{alertname="BmsAlarmWarning",alertstate="firing"}',
                              'ALERTS{alertname="BmsAlarmCritical",alertstate="firing"}'):
                    prom.wait(ready)
                dash = json.loads(DASHBOARD.read_text())
                values: dict[str, list[str]] = {}
                for var in dash["templating"]["list"]:  # in order: each may use the ones before it
                    if var["type"] != "query":
                        continue
                    found = label_values(prom, substitute(var["definition"], values))
                    assert found, f"variable {var['name']}: {var['definition']} has no values"
                    values[var["name"]] = found if var.get("multi") else found[:1]
                assert values["instance"] == [target] and values["string"] == ["1", "2"]
                assert values["battery"] == ["1", "2", "3", "4"]
                values["battery"] = ["1", "3"]  # a user's choice of batteries to follow
                empty, checked = [], 0
                now = time.time()
                for panel in dash["panels"]:
                    for t in panel.get("targets", []):
                        expr = substitute(t["expr"], values)
                        assert "$" not in expr, f"{panel['title']}: unresolved variable in {expr}"
                        if t.get("range", True) and not t.get("instant"):
                            result = api(prom.base, "query_range", query=expr, start=now - 20, end=now, step="1s")
                        else:
                            result = api(prom.base, "query", query=expr)
                        checked += 1
                        if not result["result"]:
                            empty.append(f"{panel['title']} [{t['refId']}]: {expr}")
                assert empty == [] and checked >= 30
                # the rules: each one's expression without its threshold returns data (the metrics exist, with
                # those labels); with it, only the alert of the room's alarm holds on this healthy, floating bank
                exprs = {r["alert"]: " ".join(r["expr"].split()) for g in yaml.safe_load(RULES.read_text())["groups"]
                         for r in g["rules"]}
                for alert, expr in exprs.items():
                    bare = THRESHOLD.sub("", expr)
                    assert bare != expr, f"{alert}: no threshold found in {expr}"
                    assert api(prom.base, "query", query=bare)["result"], f"{alert}: {bare} returns nothing"
                holding = {a for a, e in exprs.items() if api(prom.base, "query", query=e)["result"]}
                assert holding == EXPECTED_ON_A_HEALTHY_BANK, exprs
                # every rule evaluates against the real series; the gateway's alarm fires its alert
                groups = api(prom.base, "rules")["groups"]
                rules = [r for g in groups for r in g["rules"]]
                assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), rules
                alerts = api(prom.base, "alerts")["alerts"]
                room = [a for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] == "BmsAlarmWarning"
                        and a["labels"]["metric"] == "io.ambient_temperature"]
                assert len(room) == 1, alerts
                number = room[0]["labels"]["alarm"]
                assert room[0]["annotations"]["summary"] == \
                    f"room: io.ambient_temperature warning (alarm number {number})"
                humid = [a for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] == "BmsAlarmCritical"]
                assert [a["labels"]["metric"] for a in humid] == ["io.ambient_humidity"], alerts
                assert humid[0]["labels"]["severity"] == "critical"
                assert {a["labels"]["alertname"] for a in alerts} == EXPECTED_ON_A_HEALTHY_BANK  # none else pending
            finally:
                prom.stop()
