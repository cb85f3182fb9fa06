"""BM-SMD string sensor, on its own and as a concentrator serving 120 cells in block reads."""
from pathlib import Path

import pytest

from gateway.points import PointRef
from tests.devicedump import assert_matches_truth, check_dump, one_bus, poll_on_simulator

DUMPS = sorted((Path(__file__).parent / "testdata").glob("*.json"))


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: p.stem)
def test_register_dump_decodes_to_the_expected_readings(dump):
    check_dump(dump)


def test_string_sensor_reports_voltage_current_and_soc_of_its_string(tmp_path):
    cfg = one_bus({1: [{"profile": "bm-smd", "address": 1}], 2: [{"profile": "bm-smd", "address": 2}]}, cells=24)
    gw = poll_on_simulator(tmp_path, cfg)
    assert_matches_truth(gw, "string.voltage", rel=0.002)
    assert_matches_truth(gw, "string.current", abs_=0.02)
    assert_matches_truth(gw, "string.sensor_soc", abs_=0.1)
    assert 24 * 13.0 < gw.store.value(PointRef("string.voltage", 1)) < 24 * 14.0


def test_concentrator_serves_120_cells_in_block_reads(tmp_path):
    """BM-BMS topology: one string sensor at one address answers for all 120 cells of its string."""
    cfg = one_bus({1: [{"profile": "bm-smd-concentrator", "address": 1}]}, cells=120, nominal=2)
    gw = poll_on_simulator(tmp_path, cfg)
    assert assert_matches_truth(gw, "cell.voltage", rel=0.003) == 120
    assert assert_matches_truth(gw, "cell.temperature", abs_=0.3) == 120
    assert assert_matches_truth(gw, "cell.ohmic", rel=0.03) == 120
    assert_matches_truth(gw, "string.voltage", rel=0.002)
    # string block, 120 voltages, 120 temperatures, 240 ohmic registers (two reads): 5 requests in all
    counters = gw.engine.counters()["bus1"]
    assert counters["requests"] == 5 and counters["timeouts"] == counters["crc_errors"] == 0
    ds = gw.engine.buses["bus1"].devices[0]
    assert max(b.count for b in ds.blocks) <= 125
    assert sorted((b.start, b.count) for b in ds.blocks) == [(0, 5), (256, 120), (512, 120), (768, 124), (892, 116)]
    assert sorted((b.start, b.count) for b in ds.fast_blocks) == [(0, 5), (256, 120), (512, 120)]
    # its cells' sensors have no address of their own: communication is the string sensor's
    assert gw.store.value(PointRef("string.comm_status", 1)) == 0.0
