"""The simulator: plausible battery physics, its ground truth, Modbus answers, and wire-time pacing."""
import asyncio
import statistics
import time

import pytest

from gateway.modbus.rtu import ExceptionResponse, frame_wire_time, read_request, with_crc, write_single_request
from gateway.modbus.transport import RtuTransport
from gateway.sim.model import BankModel, SensorErrors
from gateway.topology import BusConfig
from tests.coretools import offline_gateway
from tests.devicedump import one_bus
from tests.support import write_config

NOON = 1.7e9 - (1.7e9 % 86400) + 43200  # ambient follows the time of day; compare at one time


def bank(cells=20, cpu=6, **kw) -> BankModel:
    m = BankModel([(1, cells, 100.0, cpu)], t0=NOON, **kw)
    return m


def float_voltage(m, cell=1):
    return m.cell_voltage(1, cell)


def test_float_voltage_is_temperature_compensated_and_held_outside_5_to_40_c():
    m = bank()
    m.ambient_base = 25.0
    v25 = float_voltage(m)
    m.ambient_base = 35.0
    v35 = float_voltage(m)
    assert v25 - v35 == pytest.approx(6 * 0.003 * 10, rel=0.01), "-3 mV/C per 2 V cell"
    per_cell = v25 / 6
    assert 2.22 < per_cell < 2.28, "float is about 2.23-2.27 V per cell at 25 C"
    m.ambient_base = 45.0
    v45 = float_voltage(m)
    m.ambient_base = 50.0
    assert float_voltage(m) == pytest.approx(v45), "compensation is held above 40 C"


def test_units_spread_around_the_string_and_run_warmer_than_the_room():
    m = bank(cells=60)
    volts = [m.cell_voltage(1, c) for c in range(1, 61)]
    assert 0.02 < statistics.pstdev(volts) < 0.12  # 12 V units on float: a spread of +-0.1-0.2 V
    assert max(volts) - min(volts) < 0.6
    temps = [m.cell_temperature(1, c) for c in range(1, 61)]
    assert all(m.ambient() < t < m.ambient() + 5 for t in temps)
    assert m.string_voltage(1) == pytest.approx(sum(volts))


def test_discharge_lowers_voltage_and_soc_and_recharge_returns_to_float():
    m = bank(cells=10, weak_cells=0, discharge_duration_s=7200)
    v_float = m.string_voltage(1)
    m.set_mode(1, "discharge", current=25.0)  # C/4
    m.advance_to(m.t + 1800)
    st = m.strings[1]
    assert st.current == -25.0 and 0.80 < st.soc < 0.95
    v_dis = m.string_voltage(1)
    assert v_dis < v_float - 10 * 0.3, "under load the units sit well below float"
    m.advance_to(m.t + 1800)
    assert m.strings[1].soc < 0.80 and m.string_voltage(1) < v_dis, "deeper discharge, lower voltage"
    soc_low = m.strings[1].soc
    m.set_mode(1, "recharge")
    m.advance_to(m.t + 600)
    assert m.strings[1].current > 0 and m.strings[1].soc > soc_low
    assert m.string_voltage(1) > v_dis
    m.advance_to(NOON + 86400)  # same time of day: same room temperature as at the start
    assert m.strings[1].mode == "float" and m.strings[1].soc == 1.0
    assert m.string_voltage(1) == pytest.approx(v_float, abs=0.05)


def test_scheduled_discharge_events_start_and_end_by_themselves():
    m = bank(cells=4, discharge_every_s=3600, discharge_duration_s=600)
    m.advance_to(m.t + 3610)
    assert m.strings[1].mode == "discharge"
    m.advance_to(m.t + 700)
    assert m.strings[1].mode == "recharge"


def test_weak_units_age_faster_and_the_truth_says_which():
    m = bank(cells=50, weak_cells=3)
    truth = m.truth()
    weak = [c for c, v in truth["strings"][1]["cells"].items() if v["weak"]]
    assert len(weak) == 3
    later = m.t + 5 * 365.25 * 86400
    rise = {c: m.true_ohmic(1, c, later) / m.true_ohmic(1, c) - 1 for c in range(1, 51)}
    normal = [r for c, r in rise.items() if c not in weak]
    assert min(rise[c] for c in weak) > max(normal), "weak units' ohmic value climbs faster"
    assert 0.05 < statistics.mean(normal) < 0.3, "healthy units age a few per cent a year"
    b = m.battery(1, weak[0])
    assert b.years_to_rise(0.5) < min(m.battery(1, c).years_to_rise(0.5) for c in range(1, 51) if c not in weak)
    assert truth["strings"][1]["soc"] == pytest.approx(100.0) and truth["strings"][1]["mode"] == "float"


