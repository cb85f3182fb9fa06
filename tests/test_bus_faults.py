"""Bus faults from the simulator, on the running gateway with the real alarm engine: a sensor that times out,
sends CRC errors or garbage, or answers after its timeout; a bus unplugged and plugged back; a sensor
replaced by one at another address.  For each: its points go stale within 3 poll cycles (counted by the
engine's cycle counter, not by time), the communication alarm is in the active-alarm table (the table the web
page and REST show), the healthy sensors stay GOOD, and everything recovers by itself."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import yaml

from gateway import alarms
from gateway.points import PointRef, Quality
from tests.support import GatewayThread, small_bank, write_config

STALE_AFTER = 3


def config(tmp_path, discovery: dict | None = None):
    base = small_bank(strings=2, cells=6)  # bus1: string sensor 1, cells at 2..7, CMU 200, I/O 201; bus2 alike
    over = {"gateway": {"poll": {"fast_s": 0.25, "stale_after_cycles": STALE_AFTER, "lost_retry_s": 0.3},
                        "discovery": {"ids": "1-9,200-201", **(discovery or {})}},
            "notify": {"relay": {"enabled": False}}}
    return write_config(tmp_path, base=base, overrides=over)


@contextmanager
def running(path):
    """The gateway in a background thread, its faces not started (the alarm engine is: it starts with the
    gateway); the alarm log closed afterwards."""
    gt = GatewayThread(path, services=False)
    try:
        with gt:
            yield gt
    finally:
        mgr = alarms.get_manager(gt.gateway)
        if mgr is not None:
            mgr.stop()


def inject(gt, bus: str, fault) -> int:
    """Call ``fault()`` in the gateway's event loop, between two steps of the bus loop, and return the bus's
    completed-cycle count at that moment (no cycle can end in between)."""
    async def go():
        n = gt.gateway.engine.buses[bus].cycles
        fault()
        return n

    return gt.call(go())


def table(gw) -> dict[str, dict]:
    """The active-alarm table as the web page and /api/v1/alarms get it: message -> row."""
    return {row["message"]: row for row in gw.pm.hook.bmsgw_alarms(gateway=gw, active=True, limit=500)}


class Watch:
    """A store listener that notes the bus's completed-cycle count when points first leave or regain GOOD.

    It runs in the engine's thread, inside the cycle that changes them, so the count is exact."""

    def __init__(self, gw, bus: str, refs) -> None:
        self.bus = gw.engine.buses[bus]
        self.refs = set(refs)
        self.bad: dict[PointRef, tuple[int, Quality]] = {}
        self.comm: dict[PointRef, int] = {}
        self.others_bad: list[tuple[PointRef, Quality]] = []
        self.healthy: set[PointRef] = set()
        gw.store.subscribe(self.on_batch)

    def on_batch(self, batch) -> None:
        for ref, r in batch:
            if ref in self.refs:
                if r.quality is not Quality.GOOD and ref not in self.bad:
                    self.bad[ref] = (self.bus.cycles, r.quality)
            elif ref.point.endswith("comm_status") and r.value == 1.0:
                self.comm.setdefault(ref, self.bus.cycles)
            elif ref in self.healthy and r.quality is not Quality.GOOD:
                self.others_bad.append((ref, r.quality))


def clear_texts(gw) -> dict[str, str | None]:
    """Why each logged alarm ended (alarm id -> the clear message), as the log's records say."""
    mgr = alarms.get_manager(gw)
    mgr.log.flush(timeout=5.0)
    return {r["id"]: r["cleared_message"] for r in mgr.history(limit=1000)}


def measured(gw, string: int, cell: int | None = None):
    """The refs a sensor measures (what the engine polls, every cycle or every slow_s; not derived values, not
    write-only registers such as a cell sensor's ohmic-test request)."""
    write_only = {r for bs in gw.engine.buses.values() for ds in bs.devices for r in ds.write_refs}
    return [e.ref for e in gw.pointmap.entries if e.ref.string == string and e.ref.cell == cell
            and e.spec.source != "derived" and e.ref not in write_only]


def within_cycles(watch: Watch, c0: int, first: int = 1) -> None:
    """The fault came during cycle c0 + 1 (perhaps after the sensor's read): every point of the sensor (those
    read every slow_s too: the sensor does not answer, none of its values is current) is stale within the
    ``first`` full cycles after it (and so within 3)."""
    seen = {str(ref): n - c0 for ref, (n, _) in watch.bad.items()}  # n: cycles completed when it changed
    assert max(n for n, _ in watch.bad.values()) - c0 <= min(first, 3), seen


FAULTS = [("no_answer", {}), ("crc_error", {}), ("garbage", {}), ("slow", {"slow_ms": 250.0})]


