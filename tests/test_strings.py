"""The string supervision: one classifier of a string's state, the current sensor's zero (auto and manual),
the store's door (corrected current stored, the measured one beside it), and the alarm rules that read it."""
from __future__ import annotations

import pytest

from gateway.alarms.evaluator import Evaluator
from gateway.alarms.messages import Messages
from gateway.alarms.model import AlarmKey
from gateway.alarms.rules import resolve
from gateway.config import fill_defaults
from gateway.points import PointRef, PointStore, Quality, Reading
from gateway.strings import SCHEMA, ClassifierParams, StringClassifier, StringSupervisor, ZeroRefused, string_states
from gateway.topology import BatteryConfig, StringConfig, Topology
from tests.support import section_with_defaults

STATES = string_states()
CAP = 500.0
CELLS = 120
FLOAT_V = 2.25 * CELLS  # string voltage on float
FLOAT_I = 0.25  # A: 0.5 mA per Ah


def classifier(**over) -> StringClassifier:
    return StringClassifier(1, ClassifierParams(capacity_ah=CAP, cells=CELLS, **over), STATES)


def feed(c: StringClassifier, t0: float, seconds: float, volts: float, raw: float, step: float = 10.0) -> float:
    t = t0
    while t < t0 + seconds:
        t += step
        c.on_voltage(volts / CELLS, t)
        c.on_current(raw, t)
    return t


def test_the_state_names_come_from_the_point_catalog():
    assert STATES.name(STATES.discharging) == "discharging" and STATES.name(STATES.floating) == "float"
    assert (STATES.unknown, STATES.floating, STATES.charging, STATES.discharging, STATES.rest) == (0, 1, 2, 3, 4)


def test_float_voltage_is_never_a_discharge_whatever_the_current_sensor_says():
    c = classifier()
    feed(c, 0, 60, FLOAT_V, -5.0 + FLOAT_I)  # a -5 A offset, zero not learnt yet
    assert c.state == STATES.floating and not c.zero.known


def test_the_zero_is_learnt_on_float_slowly_and_within_its_bound():
    c = classifier()
    t = feed(c, 0, 3600, FLOAT_V, -5.0 + FLOAT_I)  # settling: nothing learnt in the first hour on float
    assert c.zero.offset == 0.0
    t = feed(c, t, 1800, FLOAT_V, -5.0 + FLOAT_I)
    assert -3.5 < c.zero.offset < -2.0  # at most 6 A/h while not known
    t = feed(c, t, 3600, FLOAT_V, -5.0 + FLOAT_I)
    assert c.zero.offset == pytest.approx(-5.0, abs=0.05) and c.zero.known
    assert c.correct(-5.0 + FLOAT_I) == pytest.approx(FLOAT_I, abs=0.05)
    big = classifier()
    feed(big, 0, 12 * 3600, FLOAT_V, -40.0)  # no hall clamp is 40 A off: never learnt beyond the bound
    assert big.zero.offset == -10.0 and not big.zero.known


def test_a_discharge_is_never_learnt_as_zero():
    """A small discharge (C/100 for a day, under float voltage and falling) after the zero is known: the
    offset stays, the state says discharging."""
    c = classifier()
    t = feed(c, 0, 3 * 3600, FLOAT_V, -3.0 + FLOAT_I)
    offset = c.zero.offset
    assert c.zero.known and offset == pytest.approx(-3.0, abs=0.05)
    volts = 2.13 * CELLS
    for _ in range(24 * 6):
        t = feed(c, t, 600, volts, -3.0 - 5.0)
        volts -= 0.0004 * CELLS  # falling a little, as a discharge's voltage does
        assert c.state == STATES.discharging and not c.learning
    assert c.zero.offset == offset


def test_a_recharge_at_float_voltage_is_charging_then_float():
    c = classifier()
    t = feed(c, 0, 3 * 3600, FLOAT_V, 1.0 + FLOAT_I)
    assert c.zero.known
    t = feed(c, t, 60, 2.0 * CELLS, 1.0 - 125.0)  # mains lost: under float voltage, -125 A
    assert c.state == STATES.discharging and c.on_battery_time(t) >= 50
    t = feed(c, t, 60, 2.2 * CELLS, 1.0 + 50.0)  # mains back: the charger recharges
    assert c.state == STATES.charging and c.on_battery_time(t) == 0.0
    feed(c, t, 60, FLOAT_V, 1.0 + 2.0)  # below 1 % of C at float voltage: float
    assert c.state == STATES.floating


