"""B-TEK BMU, L type (2 V cells) and H type (12 V units): voltage, temperature, DC resistance,
micro-discharge voltage and EMF, from the holding registers."""
from pathlib import Path

import pytest

from tests.devicedump import assert_matches_truth, check_dump, one_bus, poll_on_simulator

DUMPS = sorted((Path(__file__).parent / "testdata").glob("*.json"))


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: p.stem)
def test_register_dump_decodes_to_the_expected_readings(dump):
    check_dump(dump)


@pytest.mark.parametrize("profile, nominal", [("btek-bmu-l", 2), ("btek-bmu-h", 12)])
def test_bmu_reads_all_five_parameters_through_the_simulator(tmp_path, profile, nominal):
    cfg = one_bus({1: [{"profile": profile, "address": 1, "count": 6}]}, cells=6, nominal=nominal, baud=9600)
    gw = poll_on_simulator(tmp_path, cfg)
    assert assert_matches_truth(gw, "cell.voltage", rel=0.003) == 6
    assert_matches_truth(gw, "cell.temperature", abs_=0.3)
    assert_matches_truth(gw, "cell.ohmic", rel=0.03, abs_=1e-6)
    assert_matches_truth(gw, "cell.emf", rel=0.003)
    assert_matches_truth(gw, "cell.micro_discharge_voltage", rel=0.003)
    emf = gw.store.value(gw.pointmap.refs("cell.emf")[0])
    volts = gw.store.value(gw.pointmap.refs("cell.voltage")[0])
    assert emf < volts, "on float the terminal voltage sits above the EMF"