def test_a_sensor_holds_its_ohmic_test_result_until_the_next_test():
    m = bank(cells=4, weak_cells=1, ohmic_test_interval_s=86400)
    weak = next(b.cell for b in m.strings[1].batteries if b.accel)
    first = [m.measure("cell.ohmic", 1, c) for c in range(1, 5)]
    for _ in range(20):  # the day goes on: the units age, every read reports the morning's test
        m.advance_to(m.t + 3600)
        assert [m.measure("cell.ohmic", 1, c) for c in range(1, 5)] == first
    assert m.true_ohmic(1, weak) > m.true_ohmic(1, weak, m.t - 20 * 3600)  # while the truth moved on
    m.advance_to(m.t + 4 * 3600)  # a day after the last test: the sensors test again
    second = [m.measure("cell.ohmic", 1, c) for c in range(1, 5)]
    assert all(a != b for a, b in zip(first, second, strict=True))
    assert m.last_ohmic_test(1) == NOON + 86400
    # each result is what its sensor reads of the truth at its test (its conformity error included), within
    # the test's repeatability (1 % +- 25 micro-ohm as 2 sigma): 4 sigma
    for c, v in enumerate(second, 1):
        expected = m.sensor_ohmic(1, c, NOON + 86400)
        assert v == pytest.approx(expected, abs=4 * m.errors.ohmic_test_sigma(expected))
        assert v == pytest.approx(m.true_ohmic(1, c, NOON + 86400), rel=0.015 + 25e-6 / expected + 0.02)
    # a test run on demand (one string) gives a new result at once, and holds it too
    m.advance_to(m.t + 600)
    m.run_ohmic_test(1)
    third = [m.measure("cell.ohmic", 1, c) for c in range(1, 5)]
    assert all(a != b for a, b in zip(second, third, strict=True)) and m.last_ohmic_test(1) == m.t
    m.advance_to(m.t + 600)
    assert [m.measure("cell.ohmic", 1, c) for c in range(1, 5)] == third


def test_overrides_replace_the_physics_until_cleared():
    m = bank(cells=2)
    m.set_override("cell.voltage", 1.5, 1, 2)
    assert m.overrides[("cell.voltage", 1, 2, None)] == 1.5
    m.clear_override("cell.voltage", 1, 2)
    assert not m.overrides


# -- the Modbus side -----------------------------------------------------------------------------------------
def sim_gateway(tmp_path, baud=9600, wire_time=True, **sim):
    cfg = one_bus({1: [{"profile": "bm-bcs-12", "address": 2, "count": 2}]}, cells=2, baud=baud,
                  bank=[{"profile": "bm-io", "address": 201}])
    cfg["simulator"] = {"enabled": True, "wire_time": wire_time, **sim}
    from gateway.app import Gateway

    return Gateway(write_config(tmp_path, base=cfg, fast=False))


def transact_all(port: str, baud: int, requests: list[bytes]):
    async def go():
        tr = RtuTransport(BusConfig("b", port, baud=baud, timeout_ms=500))
        tr.open()
        out = []
        try:
            t0 = time.monotonic()
            for r in requests:
                try:
                    out.append(await tr.transact(r))
                except ExceptionResponse as exc:
                    out.append(exc.code)
            return out, time.monotonic() - t0, tr.counters
        finally:
            tr.close()

    return asyncio.run(go())


def test_the_simulator_answers_like_a_modbus_slave(tmp_path):
    gw = sim_gateway(tmp_path, wire_time=False)
    with gw.simulator:
        port = gw.simulator.ports()["bus1"]
        out, _, counters = transact_all(port, 9600, [
            read_request(2, 4, 0, 5),  # a cell sensor's values
            read_request(2, 4, 4096, 6),  # its identity
            read_request(2, 4, 300, 2),  # nothing there: illegal address
            read_request(2, 3, 0, 1),  # holding table it does not have
            with_crc(bytes([2, 7])),  # a function it does not implement (read exception status)
            write_single_request(2, 0, 1),  # read-only register
            write_single_request(201, 0, 1),  # the relay
        ])
        assert gw.simulator.model.do_state == 1
    values, ident = out[0], out[1]
    assert 12.8 < values[0] / 1000 < 14.2 and 150 < values[1] < 400
    assert ident[:2] == [0x424D, 0x0C12], "vendor BM, model BCS-12"
    assert out[2] == 2 and out[3] == 2 and out[4] == 1 and out[5] == 2
    assert out[6] == [] and counters.exceptions == 4 and counters.timeouts == 0


