"""B-TEK CMU charger monitor: bank voltage (32-bit, low word first) and charger current."""
from pathlib import Path

import pytest

from gateway.points import PointRef
from tests.devicedump import assert_matches_truth, check_dump, one_bus, poll_on_simulator

DUMPS = sorted((Path(__file__).parent / "testdata").glob("*.json"))


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: p.stem)
def test_register_dump_decodes_to_the_expected_readings(dump):
    check_dump(dump)


def test_cmu_reads_the_bank_voltage_and_charger_current_through_the_simulator(tmp_path):
    cfg = one_bus({1: []}, cells=40, bank=[{"profile": "btek-cmu", "address": 200}])
    gw = poll_on_simulator(tmp_path, cfg)
    assert_matches_truth(gw, "bank.voltage", abs_=0.02)
    assert_matches_truth(gw, "bank.charger_current", abs_=0.1)
    assert 40 * 13.0 < gw.store.value(PointRef("bank.voltage")) < 40 * 14.0
