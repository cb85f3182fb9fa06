"""The gateway running in-process on a small simulated bank: polling, stale marking, recovery."""
from gateway.points import PointRef, Quality
from tests.support import GatewayThread, small_bank, write_config


def test_sensor_that_stops_answering_goes_stale_then_recovers(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=8),
                        overrides={"gateway": {"poll": {"stale_after_cycles": 2, "lost_retry_s": 0.2}}})
    with GatewayThread(path, services=False) as gt:
        gw = gt.gateway
        ref = PointRef("cell.voltage", 1, 3)
        assert gw.store.get(ref).quality is Quality.GOOD
        gw.simulator.set_fault("bus1", 4, "no_answer")  # cell 3 sits at address 4
        gt.wait_for(lambda: gw.store.get(ref).quality is Quality.COMM_FAIL, timeout=20, what="COMM_FAIL")
        assert gw.store.value(PointRef("cell.comm_status", 1, 3)) == 1.0
        # its neighbours keep answering
        assert gw.store.get(PointRef("cell.voltage", 1, 2)).quality is Quality.GOOD
        gw.simulator.set_fault("bus1", 4, "none")
        gt.wait_for(lambda: gw.store.get(ref).quality is Quality.GOOD, timeout=20, what="recovery")
        assert gw.store.value(PointRef("cell.comm_status", 1, 3)) == 0.0