def test_wire_time_emulation_takes_about_the_computed_wire_time(tmp_path):
    gw = sim_gateway(tmp_path, baud=9600)
    bus = gw.topology.buses[0]
    with gw.simulator:
        request = read_request(2, 4, 0, 5)
        _, elapsed, counters = transact_all(gw.simulator.ports()["bus1"], 9600, [request] * 8)
    one = frame_wire_time(8, 15, bus.char_time, bus.silence, 0.002)
    assert one == pytest.approx(0.0340, abs=0.001), "8 + 15 characters at 9600 baud, two silences, turnaround"
    assert counters.wire_time == pytest.approx(8 * one)
    # never faster than the wire allows; the first request has no silence to wait for before it
    assert elapsed >= 8 * one - bus.silence - 0.001
    assert elapsed < 8 * one * 2, "and not much slower (generous: the machine may be busy)"


def test_without_wire_time_the_simulator_answers_at_once(tmp_path):
    gw = sim_gateway(tmp_path, baud=1200, wire_time=False)
    with gw.simulator:
        _, elapsed, _ = transact_all(gw.simulator.ports()["bus1"], 1200, [read_request(2, 4, 0, 5)] * 4)
    assert elapsed < 4 * frame_wire_time(8, 15, 11 / 1200, 3.5 * 11 / 1200, 0.002) / 2


def test_simulated_time_runs_at_time_scale(tmp_path):
    gw = sim_gateway(tmp_path, wire_time=False, time_scale=3600)
    model = gw.simulator.model
    with gw.simulator:
        port = gw.simulator.ports()["bus1"]
        transact_all(port, 9600, [read_request(2, 4, 0, 1)])
        t0 = model.t
        time.sleep(0.3)
        transact_all(port, 9600, [read_request(2, 4, 0, 1)])
    assert model.t - t0 >= 0.3 * 3600


def test_over_modbus_the_ohmic_register_holds_between_tests(tmp_path):
    gw = sim_gateway(tmp_path, wire_time=False, ohmic_test_interval_s=7200)
    model = gw.simulator.model
    assert model.ohmic_test_interval_s == 7200
    with gw.simulator:
        port = gw.simulator.ports()["bus1"]
        reads, _, _ = transact_all(port, 9600, [read_request(2, 4, 2, 2)] * 5)  # cell.ohmic, uint32 micro-ohm
        assert len({tuple(r) for r in reads}) == 1, reads
        model.run_ohmic_test(1)
        again, _, _ = transact_all(port, 9600, [read_request(2, 4, 2, 2)] * 3)
    assert len({tuple(r) for r in again}) == 1 and again[0] != reads[0]
    micro_ohm = (again[0][0] << 16) | again[0][1]
    expected = model.sensor_ohmic(1, 1)
    assert micro_ohm / 1e6 == pytest.approx(expected, abs=4 * model.errors.ohmic_test_sigma(expected) + 1e-6)


def test_unknown_faults_and_buses_are_refused(tmp_path):
    gw = offline_gateway(write_config(tmp_path, base=one_bus({1: []}, cells=1)))
    sim = gw.make_simulator()
    try:
        with pytest.raises(ValueError, match="unknown fault 'fire'"):
            sim.set_fault("bus1", None, "fire")
        with pytest.raises(KeyError):
            sim.set_fault("bus9", None, "unplugged")
    finally:
        sim.stop()


@pytest.mark.parametrize("cpu", [1, 3, 6])
def test_a_failed_cell_takes_one_cells_voltage_off_its_unit_whatever_its_size(cpu):
    m = bank(cells=4, cpu=cpu, weak_cells=0, errors=SensorErrors.none())
    healthy = m.cell_voltage(1, 2)
    m.battery(1, 2).failed_cell = True
    m.refresh()
    assert healthy - m.cell_voltage(1, 2) == pytest.approx(healthy / cpu, rel=0.01)  # about 2.25 V on float
    m.set_mode(1, "discharge", 25.0)
    m.advance_to(m.t + 600)
    loaded = m.cell_voltage(1, 1)
    assert loaded - m.cell_voltage(1, 2) == pytest.approx(loaded / cpu, rel=0.02)  # one cell under load, not two