def test_without_a_current_reading_the_voltage_trend_says_discharge_or_rest():
    c = classifier()
    t, volts = 0.0, 2.10 * CELLS
    for _ in range(60):
        t += 10
        volts -= 0.02  # 7 V per hour per string: 60 mV per cell per hour
        c.on_voltage(volts / CELLS, t)
        c.classify(t)
    assert c.state == STATES.discharging
    steady = classifier()
    for k in range(60):
        steady.on_voltage(2.14, 10.0 * k)
        steady.classify(10.0 * k)
    assert steady.state == STATES.rest


def strings_topology(n: int = 2) -> list[StringConfig]:
    return [StringConfig(i, CELLS, f"String {i}", BatteryConfig("2V 500Ah VRLA", 2.0, 1, CAP)) for i in range(1, n + 1)]


def supervisor(tmp_path=None, n: int = 2) -> tuple[StringSupervisor, PointStore]:
    store = PointStore()
    sup = StringSupervisor(strings_topology(n), fill_defaults(SCHEMA, {}), store, STATES,
                           tmp_path / "strings.json" if tmp_path is not None else None)
    sup.install()
    return sup, store


def put_string(store: PointStore, sid: int, volts: float, amps: float, t: float, quality=Quality.GOOD) -> None:
    store.put_many([(PointRef("string.voltage", sid), Reading(volts, quality, t)),
                    (PointRef("string.current", sid), Reading(amps, quality, t))])


def test_the_store_holds_the_corrected_current_with_the_measured_one_beside_it():
    sup, store = supervisor()
    seen: list[tuple[str, float | None]] = []
    store.subscribe(lambda batch: seen.extend((ref.point, r.value) for ref, r in batch if ref.string == 1))
    t = 0.0
    for _ in range(3 * 360):
        t += 10
        put_string(store, 1, FLOAT_V, -3.0 + 0.6, t)
    assert store.value(PointRef("string.current_measured", 1)) == pytest.approx(-2.4)
    assert store.value(PointRef("string.current_offset", 1)) == pytest.approx(-3.0 + 0.6 - FLOAT_I, abs=0.01)
    assert store.value(PointRef("string.current", 1)) == 0.0  # 0.25 A: inside the 0.3 A deadband
    assert store.value(PointRef("string.state", 1)) == STATES.floating
    # the listeners got the corrected current (the raw one only until the zero was learnt), the state with it
    currents = [v for p, v in seen if p == "string.current"]
    assert currents[0] == pytest.approx(-2.4) and currents[-1] == 0.0
    assert ("string.state", float(STATES.floating)) in seen
    # a stale sensor: the measured value goes stale too, the corrected one is not corrected twice
    corrected = store.get(PointRef("string.current", 1)).value
    store.mark([PointRef("string.current", 1)], Quality.STALE)
    assert store.get(PointRef("string.current", 1)) == Reading(corrected, Quality.STALE, t)
    assert store.get(PointRef("string.current_measured", 1)).quality is Quality.STALE


