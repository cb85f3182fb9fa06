"""The setpoint table behind the web page: effective limits per string with their source (default, analytics
thresholds, site, model, string), changes written at the scope asked for, problems named."""
import pytest

from gateway.alarms.setpoints import SetpointError, Setpoints
from tests.coretools import offline_gateway
from tests.support import small_bank, write_config


@pytest.fixture
def table(tmp_path):
    cfg = small_bank(strings=2, cells=4)
    cfg["strings"][0]["battery"] = {"model": "Acme 12-100", "nominal_voltage": 12}
    cfg["strings"][1]["battery"] = {"model": "Acme 2-500", "nominal_voltage": 2, "capacity_ah": 500}
    cfg["strings"][1]["devices"][1]["profile"] = "bm-bcs-02"
    overrides = {"analytics": {"thresholds": {"warning_pct": 25}},
                 "alarms": {"rules": {"cell_temperature": {"high": {"warning": 35}}},
                            "models": [{"model": "Acme 12-100", "rules": {"cell_temperature": {"on_delay_s": 120}}}],
                            "strings": [{"id": 2, "rules": {"cell_temperature": {"high": {"warning": 33}}}}]}}
    gw = offline_gateway(write_config(tmp_path, base=cfg, overrides=overrides))
    return Setpoints(gw.config, gw.catalog, gw.profiles), gw


def test_each_limit_says_where_it_comes_from(table):
    sp, _ = table
    one = {r.rule_id: r for r in sp.table(1)}
    two = {r.rule_id: r for r in sp.table(2)}

    def at(rows, rid, field):
        c = rows[rid].cell(field)
        return c.value, c.source_label

    assert at(one, "cell_voltage_float", "high.warning") == (13.92, "IEEE 1188, 6 × 2 V")
    assert at(two, "cell_voltage_float", "high.warning") == (2.32, "IEEE 1188, 1 × 2 V")  # scaled to the unit
    assert at(two, "string_current", "high.warning") == (75.0, "IEEE 1188, 1 × 2 V")  # 0.15 C of 500 Ah
    assert at(one, "cell_ohmic_baseline", "high.warning") == (25.0, "analytics.thresholds")
    assert at(one, "cell_temperature", "high.warning") == (35, "site")
    assert at(one, "cell_temperature", "on_delay_s") == (120, "model Acme 12-100")
    assert at(two, "cell_temperature", "on_delay_s") == (60, "IEEE 1188, 1 × 2 V")  # another model
    assert at(two, "cell_temperature", "high.warning") == (33, "string 2")
    assert {r.rule_id for r in sp.table(None)} == {"ambient_temperature", "ambient_humidity"}
    assert [s for s, _ in sp.scopes(1)] == ["string", "model", "site"] and sp.default_scope(1) == "string"


def test_changes_land_at_their_scope_and_problems_are_named(table):
    sp, gw = table
    doc = {"alarms": {"rules": {"cell_temperature": {"high": {"warning": 35}}}}}
    new = sp.edit(doc, 1, "model", {("cell_soc", "low.warning"): 85.0, ("cell_soc", "low.critical"): None})
    assert new["alarms"]["models"] == [{"model": "Acme 12-100",
                                        "rules": {"cell_soc": {"low": {"warning": 85.0, "critical": None}}}}]
    assert doc == {"alarms": {"rules": {"cell_temperature": {"high": {"warning": 35}}}}}, "a copy is changed"
    new = sp.edit(new, 1, "site", {}, frozenset({"cell_temperature"}))
    assert new["alarms"]["rules"] == {}
    gw.check({**gw.config.data, "alarms": new["alarms"]})  # what the page saves passes the gateway's checks

    with pytest.raises(SetpointError) as err:
        sp.check(1, "site", {("cell_temperature", "on_delay_s"): 30.0,  # the model's override would win
                             ("cell_voltage_float", "high.critical"): 20.0,  # a BCS-12 reads up to 15.6 V
                             ("cell_soc", "low.warning"): 40.0,  # under its critical limit of 50
                             ("cell_temperature", "hysteresis"): -1.0})
    problems = {(rid, f): m for rid, f, m in err.value.problems}
    assert "the model Acme 12-100 override sets this value" in problems[("cell_temperature", "on_delay_s")]
    assert problems[("cell_voltage_float", "high.critical")] == \
        "20 V is outside what the sensors measure (7.5 to 15.6 V)"
    assert problems[("cell_soc", "low.warning")] == \
        "the low warning must not be below the low critical limit (50 % vs 40 %)"
    assert problems[("cell_temperature", "hysteresis")] == "-1 is negative"
    sp.check(1, "model", {("cell_temperature", "on_delay_s"): 30.0})  # at its own scope: fine