@pytest.mark.parametrize("fault,kw", FAULTS, ids=[f for f, _ in FAULTS])
def test_a_faulty_sensor_goes_stale_raises_its_alarm_and_recovers(tmp_path, fault, kw):
    with running(config(tmp_path)) as gt:
        gw = gt.gateway
        mgr = alarms.get_manager(gw)
        bs = gw.engine.buses["bus1"]
        sick = measured(gw, 1, 3)  # cell 3's sensor: address 4
        watch = Watch(gw, "bus1", sick)
        watch.healthy = {r for c in (1, 2, 4, 5, 6) for r in measured(gw, 1, c)} | set(measured(gw, 1))
        text = "String 1 cell 3: sensor stopped answering"
        assert text not in table(gw)

        c0 = inject(gt, "bus1", lambda: gw.simulator.set_fault("bus1", 4, fault, **kw))
        gt.wait_for(lambda: len(watch.bad) == len(sick), timeout=20, what="cell 3's points to go stale")
        # a late slave's first try may get the late reply to the try before (no transaction id tells): the
        # transport learns how late it is from that and waits for its late replies before asking it again
        late = fault == "slow"
        within_cycles(watch, c0, first=2 if late else 1)
        gt.wait_for(lambda: text in table(gw), timeout=20, what="the communication alarm")
        # the alarm comes with the stale_after_cycles-th failed cycle
        assert watch.comm[PointRef("cell.comm_status", 1, 3)] - c0 <= STALE_AFTER + late
        row = table(gw)[text]
        assert row["severity"] == "warning" and row["string"] == 1 and row["cell"] == 3
        assert all(gw.store.get(r).quality is Quality.COMM_FAIL for r in sick)
        gt.wait_for(lambda: bs.cycles >= watch.comm[PointRef("cell.comm_status", 1, 3)] + 3, timeout=20,
                    what="more cycles with the sensor lost")
        assert watch.others_bad == [], "the healthy sensors kept answering, GOOD, every cycle"
        c = gw.engine.counters()["bus1"]
        assert c["devices_lost"] == 1 and c["lost"][0]["address"] == 4
        if fault == "slow":  # said as it is: the sensor answers, but after the timeout
            assert c["late_replies"] > 0 and "replies too late" in c["lost"][0]["error"]
        elif fault == "no_answer":
            assert c["lost"][0]["error"] == "no reply"
        else:
            assert c["crc_errors"] > 0

        gw.simulator.set_fault("bus1", 4, "none")
        gt.wait_for(lambda: text not in table(gw), timeout=20, what="the alarm to clear")
        gt.wait_for(lambda: all(gw.store.get(r).quality is Quality.GOOD for r in sick), timeout=20,
                    what="cell 3 GOOD again")
        assert gw.store.value(PointRef("cell.comm_status", 1, 3)) == 0.0
        assert [a.text for a in mgr.active()] == []
        log = mgr.history(limit=10)
        assert [(r["message"], r["cleared"] is not None) for r in log] == [(text, True)]
        assert watch.others_bad == []


def test_an_unplugged_bus_raises_the_bus_alarm_and_every_sensor_s_and_recovers_when_plugged_back(tmp_path):
    with running(config(tmp_path)) as gt:
        gw = gt.gateway
        mgr = alarms.get_manager(gw)
        bus1 = gw.engine.buses["bus1"]
        refs2 = [r for c in [None, 1, 2, 3, 4, 5, 6] for r in measured(gw, 2, c)]  # string 2: all on bus2
        watch = Watch(gw, "bus2", refs2)
        watch.healthy = {r for c in [None, 1, 2, 3, 4, 5, 6] for r in measured(gw, 1, c)}
        bus_text = "Bus bus2: no sensor answers"
        sensors = {"String 2: string sensor stopped answering"} | {
            f"String 2 cell {c}: sensor stopped answering" for c in range(1, 7)}

        c1 = bus1.cycles
        c0 = inject(gt, "bus2", lambda: gw.simulator.set_fault("bus2", None, "unplugged"))
        gt.wait_for(lambda: len(watch.bad) == len(refs2), timeout=20, what="every bus2 point stale")
        within_cycles(watch, c0)
        gt.wait_for(lambda: bus_text in table(gw) and sensors <= set(table(gw)), timeout=20, what="the alarms")
        assert max(watch.comm.values()) - c0 <= STALE_AFTER
        rows = table(gw)
        assert rows[bus_text]["severity"] == "critical" and rows[bus_text]["channel"] == 2
        assert set(rows) == sensors | {bus_text}, "bus1 raised nothing"
        assert gw.store.value(PointRef("gateway.bus_devices_online", channel=2)) == 0.0
        assert bus1.cycles > c1 and watch.others_bad == [], "bus1 kept polling, GOOD"

        gw.simulator.set_fault("bus2", None, "none")
        gt.wait_for(lambda: not table(gw), timeout=20, what="every alarm to clear")
        gt.wait_for(lambda: all(gw.store.get(r).quality is Quality.GOOD for r in refs2), timeout=20,
                    what="bus2 GOOD again")
        assert gw.store.value(PointRef("gateway.bus_devices_online", channel=2)) == 7.0
        assert all(r["cleared"] for r in mgr.history(limit=50))