def test_a_manual_zero_sets_the_offset_point_and_is_refused_during_a_discharge(tmp_path):
    sup, store = supervisor(tmp_path)
    t = 0.0
    for _ in range(30):
        t += 10
        put_string(store, 1, 2.14 * CELLS, 1.7, t)  # the string's breaker open: 1.7 A is the clamp's offset
    assert store.value(PointRef("string.state", 1)) == STATES.rest
    assert store.value(PointRef("string.current_offset", 1)) == 0.0
    offset = sup.zero_current(1, by="alice", now=t)
    assert offset == pytest.approx(1.7)
    assert store.value(PointRef("string.current_offset", 1)) == pytest.approx(1.7)
    put_string(store, 1, 2.14 * CELLS, 1.7, t + 10)
    assert store.value(PointRef("string.current", 1)) == 0.0 and sup.status()["1"]["zeroed_by"] == "alice"
    # saved: a restart keeps it
    again, _ = supervisor(tmp_path)
    assert again.classifiers[1].zero.offset == pytest.approx(1.7) and again.classifiers[1].zero.manual
    # refused: during a discharge, a reading beyond any offset, an unknown string, nobody
    for k in range(12):
        put_string(store, 2, 2.0 * CELLS, -125.0, t + 10 * k)
    with pytest.raises(ZeroRefused, match="discharging"):
        sup.zero_current(2, by="bob", now=t + 120)
    with pytest.raises(ZeroRefused, match="no string 7"):
        sup.zero_current(7, by="bob")
    with pytest.raises(ValueError, match="say who"):
        sup.zero_current(1, by=" ")
    store.put_many([(PointRef("string.voltage", 2), Reading(2.14 * CELLS, Quality.GOOD, t + 200)),
                    (PointRef("string.current", 2), Reading(25.0, Quality.GOOD, t + 200))])
    with pytest.raises(ZeroRefused):
        sup.zero_current(2, by="bob", now=t + 200)


def test_parallel_strings_publish_their_imbalance_and_the_temperature_spread():
    sup, store = supervisor(n=2)
    t = 0.0
    for _ in range(6):
        t += 10
        put_string(store, 1, 2.0 * CELLS, -100.0, t)
        put_string(store, 2, 2.0 * CELLS, -60.0, t)
    store.put_many([(PointRef("cell.temperature", 1, c), Reading(24.0 + (c == 7) * 3.5, Quality.GOOD, t))
                    for c in range(1, CELLS + 1)])
    sup.tick(t)
    assert store.value(PointRef("string.current_imbalance", 1)) == pytest.approx(25.0)
    assert store.value(PointRef("string.current_imbalance", 2)) == pytest.approx(-25.0)
    assert store.value(PointRef("string.cell_temperature_spread", 1)) == pytest.approx(3.5)


def rules_of(**section):
    topo = Topology(buses=(), strings=tuple(strings_topology(1)), devices=())
    return resolve(section_with_defaults("alarms", section), topo)


def test_on_battery_runaway_spread_and_imbalance_rules():
    ev = Evaluator(rules_of())
    out = ev.update("string.state", 1, None, None, float(STATES.discharging), 0) + \
        ev.update("string.state", 1, None, None, float(STATES.discharging), 20)
    assert [(t.rule.id, t.raised) for t in out] == [("string_on_battery", True)]
    out = ev.update("string.state", 1, None, None, float(STATES.floating), 30) + ev.tick(70)
    assert [(t.rule.id, t.raised) for t in out] == [("string_on_battery", False)]
    out = ev.update("string.thermal_runaway", 1, None, None, 1.0, 100) + ev.tick(160)
    assert [(t.rule.id, t.key.severity) for t in out] == [("string_thermal_runaway", "critical")]
    out = ev.update("string.cell_temperature_spread", 1, None, None, 3.4, 0) + ev.tick(600)
    assert [(t.rule.id, t.key.severity) for t in out] == [("cell_temperature_spread", "warning")]
    out = ev.update("string.current_imbalance", 1, None, None, -55.0, 0) + ev.tick(60)
    assert {(t.rule.id, t.key.severity) for t in out} == {("string_current_imbalance", "warning"),
                                                         ("string_current_imbalance", "critical")}


def test_ohmic_rules_judge_the_median_of_the_last_7_tests_with_a_relative_hysteresis():
    ev = Evaluator(rules_of())

    def test(dev, t):
        return ev.update("cell.ohmic_baseline_deviation", 1, 3, None, dev, t)

    noisy = [2.0, -3.0, 35.0, 1.0, 4.0, -2.0, 3.0, 0.5, 52.0, 1.5]  # one wild test now and then
    assert [x for k, dev in enumerate(noisy) for x in test(dev, k * 86400.0)] == []
    raised = []
    for k in range(10, 20):  # a real +33 % rise: flagged once it is the median of the last 7 tests
        raised += test(33.0 + (k % 3) * 0.5, k * 86400.0)
        if raised:
            break
    assert k - 9 <= 4 and {(t.rule.id, t.key.severity) for t in raised} == {("cell_ohmic_baseline", "warning"),
                                                                           ("cell_ohmic_baseline", "critical")}
    # relative hysteresis: the +20 % warning clears below 18 %, the +30 % alarm below 27 %
    warn = next(c for c in ev.conditions.values() if c.rule.id == "cell_ohmic_baseline" and c.key.severity == "warning")
    crit = next(c for c in ev.conditions.values()
                if c.rule.id == "cell_ohmic_baseline" and c.key.severity == "critical")
    assert (warn.hysteresis, crit.hysteresis) == (pytest.approx(2.0), pytest.approx(3.0))