@pytest.mark.parametrize("amps, end", [(125.0, 1.80), (835.0, 1.75)])
def test_a_discharge_ends_through_the_knee_at_its_rates_end_voltage(amps, end):
    """2 V 500 Ah cells: at C/4 the voltage reaches 1.80 V per cell, at the 15-minute rate 1.75 V, when the
    Peukert-corrected charge is used up; it falls steeply in the last per cents, and the UPS cuts at 1.70 V."""
    m = BankModel([(1, 10, 500.0, 1)], t0=NOON, weak_cells=0, discharge_duration_s=1e9, errors=SensorErrors.none())
    m.set_mode(1, "discharge", amps)
    volts = []
    step = 10.0 if amps < 200 else 1.0  # the 15-minute rate drains 1 % of the charge in 9 s
    while m.strings[1].mode == "discharge":
        m.advance_to(m.t + step)
        volts.append((m.strings[1].soc, m.string_voltage(1) / 10))
    at_empty = next(v for soc, v in volts if soc <= 0.0)
    assert at_empty == pytest.approx(end, abs=0.01)
    before = next(v for soc, v in volts if soc <= 0.10)
    assert before - at_empty > 0.05  # the knee: more than 50 mV in the last 10 % of the charge
    assert min(v for _, v in volts) <= 1.72 and m.strings[1].mode == "recharge"  # the UPS cut off at 1.70


def test_the_sensor_errors_can_be_set_and_turned_off(tmp_path):
    from gateway.config import CORE_SCHEMA, fill_defaults

    errors = SensorErrors.from_config(fill_defaults(CORE_SCHEMA["simulator"], {
        "current_offset_a": -3.0, "current_offsets": {"2": 5.0}, "sensor_errors": {"current_gain_pct": 0}}))
    m = BankModel([(1, 2, 500.0, 1), (2, 2, 500.0, 1)], t0=NOON, errors=errors)
    assert m.calibration[("string.current", 1, None)].offset == -3.0
    assert m.calibration[("string.current", 2, None)].offset == 5.0
    assert m.calibration[("string.current", 1, None)].gain == 0.0 and errors.voltage_gain_pct == 0.2
    perfect_sensors = SensorErrors.from_config(fill_defaults(CORE_SCHEMA["simulator"], {"sensor_errors": False}))
    perfect = BankModel([(1, 2, 500.0, 1)], t0=NOON, errors=perfect_sensors)
    for point in ("string.current", "string.voltage", "cell.voltage", "cell.temperature", "cell.ohmic"):
        cell = 1 if point.startswith("cell.") else None
        assert perfect.measure(point, 1, cell) == pytest.approx(perfect.value(point, 1, cell)), point
    with pytest.raises(Exception, match="sensor_errors"):
        offline_gateway(write_config(tmp_path, base=dict(one_bus({1: []}, cells=1),
                                                          simulator={"sensor_errors": {"gain": 1}})))


def test_scenarios_a_stuck_sensor_and_one_out_of_its_range():
    m = bank(cells=3, weak_cells=0)
    m.schedule_scenario(m.t + 60, "stuck", point="cell.voltage", string=1, cell=2)
    m.schedule_scenario(m.t + 60, "out_of_range", point="cell.voltage", string=1, cell=3, value=20.0)
    m.schedule_scenario(m.t + 60, "thermal_runaway", string=1)
    m.advance_to(m.t + 70)
    stuck = m.overrides[("cell.voltage", 1, 2, None)]
    m.battery(1, 2).float_offset += 0.5
    assert m.overrides[("cell.voltage", 1, 2, None)] == stuck and m.overrides[("cell.voltage", 1, 3, None)] == 20.0
    m.advance_to(m.t + 1800)
    assert m.truth()["strings"][1]["runaway_current"] > 3 * m.strings[1].float_current
    with pytest.raises(ValueError, match="unknown scenario"):
        m.schedule_scenario(m.t, "fire")


def test_scenarios_the_mains_fail_and_return():
    """mains_failure: every string (or the one named) discharges at the given current, which a second
    mains_failure changes (a load step); mains_return: the charger recharges them."""
    m = BankModel([(1, 3, 100.0, 6), (2, 3, 100.0, 6)], t0=NOON, weak_cells=0)
    m.schedule_scenario(m.t + 60, "mains_failure", value=20.0)
    m.advance_to(m.t + 70)
    assert [(st.mode, st.current) for st in m.strings.values()] == [("discharge", -20.0), ("discharge", -20.0)]
    m.start_scenario("mains_failure", string=2, value=40.0)
    m.advance_to(m.t + 10)
    assert m.strings[1].current == -20.0 and m.strings[2].current == -40.0
    m.start_scenario("mains_return")
    m.advance_to(m.t + 10)
    assert all(st.mode == "recharge" and st.current > 0 for st in m.strings.values())
    with pytest.raises(ValueError, match="no string 3"):
        m.start_scenario("mains_failure", string=3, value=10.0)
