"""Alarm rules and the state machine, on made-up time: defaults per battery model, overrides, hysteresis,
on/off delays, no flapping, float-voltage suppression, and the sentences people read."""
from dataclasses import replace

import pytest

from gateway.alarms.evaluator import Evaluator, FloatPolicy
from gateway.alarms.messages import Messages
from gateway.alarms.model import AlarmKey
from gateway.alarms.rules import Levels, Rule, RuleSet, resolve
from gateway.errors import ConfigError
from gateway.points import PointRef
from gateway.strings import string_states
from gateway.topology import BatteryConfig, StringConfig, Topology
from tests.support import section_with_defaults

STATES = string_states()


def topo(*nominals, cells=4):
    strings = tuple(StringConfig(i + 1, cells, f"String {i + 1}",
                                 BatteryConfig(f"{v}V VRLA", float(v), int(v // 2), 100.0))
                    for i, v in enumerate(nominals))
    return Topology(buses=(), strings=strings, devices=())


def ruleset(section=None, *nominals):
    return resolve(section_with_defaults("alarms", section or {}), topo(*(nominals or (12,))))


@pytest.mark.parametrize("nominal, low_crit, high_crit, dev_warn", [(2, 2.13, 2.35, 0.05), (6, 6.39, 7.05, 0.10),
                                                                     (12, 12.78, 14.10, 0.20)])
def test_voltage_defaults_scale_with_the_battery_model(nominal, low_crit, high_crit, dev_warn):
    rs = ruleset({}, nominal)
    float_rule = rs.rule("cell_voltage_float", 1)
    assert float_rule.low.critical == pytest.approx(low_crit)
    assert float_rule.high.critical == pytest.approx(high_crit)
    assert float_rule.float_only and float_rule.on_delay_s == 300
    assert rs.rule("cell_voltage_deviation", 1).high.warning == pytest.approx(dev_warn)
    # the string's window is the cells' window times the number of units
    assert rs.rule("string_voltage_float", 1).high.critical == pytest.approx(high_crit * 4)
    ohm = rs.rule("cell_ohmic_baseline", 1)
    assert (ohm.high.warning, ohm.high.critical) == (20.0, 30.0)


def test_overrides_site_then_model_then_string():
    section = {
        "rules": {"cell_temperature": {"high": {"warning": 38}}, "ambient_temperature": {"high": {"critical": 33}}},
        "models": [{"model": "6V VRLA", "rules": {"cell_temperature": {"high": {"critical": 45}}}}],
        "strings": [{"id": 2, "rules": {"cell_temperature": {"high": {"warning": 36}, "on_delay_s": 5}}}],
    }
    rs = resolve(section_with_defaults("alarms", section), topo(12, 6))
    s1, s2 = rs.rule("cell_temperature", 1), rs.rule("cell_temperature", 2)
    assert s1.high == Levels(38, 50.0)
    assert s2.high == Levels(36, 45) and s2.on_delay_s == 5
    assert rs.rule("ambient_temperature", None).high == Levels(27.0, 33)


def test_bad_overrides_are_refused_with_the_key_path():
    with pytest.raises(ConfigError, match=r"alarms.rules.cell_temperature.high: the critical setpoint must be above"):
        ruleset({"rules": {"cell_temperature": {"high": {"warning": 60}}}})
    with pytest.raises(ConfigError, match=r"alarms.strings\[0\].id: no string 3"):
        ruleset({"strings": [{"id": 3, "rules": {}}]})
    with pytest.raises(ConfigError, match="needs `point`"):
        ruleset({"rules": {"my_rule": {"high": {"warning": 1}}}})
    with pytest.raises(ConfigError, match="whole site"):
        ruleset({"strings": [{"id": 1, "rules": {"ambient_temperature": {"high": {"warning": 30}}}}]})


def one_rule(**kw):
    rule = Rule("t", "cell.temperature", "temperature", **kw)
    return Evaluator(RuleSet({1: {"t": rule}}, {}))


def feed(ev, values, t0=0.0, step=1.0, point="cell.temperature"):
    out = []
    for i, v in enumerate(values):
        out += ev.update(point, 1, 1, None, v, t0 + i * step)
    return out


def test_a_value_wobbling_around_the_setpoint_raises_once_and_never_flaps():
    ev = one_rule(high=Levels(40.0, None), hysteresis=1.0)
    wobble = [39.5, 40.2, 39.6, 40.4, 39.2, 40.1, 39.8, 40.3] * 10  # never below 39.0
    events = feed(ev, wobble)
    assert [(t.raised, t.key.severity) for t in events] == [(True, "warning")]
    events = feed(ev, [38.9], t0=1000)  # back through the band: one clear
    assert [t.raised for t in events] == [False]


def test_without_hysteresis_the_same_wobble_would_flap():
    ev = one_rule(high=Levels(40.0, None), hysteresis=0.0)
    assert len(feed(ev, [39.5, 40.2, 39.6, 40.4] * 5)) == 19  # every crossing after the first reading


def test_off_delay_rides_out_short_dips_and_on_delay_short_peaks():
    ev = one_rule(high=Levels(40.0, None), hysteresis=0.5, on_delay_s=10, off_delay_s=20)
    # peaks of 5 s never last the 10 s on-delay
    assert feed(ev, [41, 41, 41, 41, 41, 39, 39, 41, 41, 41, 41, 41, 39]) == []
    # 12 s above: raised exactly when the on-delay ran out
    ev2 = one_rule(high=Levels(40.0, None), hysteresis=0.5, on_delay_s=10, off_delay_s=20)
    out = feed(ev2, [41] * 12)
    assert [(t.raised, t.ts) for t in out] == [(True, 10.0)]
    # dips shorter than the off-delay do not clear it
    assert feed(ev2, ([39] * 10 + [41] * 3) * 4, t0=20) == []
    # a long dip clears it once, by the timer even without a new reading
    feed(ev2, [39], t0=100)
    assert ev2.next_deadline() == pytest.approx(120.0)
    assert ev2.tick(119.0) == []
    assert [t.raised for t in ev2.tick(120.0)] == [False]


def test_warning_and_critical_are_separate_alarms():
    ev = one_rule(high=Levels(40.0, 50.0), hysteresis=1.0)
    out = feed(ev, [45, 52])
    assert [(t.key.severity, t.threshold) for t in out] == [("warning", 40.0), ("critical", 50.0)]
    out = feed(ev, [45], t0=10)
    assert [(t.key.severity, t.raised) for t in out] == [("critical", False)]


def test_low_side_and_reference_rules():
    ev = one_rule(low=Levels(5.0, None), hysteresis=1.0)
    assert [t.raised for t in feed(ev, [6, 4.5, 5.5, 6.1])] == [True, False]
    rule = Rule("amb", "cell.temperature", "temperature", high=Levels(3.0, 10.0), hysteresis=0.5,
                reference="io.ambient_temperature")
    ev = Evaluator(RuleSet({1: {"amb": rule}}, {}))
    assert ev.update("cell.temperature", 1, 2, None, 30.0, 0, reference={"io.ambient_temperature": None}.get) == []
    out = ev.update("cell.temperature", 1, 2, None, 30.0, 1, reference={"io.ambient_temperature": 25.0}.get)
    assert [(t.key.severity, t.value, t.raw) for t in out] == [("warning", 5.0, 30.0)]


def float_evaluator(**policy):
    rs = ruleset({"rules": {"cell_voltage_float": {"on_delay_s": 0, "off_delay_s": 0}}})
    return Evaluator(rs, replace(FloatPolicy.default(), **policy))


def test_float_voltage_rules_rest_while_discharging_recharging_and_settling():
    ev = float_evaluator(settle_s=300)
    ev.observe_state(1, STATES.discharging, 0)  # string.state, from the string supervision
    assert ev.suppressed(1, 0) == "discharging"
    assert ev.update("cell.voltage", 1, 1, None, 12.0, 1) == []  # below 12.78 V, but that is a discharge
    ev.observe_state(1, STATES.charging, 100)
    assert ev.suppressed(1, 100) == "charging"
    assert ev.update("cell.voltage", 1, 1, None, 14.3, 101) == []
    ev.observe_state(1, STATES.floating, 200)  # float again: 5 min to settle
    assert ev.suppressed(1, 300) == "settling after a discharge or recharge"
    assert ev.update("cell.voltage", 1, 1, None, 12.5, 300) == []
    assert ev.suppressed(1, 501) is None
    out = ev.update("cell.voltage", 1, 1, None, 12.5, 501)
    assert {(t.key.side, t.key.severity) for t in out} == {("low", "warning"), ("low", "critical")}
    # the end-of-discharge rule is never suppressed
    ev.observe_state(1, STATES.discharging, 600)
    out = ev.update("cell.voltage", 1, 2, None, 10.4, 600) + ev.update("cell.voltage", 1, 2, None, 10.4, 610)
    assert {(t.rule.id, t.key.severity) for t in out} == {("cell_voltage_discharge", "warning"),
                                                         ("cell_voltage_discharge", "critical")}


def test_float_voltage_rules_rest_after_an_ohmic_test():
    ev = float_evaluator(ohmic_suppress_s=1800)
    ev.observe_ohmic(1, 1, 0.0041, 0)  # first reading: no test seen yet
    assert ev.suppressed(1, 0) is None
    ev.observe_ohmic(1, 1, 0.0042, 100)  # a new value: the sensors ran a test
    assert ev.suppressed(1, 100) == "ohmic test"
    assert ev.update("cell.voltage", 1, 1, None, 14.5, 1000) == []
    assert ev.suppressed(1, 1900) is None
    assert len(ev.update("cell.voltage", 1, 1, None, 14.5, 1900)) == 2


def test_a_pending_raise_is_cancelled_when_the_string_starts_to_discharge():
    rs = ruleset({})  # float rule with its 300 s on-delay
    ev = Evaluator(rs)
    assert ev.update("cell.voltage", 1, 1, None, 12.6, 0) == []
    assert ev.pending
    ev.observe_state(1, STATES.discharging, 100)
    assert ev.tick(400) == []
    assert not any(c.cond for c in ev.conditions.values() if c.rule.id == "cell_voltage_float")


def test_messages_read_like_a_person_wrote_them():
    t = topo(12, 12, cells=40)
    values = {PointRef("cell.ohmic", 2, 37): 0.0061}
    units = {"cell.ohmic_baseline_deviation": "%", "cell.voltage": "V", "cell.temperature": "C",
             "io.ambient_temperature": "C", "string.current": "A"}
    msgs = Messages(t, lambda p: units.get(p, ""), values.get, {"bus1:200": "charger monitor at bus1 address 200"})
    rs = resolve(section_with_defaults("alarms", {}), t)
    key = AlarmKey("cell_ohmic_baseline", "high", "critical", "cell.ohmic_baseline_deviation", 2, 37)
    text = msgs.raised(key, rs.rule("cell_ohmic_baseline", 2), 34.2, 34.2, 30.0)
    assert text == "String 2 cell 37: ohmic value 6.1 mOhm, +34 % over baseline (alarm at +30 %)"
    assert msgs.object_id(key) == "string 2 cell 37"
    key = AlarmKey("cell_voltage_float", "high", "warning", "cell.voltage", 1, 3)
    assert msgs.raised(key, rs.rule("cell_voltage_float", 1), 14.01, 14.01, 13.92) == \
        "String 1 cell 3: voltage on float 14.01 V, too high (warning at 13.92 V)"
    assert msgs.cleared(key, rs.rule("cell_voltage_float", 1), 13.5, 13.5) == \
        "String 1 cell 3: voltage on float back to normal (13.50 V)"
    key = AlarmKey("cell_temperature_ambient", "high", "warning", "cell.temperature", 1, 7)
    assert msgs.raised(key, rs.rule("cell_temperature_ambient", 1), 5.2, 29.2, 3.0) == \
        "String 1 cell 7: temperature 29.2 °C, 5.2 °C above ambient (warning at +3.0 °C)"
    key = AlarmKey("string_on_battery", "high", "warning", "string.state", 1)
    assert msgs.raised(key, rs.rule("string_on_battery", 1), 1.0, 3.0, 0.5) == \
        "String 1: on battery: the string discharges (mains lost?)"
    key = AlarmKey("device_comm", "high", "warning", "device", device="bus1:200")
    assert msgs.raised(key, rs.rule("device_comm", None), 1, 1, 0.5) == \
        "charger monitor at bus1 address 200: stopped answering"