def test_ohmic_levels_come_from_the_analytics_thresholds_and_read_well():
    topo = Topology(buses=(), strings=tuple(strings_topology(1)), devices=())
    rs = resolve(section_with_defaults("alarms", {}), topo, ohmic=(15.0, 25.0, 40.0))
    high = rs.rule("cell_ohmic_baseline", 1).high
    assert (high.warning, high.critical) == (15, 25)
    assert rs.rule("cell_ohmic_baseline_critical", 1).high.critical == 40
    msgs = Messages(topo, lambda p: {"cell.ohmic_baseline_deviation": "%"}.get(p, ""),
                    {PointRef("cell.ohmic", 1, 9): 0.00046}.get)
    key = AlarmKey("cell_ohmic_baseline_critical", "high", "critical", "cell.ohmic_baseline_deviation", 1, 9)
    assert msgs.raised(key, rs.rule("cell_ohmic_baseline_critical", 1), 52.0, 52.0, 40.0) == \
        "String 1 cell 9: ohmic value 0.46 mOhm, +52 % over baseline (critical at +40 %)"


def test_a_runaway_is_watched_on_float_and_a_boost_charge_is_not_one():
    def watched(volts_after: float) -> int:
        c = classifier()
        t = feed(c, 0, 3 * 3600, FLOAT_V, FLOAT_I)  # the zero is learnt
        worst = 0
        for k in range(1, 91):  # 90 minutes: the float current climbs to 8x its normal
            t = feed(c, t, 60, volts_after if k > 1 else FLOAT_V, FLOAT_I * (1 + 7 * min(k, 30) / 30), step=10)
            worst = max(worst, c.watch(t, 0.0))
        assert c.state == STATES.floating
        return worst

    assert watched(FLOAT_V) == 1  # the float current over 3x its normal, the charger's voltage unchanged
    assert watched(2.35 * CELLS) == 0  # the charger raised its voltage (a boost charge): more current is expected


def test_new_settings_apply_at_once_and_keep_the_learnt_zero():
    sup, store = supervisor()
    t = 0.0
    for _ in range(3 * 360):
        t += 10
        put_string(store, 1, FLOAT_V, -3.0 + 0.6, t)
    offset = sup.classifiers[1].zero.offset
    put_string(store, 1, FLOAT_V, -3.0 + 0.6 + 0.5, t + 10)  # 0.75 A corrected: over the 0.3 A deadband
    assert store.value(PointRef("string.current", 1)) == pytest.approx(0.75, abs=0.02)
    sup.reconfigure(fill_defaults(SCHEMA, {"deadband_a": 1.0}))
    put_string(store, 1, FLOAT_V, -3.0 + 0.6 + 0.5, t + 20)
    assert store.value(PointRef("string.current", 1)) == 0.0 and sup.classifiers[1].zero.offset == offset


def test_the_zero_command_goes_through_the_gateways_one_write_path(tmp_path):
    """``string.zero_current`` (Modbus, REST, the web page and SNMP SET all call ``Gateway.write``): for
    administrators only; the string's sensor reading becomes its zero and ``string.current_offset`` says so."""
    from gateway.commands import Principal, WriteDenied
    from tests.support import GatewayThread, small_bank, write_config

    path = write_config(tmp_path, {"simulator": {"current_offset_a": -3.0}}, base=small_bank(1, 4))
    with GatewayThread(path) as gt:
        gw = gt.gateway
        store = gw.store
        gt.wait_for(lambda: store.value(PointRef("string.current_measured", 1)) is not None, what="a current")
        assert store.value(PointRef("string.current_offset", 1)) == 0.0
        zero = PointRef("string.zero_current", 1)
        with pytest.raises(WriteDenied):
            gt.call(gw.write(zero, 1, Principal("bob", "operator", "rest")))
        done = gt.call(gw.write(zero, 1, Principal("alice", "admin", "rest")))
        assert done.startswith("string 1: current sensor zeroed, offset ")
        offset = float(done.split("offset ")[1].split(" A")[0])
        assert offset == pytest.approx(gw.simulator.model.current_offset(1), abs=0.3)  # the clamp's own offset
        gt.wait_for(lambda: store.value(PointRef("string.current_offset", 1)) == pytest.approx(offset, abs=0.01),
                    what="the new offset published")
        assert gw.status()["strings"]["strings"]["1"]["zeroed_by"] == "alice"


