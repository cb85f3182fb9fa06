"""BM BCS-02/06/12 cell sensors: register dumps decode to the datasheet's units; each model answers through
the simulator's serial path with the values of the battery it sits on."""
from pathlib import Path

import pytest

from tests.devicedump import assert_matches_truth, check_dump, one_bus, poll_on_simulator

DUMPS = sorted((Path(__file__).parent / "testdata").glob("*.json"))


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: p.stem)
def test_register_dump_decodes_to_the_expected_readings(dump):
    check_dump(dump)


def test_every_model_on_its_own_battery_type_through_the_simulator(tmp_path):
    cfg = one_bus({1: [{"profile": "bm-bcs-12", "address": 10, "count": 4}]}, cells=4, nominal=12)
    cfg["strings"] += [
        {"id": 2, "cells": 4, "battery": {"nominal_voltage": 6},
         "devices": [{"profile": "bm-bcs-06", "bus": "bus1", "address": 20, "count": 4}]},
        {"id": 3, "cells": 4, "battery": {"nominal_voltage": 2},
         "devices": [{"profile": "bm-bcs-02", "bus": "bus1", "address": 30, "count": 4}]}]
    gw = poll_on_simulator(tmp_path, cfg)
    assert assert_matches_truth(gw, "cell.voltage", rel=0.003) == 12
    assert assert_matches_truth(gw, "cell.temperature", abs_=0.3) == 12
    assert assert_matches_truth(gw, "cell.ohmic", rel=0.03) == 12
    volts = {ref.string: r.value for ref, r in gw.store.snapshot().items() if ref.point == "cell.voltage"}
    assert 13.0 < volts[1] < 14.0 and 6.5 < volts[2] < 7.0 and 2.2 < volts[3] < 2.3  # float, per unit type
    # one read per sensor per full cycle: voltage, temperature, ohmic value and status are adjacent
    assert gw.engine.counters()["bus1"]["requests"] == 12
