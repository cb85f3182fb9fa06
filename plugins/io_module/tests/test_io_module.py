"""DI/AI/DO module: ambient temperature and humidity, four dry contacts, the alarm relay (written)."""
from pathlib import Path

import pytest

from gateway.engine import DeviceWriteError as WriteError
from gateway.points import PointRef
from tests.devicedump import assert_matches_truth, check_dump, one_bus, poll_on_simulator

DUMPS = sorted((Path(__file__).parent / "testdata").glob("*.json"))


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: p.stem)
def test_register_dump_decodes_to_the_expected_readings(dump):
    check_dump(dump)


def test_io_module_inputs_and_relay_through_the_simulator(tmp_path):
    relay = PointRef("io.do", channel=1)
    seen = {}

    async def then(gw):
        model = gw.simulator.model
        seen["before"] = gw.store.value(relay)
        await gw.engine.write_point(relay, 1)
        seen["model_after_write"] = model.do_state
        model.di_state = 0b1001  # doors 1 and 4 closed
        await gw.engine.poll_once()
        seen["relay_read_back"] = gw.store.value(relay)
        with pytest.raises(WriteError, match="not writable"):
            await gw.engine.write_point(PointRef("io.di", channel=1), 1)
        await gw.engine.write_point(relay, 0)

    cfg = one_bus({1: []}, cells=1, bank=[{"profile": "bm-io", "address": 201}])
    gw = poll_on_simulator(tmp_path, cfg, then=then)
    assert seen == {"before": 0.0, "model_after_write": 1, "relay_read_back": 1.0}
    assert gw.simulator.model.do_state == 0
    assert [gw.store.value(PointRef("io.di", channel=c)) for c in range(1, 5)] == [1.0, 0.0, 0.0, 1.0]
    assert_matches_truth(gw, "io.ambient_temperature", abs_=0.1)
    assert_matches_truth(gw, "io.ambient_humidity", abs_=0.1)