def test_a_sensor_replaced_by_one_at_another_address_is_found_adopted_and_reported(tmp_path):
    """What the user sees: the sensor stops answering (alarm); the gateway looks for it at the addresses nobody
    is polled at, finds the new one of that model, polls it there (cell 3 GOOD again, the lost alarm clears)
    and raises a warning telling where it answers now and to set that address in the config.  When the
    sensor is set back to its configured address, it is found there and the warning clears."""
    with running(config(tmp_path, {"ids": "1-9,120-140,200-201", "search_every_s": 1})) as gt:
        gw = gt.gateway
        sim = gw.simulator
        lost = "String 1 cell 3: sensor stopped answering"
        ds = next(d for d in gw.engine.buses["bus1"].devices if d.device.address == 4)
        moved = f"{ds.device.label}: now answers at address 130 (sensor replaced or readdressed); polled there: " \
                f"set address 130 in the config"
        sim.readdress("bus1", 4, 130)
        gt.wait_for(lambda: lost in table(gw), timeout=20, what="the lost alarm")
        gt.wait_for(lambda: moved in table(gw), timeout=30, what="the sensor found at 130")
        gt.wait_for(lambda: lost not in table(gw), timeout=10, what="the lost alarm to clear")
        assert table(gw)[moved]["severity"] == "warning"
        c = gw.engine.counters()["bus1"]
        assert c["moved"] == {"4": 130} and c["discovery"]["adopted"] == {"4": 130}
        gt.wait_for(lambda: gw.store.get(PointRef("cell.voltage", 1, 3)).quality is Quality.GOOD, timeout=10,
                    what="cell 3 GOOD again")
        truth = sim.model.value("cell.voltage", 1, 3)
        assert gw.store.get(PointRef("cell.voltage", 1, 3)).value == pytest.approx(truth, rel=0.01)

        sim.readdress("bus1", 130, 4)  # the technician sets the configured address
        gt.wait_for(lambda: not table(gw), timeout=40, what="found back at address 4, every alarm cleared")
        assert gw.engine.counters()["bus1"]["moved"] == {}
        assert gw.store.get(PointRef("cell.voltage", 1, 3)).quality is Quality.GOOD
        assert f"{ds.device.label}: answers at its configured address again" in clear_texts(gw).values()


def test_two_sensors_replaced_at_once_are_reported_not_guessed(tmp_path, caplog):
    """Two cell sensors gone, two new ones of that model found: which is which cannot be known, so neither
    is adopted; both stay in alarm and the log and the bus status name the new addresses."""
    caplog.set_level("WARNING", logger="gateway.engine")
    with running(config(tmp_path, {"ids": "1-9,130-131,200-201"})) as gt:
        gw = gt.gateway
        gw.simulator.readdress("bus1", 4, 130)
        gw.simulator.readdress("bus1", 5, 131)
        gt.wait_for(lambda: "discovery" in gw.engine.counters()["bus1"], timeout=30, what="a search")
        rep = gw.engine.counters()["bus1"]["discovery"]
        assert rep["unconfigured"] == {"130": "bm-bcs-12", "131": "bm-bcs-12"} and rep["adopted"] == {}
        assert rep["missing"] == [4, 5]
        rows = table(gw)
        assert {"String 1 cell 3: sensor stopped answering", "String 1 cell 4: sensor stopped answering"} <= set(rows)
        assert not any("now answers at" in t for t in rows)
        assert "address 130 (bm-bcs-12) answers but is not configured: it may replace one of the lost" in caplog.text


def test_a_device_alarm_of_a_device_removed_from_the_config_ends_at_the_restart(tmp_path):
    path = config(tmp_path)
    with running(path) as gt:
        gt.gateway.simulator.set_fault("bus1", 201, "no_answer")  # the I/O module
        gt.wait_for(lambda: any("address 201" in t for t in table(gt.gateway)), timeout=20, what="device alarm")
    data = yaml.safe_load(path.read_text())
    data["bank"]["devices"] = [d for d in data["bank"]["devices"] if d["address"] != 201]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with running(path) as gt:
        mgr = alarms.get_manager(gt.gateway)
        assert mgr.active() == [], "no alarm left for a device that no longer exists"
        row = next(r for r in mgr.history(limit=10) if r["rule"] == "device_comm")
        assert row["cleared"] and not row["active"]
        assert clear_texts(gt.gateway)[row["id"]].endswith("alarm ended, the device is no longer configured")