def test_an_ohmic_test_started_on_demand_runs_on_the_sensors_and_its_results_come_at_the_next_cycle(tmp_path):
    """``string.start_ohmic_test``: 0 tests every battery of the string, N battery N; each cell sensor is told
    through its write-only register, and the new results are read at once rather than at the next slow period
    (slow_s here is an hour). Operators may; viewers may not; a battery the string does not have is refused."""
    from gateway.commands import Principal, WriteDenied, WriteRejected
    from tests.support import GatewayThread, small_bank, write_config

    path = write_config(tmp_path, {"gateway": {"poll": {"fast_s": 1, "slow_s": 3600}}}, base=small_bank(1, 4))
    with GatewayThread(path) as gt:
        gw, model = gt.gateway, gt.gateway.simulator.model
        ohmic = [PointRef("cell.ohmic", 1, c) for c in range(1, 5)]
        gt.wait_for(lambda: all(gw.store.value(r) is not None for r in ohmic), what="the first ohmic values")
        before = {r: gw.store.get(r) for r in ohmic}
        scheduled = model.last_ohmic_test(1, cell=2)
        start = PointRef("string.start_ohmic_test", 1)
        operator = Principal("olga", "operator", "rest")
        with pytest.raises(WriteDenied):
            gt.call(gw.write(start, 0, Principal("vic", "viewer", "rest")))
        with pytest.raises(WriteRejected, match="has 4 batteries"):
            gt.call(gw.write(start, 9, operator))
        assert model.last_ohmic_test(1, cell=2) == scheduled, "a refused write tests nothing"

        assert gt.call(gw.write(start, 2, operator)) == "string 1: ohmic test started on battery 2"
        assert model.last_ohmic_test(1, cell=2) > scheduled and model.last_ohmic_test(1, cell=1) == scheduled
        battery2 = ohmic[1]
        gt.wait_for(lambda: gw.store.get(battery2).ts > before[battery2].ts, timeout=20,
                    what="battery 2's new ohmic value read within a few cycles")
        assert gw.store.value(battery2) == pytest.approx(model.ohmic_reading(1, 2), rel=1e-3)

        assert gt.call(gw.write(start, 0, operator)) == "string 1: ohmic test started on 4 of 4 batteries"
        assert all(model.last_ohmic_test(1, cell=c) > scheduled for c in range(1, 5))
        assert gw.store.get(PointRef("cell.ohmic_test", 1, 1)) is None or \
            gw.store.value(PointRef("cell.ohmic_test", 1, 1)) is None, "a write-only register shows no state"


def test_a_string_without_string_sensors_follows_its_good_battery_voltages():
    """No string voltage or current sensor: the tick classifies the string from its batteries' GOOD voltages
    (read from the store), a battery whose reading is not GOOD left out."""
    store = PointStore()
    sup = StringSupervisor(strings_topology(1), fill_defaults(SCHEMA, {}), store, STATES, None, measured=set())
    sup.install()
    states = []
    for t, volts in enumerate([2.27] * 10 + [1.95] * 25, start=1):
        store.put_many([(PointRef("cell.voltage", 1, c), Reading(0.0 if c <= 10 else volts,
                                                                 Quality.STALE if c <= 10 else Quality.GOOD, 10.0 * t))
                        for c in range(1, CELLS + 1)])
        sup.tick(10.0 * t)
        states.append(store.value(PointRef("string.state", 1)))
    assert states[9] == STATES.floating and states[-1] == STATES.discharging
