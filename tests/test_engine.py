"""The polling engine on the simulator, through the real serial path: block planning, retries, faults and
their counters, stale -> COMM_FAIL -> recovery, a readdressed sensor, writes, the RS485 mode flag."""
import asyncio
import os

import pytest

from gateway.engine import DeviceWriteError as WriteError
from gateway.modbus.planner import plan
from gateway.points import PointRef, Quality
from gateway.profiles import RegisterSpec
from tests.devicedump import one_bus, poll_on_simulator
from tests.support import descriptors_above_select, small_bank


# -- the block planner ---------------------------------------------------------------------------------------
def entries(*regs, table="input"):
    """(address, dtype, poll) -> planner entries."""
    out = []
    for address, dtype, poll in regs:
        reg = RegisterSpec(point=f"x.p{address}", table=table, address=address, dtype=dtype, poll=poll)
        out.append((table, address, reg.count, poll, reg, f"ref{address}"))
    return out


def spans(blocks):
    return [(b.table, b.start, b.count, b.poll) for b in blocks]


def test_planner_merges_contiguous_registers_and_reads_through_small_gaps():
    e = entries((0, "uint16", "fast"), (1, "int16", "fast"), (2, "uint32", "fast"), (8, "uint16", "fast"),
                (20, "uint16", "fast"))
    assert spans(plan(e, max_gap=4)) == [("input", 0, 9, "fast"), ("input", 20, 1, "fast")]
    assert spans(plan(e, max_gap=0)) == [("input", 0, 4, "fast"), ("input", 8, 1, "fast"), ("input", 20, 1, "fast")]
    blocks = plan(e, max_gap=4)
    assert [(i.offset, i.ref) for i in blocks[0].items] == [(0, "ref0"), (1, "ref1"), (2, "ref2"), (8, "ref8")]


def test_planner_never_exceeds_125_registers_nor_splits_a_32_bit_value():
    e = entries(*[(a, "uint32", "fast") for a in range(0, 400, 2)])
    blocks = plan(e)
    assert all(b.count <= 125 for b in blocks) and [b.count for b in blocks] == [124, 124, 124, 28]
    assert all(i.offset + 2 <= b.count for b in blocks for i in b.items)
    assert sum(len(b.items) for b in blocks) == 200
    assert [b.count for b in plan(e, max_block=10)] == [10] * 40, "a profile may ask for smaller reads"


def test_planner_keeps_tables_and_poll_classes_apart_unless_a_cycle_reads_both():
    e = entries((0, "uint16", "fast"), (1, "uint16", "slow"), (2, "uint16", "fast")) + \
        entries((0, "uint16", "fast"), table="holding")
    assert spans(plan(e, max_gap=0)) == [("holding", 0, 1, "fast"), ("input", 0, 1, "fast"),
                                         ("input", 2, 1, "fast"), ("input", 1, 1, "slow")]
    assert spans(plan(e, max_gap=0, merge_poll=True)) == [("holding", 0, 1, "fast"), ("input", 0, 3, "fast")]
    assert spans(plan(entries((5, "uint16", "slow")), merge_poll=True)) == [("input", 5, 1, "slow")]


def test_a_full_cycle_reads_each_cell_sensor_once_and_a_fast_cycle_skips_slow_values(tmp_path):
    times = {}

    async def then(gw):
        snap = gw.store.snapshot()
        times["before"] = (snap[PointRef("cell.voltage", 1, 1)].ts, snap[PointRef("cell.ohmic", 1, 1)].ts)
        before = gw.engine.counters()["bus1"]["requests"]
        await asyncio.sleep(0.01)
        await gw.engine.poll_once(slow=False)
        snap = gw.store.snapshot()
        times["after"] = (snap[PointRef("cell.voltage", 1, 1)].ts, snap[PointRef("cell.ohmic", 1, 1)].ts)
        times["fast_requests"] = gw.engine.counters()["bus1"]["requests"] - before

    gw = poll_on_simulator(tmp_path, small_bank(strings=1, cells=8), then=then)
    # 8 cell sensors + string sensor + CMU + I/O module (input and holding tables) = 12 reads
    assert gw.engine.plan_summary()["bus1"]["blocks"] == 12
    assert times["after"][0] > times["before"][0], "voltage is a fast value"
    assert times["after"][1] == times["before"][1], "ohmic value is a slow value"
    assert times["fast_requests"] == 12


# -- faults, counters, quality -------------------------------------------------------------------------------
class Events:
    def __init__(self, gw):
        self.items = []
        original = gw.engine.comm_callback

        def record(event):
            self.items.append((event.device.address, event.lost, event.reason))
            original(event)

        gw.engine.comm_callback = record


def faulty_bank(**poll):
    cfg = small_bank(strings=1, cells=4)  # string sensor 1, cells at 2..5, CMU 200, I/O 201
    cfg["gateway"] = {"poll": {"stale_after_cycles": 2, **poll}}
    return cfg


def test_the_simulator_and_the_buses_work_on_descriptors_above_1023(tmp_path):
    """A gateway whose faces hold many connections opens its pseudo-terminals and ports above 1023 (bmsgw run
    raises its open-files limit for them): the simulator used to wait with select(), which refuses them."""
    with descriptors_above_select():
        gw = poll_on_simulator(tmp_path, small_bank(strings=1, cells=4))
    assert gw.simulator is not None and min(b.master for b in gw.simulator.buses.values()) > 1023
    readings = [gw.store.get(PointRef("cell.voltage", 1, c)) for c in range(1, 5)]
    assert all(r is not None and r.quality is Quality.GOOD for r in readings), readings


@pytest.mark.parametrize("fault", ["crc_error", "garbage", "no_answer"])
def test_a_failing_sensor_goes_stale_then_comm_fail_then_recovers(tmp_path, fault):
    ref, neighbour = PointRef("cell.voltage", 1, 2), PointRef("cell.voltage", 1, 3)
    seen = []

    async def then(gw):
        events = Events(gw)
        sim, engine = gw.simulator, gw.engine
        c0 = engine.counters()["bus1"]
        good = gw.store.get(ref)
        sim.set_fault("bus1", 3, fault)
        await engine.poll_once()
        seen.append(("stale", gw.store.get(ref), gw.store.get(neighbour).quality))
        await engine.poll_once()
        c1 = engine.counters()["bus1"]
        seen.append(("lost", gw.store.get(ref), gw.store.value(PointRef("cell.comm_status", 1, 2)),
                     c1["devices_lost"], list(events.items)))
        sim.set_fault("bus1", 3, "none")
        await engine.poll_once()
        seen.append(("back", gw.store.get(ref).quality, gw.store.value(PointRef("cell.comm_status", 1, 2)),
                     events.items[-1][:2]))
        seen.append(("counters", {k: c1[k] - c0[k] for k in ("requests", "timeouts", "crc_errors")}, good))

    poll_on_simulator(tmp_path, faulty_bank(), then=then)
    (_, stale, nq), (_, lost, comm, n_lost, events), (_, back_q, back_comm, last), (_, delta, good) = seen
    assert stale.quality is Quality.STALE and stale.value == good.value and stale.ts == good.ts
    assert nq is Quality.GOOD, "its neighbours keep answering"
    assert lost.quality is Quality.COMM_FAIL and lost.value == good.value and comm == 1.0 and n_lost == 1
    assert len(events) == 1 and events[0][:2] == (3, True)
    assert back_q is Quality.GOOD and back_comm == 0.0 and last == (3, False)
    # two failed cycles: the first read retried once (retries: 1), the next cycle's once only (it failed all
    # its tries the cycle before: one more says whether it still fails); every other device read once per cycle
    assert delta["requests"] == (2 + 7) + (1 + 7)
    if fault == "no_answer":
        assert delta["timeouts"] == 3 and delta["crc_errors"] == 0
    else:
        assert delta["crc_errors"] == 3 and delta["timeouts"] == 0


def test_a_sensor_that_missed_a_fast_cycle_has_its_slow_values_current_again_the_next_cycle(tmp_path):
    """One glitch (both tries of a fast cycle garbled) marks everything of the sensor stale, its ohmic value
    too, which only a full cycle reads (every slow_s, 5 minutes by default).  The sensor's next read is a full
    one: its ohmic value is current as soon as it answers again, and the reads after that are fast again."""
    ohmic, volts = PointRef("cell.ohmic", 1, 2), PointRef("cell.voltage", 1, 2)
    seen = {}

    async def then(gw):
        sim, engine = gw.simulator, gw.engine
        before = gw.store.get(ohmic)
        sim.set_fault("bus1", 3, "crc_error")
        await engine.poll_once(slow=False)
        seen["glitch"] = gw.store.get(ohmic).quality, gw.store.get(volts).quality
        sim.set_fault("bus1", 3, "none")
        await engine.poll_once(slow=False)
        back = gw.store.get(ohmic)
        seen["back"] = back.quality, back.ts > before.ts, gw.store.get(volts).quality
        await engine.poll_once(slow=False)
        seen["then"] = gw.store.get(ohmic).ts == back.ts, gw.store.get(volts).ts > back.ts

    poll_on_simulator(tmp_path, faulty_bank(), then=then)
    assert seen["glitch"] == (Quality.STALE, Quality.STALE)
    assert seen["back"] == (Quality.GOOD, True, Quality.GOOD), "read whole when it answers again"
    assert seen["then"] == (True, True), "then fast cycles again: the ohmic value is not read"


def test_a_sensor_late_once_is_asked_again_within_the_cycle(tmp_path):
    """A sensor busy once (its own measurement) answers after the timeout; its late reply comes while the bus
    serves the next sensors, so the engine knows it answered late before the cycle's retries.  Late once, it
    is asked again and its values are current; only one late again and again is not (a retry would be late
    too: test below)."""
    seen = {}

    async def then(gw):
        sim, engine = gw.simulator, gw.engine
        cell = PointRef("cell.voltage", 1, 2)  # the sensor at address 3
        before = gw.store.get(cell)
        asked: list[str] = []
        answer = sim.reply

        def late_once(dev, frame):
            if dev.address == 3:
                asked.append(dev.fault)
                if len(asked) > 1:
                    dev.fault = "none"  # (read after this returns: this answer comes in time)
            return answer(dev, frame)

        sim.reply = late_once
        # 3 answers 80 ms after the 300 ms timeout, while 4 and 5 take 150 ms each: the late reply comes during
        # their transactions, before the batch ends (each margin is 80 ms or more, for a loaded machine)
        sim.set_fault("bus1", 3, "slow", slow_ms=380)
        sim.set_fault("bus1", 4, "slow", slow_ms=150)
        sim.set_fault("bus1", 5, "slow", slow_ms=150)
        c0 = engine.counters()["bus1"]
        await engine.poll_once(slow=False)
        c1 = engine.counters()["bus1"]
        now = gw.store.get(cell)
        seen.update(asked=asked, quality=now.quality, fresh=now.ts > before.ts,
                    timeouts=c1["timeouts"] - c0["timeouts"], late=c1["late_replies"] - c0["late_replies"])

    bank = faulty_bank()
    bank["buses"][0]["timeout_ms"] = 300
    poll_on_simulator(tmp_path, bank, then=then)
    assert seen["timeouts"] == 1 and seen["late"] == 1, seen
    assert seen["asked"] == ["slow", "slow"], "asked again after its late reply"
    assert seen["quality"] is Quality.GOOD and seen["fresh"], seen


def test_a_slow_slave_answers_within_the_timeout_or_times_out_alone(tmp_path):
    seen = {}

    async def then(gw):
        sim, engine = gw.simulator, gw.engine
        sim.set_fault("bus1", 3, "slow", slow_ms=60)  # timeout_ms is 100 in small_bank
        await engine.poll_once()
        seen["slow_ok"] = gw.store.get(PointRef("cell.voltage", 1, 2)).quality
        seen["c0"] = engine.counters()["bus1"]
        sim.set_fault("bus1", 3, "slow", slow_ms=500)  # beyond both attempts
        for _ in range(2):
            await engine.poll_once()
        seen["c1"] = engine.counters()["bus1"]
        seen["snap"] = gw.store.snapshot()

    poll_on_simulator(tmp_path, faulty_bank(), then=then)
    assert seen["slow_ok"] is Quality.GOOD
    snap = seen["snap"]
    assert snap[PointRef("cell.voltage", 1, 2)].quality is Quality.COMM_FAIL
    others = [r for ref, r in snap.items() if ref.point == "cell.voltage" and ref.cell != 2]
    assert len(others) == 3 and all(r.quality is Quality.GOOD for r in others), "late replies hurt nobody else"
    assert seen["c1"]["timeouts"] - seen["c0"]["timeouts"] == 3  # tried twice, then once (its last cycle failed)
    assert seen["c1"]["crc_errors"] == 0


def test_an_unplugged_bus_loses_every_device_and_recovers_by_itself(tmp_path):
    seen = {}

    async def then(gw):
        events = Events(gw)
        sim, engine = gw.simulator, gw.engine
        sim.set_fault("bus1", None, "unplugged")
        for _ in range(2):
            await engine.poll_once()
        seen["lost"] = engine.counters()["bus1"]
        seen["online"] = gw.store.value(PointRef("gateway.bus_devices_online", channel=1))
        seen["volts"] = [r.quality for ref, r in gw.store.snapshot().items() if ref.point == "cell.voltage"]
        sim.set_fault("bus1", None, "none")
        await engine.poll_once()
        seen["back"] = engine.counters()["bus1"]
        seen["events"] = list(events.items)

    cfg = faulty_bank()
    cfg["buses"][0]["timeout_ms"] = 50
    gw = poll_on_simulator(tmp_path, cfg, then=then)
    assert seen["lost"]["devices_lost"] == 7 and seen["online"] == 0.0
    assert seen["volts"] == [Quality.COMM_FAIL] * 4
    assert sorted(a for a, lost, _ in seen["events"] if lost) == [1, 2, 3, 4, 5, 200, 201]
    assert sorted(a for a, lost, _ in seen["events"] if not lost) == [1, 2, 3, 4, 5, 200, 201]
    assert seen["back"]["devices_lost"] == 0
    assert gw.store.value(PointRef("gateway.bus_devices_online", channel=1)) == 7.0
    # the first cycle: one try each (no device answered: no retries); the second: the bus got no answer at all
    # the cycle before, so after three silent devices the others count as failed without a try
    assert gw.store.value(PointRef("gateway.bus_timeouts", channel=1)) == seen["back"]["timeouts"] == 7 + 3


def test_a_device_lost_is_retried_only_every_lost_retry_s(tmp_path):
    async def then(gw):
        engine, bs = gw.engine, gw.engine.buses["bus1"]
        gw.simulator.set_fault("bus1", 3, "no_answer")
        for _ in range(2):
            await engine._poll_bus(bs, slow=True)
        before = bs.transport.counters.requests
        await engine._poll_bus(bs, slow=True)  # what the bus loop does: the lost sensor is skipped
        return bs.transport.counters.requests - before

    result = {}

    async def run(gw):
        result["requests"] = await then(gw)

    poll_on_simulator(tmp_path, faulty_bank(lost_retry_s=60), then=run)
    assert result["requests"] == 7, "the six healthy devices only (the I/O module takes two reads)"


def test_a_sensor_that_never_answered_reports_comm_fail_without_a_value(tmp_path):
    async def then(gw):
        gw.simulator.set_fault("bus1", 4, "no_answer")
        await gw.engine.poll_once()

    gw = poll_on_simulator(tmp_path, faulty_bank(), cycles=0, then=then)
    r = gw.store.get(PointRef("cell.voltage", 1, 3))
    assert r.quality is Quality.COMM_FAIL and r.value is None
    assert gw.store.get(PointRef("cell.voltage", 1, 2)).quality is Quality.GOOD
    assert gw.engine.counters()["bus1"]["devices_lost"] == 0, "one failed cycle is not yet a lost device"


def test_out_of_range_and_not_available_readings(tmp_path):
    async def then(gw):
        model = gw.simulator.model
        model.set_override("cell.voltage", 16.2, 1, 1)  # above the BCS-12's 15.6 V
        model.set_override("cell.temperature", None, 1, 2)  # the sensor sends its not-available code
        await gw.engine.poll_once()

    gw = poll_on_simulator(tmp_path, faulty_bank(), then=then)
    hot = gw.store.get(PointRef("cell.voltage", 1, 1))
    assert hot.quality is Quality.OUT_OF_RANGE and hot.value == pytest.approx(16.2, abs=0.01)
    na = gw.store.get(PointRef("cell.temperature", 1, 2))
    assert na.quality is Quality.OUT_OF_RANGE and na.value is None
    assert gw.store.get(PointRef("cell.voltage", 1, 2)).quality is Quality.GOOD


def test_bus_counters_are_published_as_gateway_points(tmp_path):
    gw = poll_on_simulator(tmp_path, small_bank(strings=2, cells=4), cycles=2)
    for ch, name in ((1, "bus1"), (2, "bus2")):
        c = gw.engine.counters()[name]
        assert gw.store.value(PointRef("gateway.bus_requests", channel=ch)) == c["requests"] > 0
        assert gw.store.value(PointRef("gateway.bus_devices", channel=ch)) == c["devices"]
        assert gw.store.value(PointRef("gateway.bus_poll_duration", channel=ch)) > 0
    assert gw.store.value(PointRef("gateway.poll_cycles")) == 4


# -- readdressed sensors and discovery -----------------------------------------------------------------------
def test_a_readdressed_sensor_is_found_and_adopted_by_discovery(tmp_path):
    ref = PointRef("cell.voltage", 1, 3)  # configured at address 4
    seen = {}

    async def then(gw):
        sim, engine = gw.simulator, gw.engine
        sim.readdress("bus1", 4, 130)  # the sensor was replaced by one set to address 130
        for _ in range(2):
            await engine.poll_once()
        seen["lost"] = gw.store.get(ref).quality
        report = await engine.discover("1-6,129-131,200-201")
        seen["report"] = report["bus1"]
        await engine.poll_once()
        seen["back"] = gw.store.get(ref)
        seen["truth"] = sim.model.value("cell.voltage", 1, 3)
        seen["status"] = engine.counters()["bus1"]["discovery"]

    poll_on_simulator(tmp_path, faulty_bank(), then=then)
    assert seen["lost"] is Quality.COMM_FAIL
    rep = seen["report"]
    assert rep.missing == (4,) and rep.unconfigured == {130: "bm-bcs-12"} and rep.adopted == {4: 130}
    assert rep.matching == (1, 2, 3, 5, 200, 201) and rep.wrong_model == {}
    assert seen["back"].quality is Quality.GOOD and seen["back"].value == pytest.approx(seen["truth"], rel=0.003)
    assert seen["status"]["adopted"] == {"4": 130}


def test_a_discovery_beside_the_polls_leaves_the_bus_counters_to_the_polls(tmp_path):
    """Silence from ids nobody uses is what a scan expects, not a fault; the polls that go on meanwhile are
    counted all the same (the counters were once put back as they were before the scan, the polls' with them)."""
    seen = {}

    def health(engine) -> tuple[int, int, int, int]:
        c = engine.counters()["bus1"]
        return c["requests"], c["timeouts"], c["crc_errors"], c["exceptions"]

    async def then(gw):
        engine = gw.engine
        before = health(engine)
        await engine.poll_once()
        alone = health(engine)
        report, _ = await asyncio.gather(engine.discover("1-6,129-131,200-201"), engine.poll_once())
        seen.update(poll=tuple(b - a for a, b in zip(before, alone, strict=True)),
                    beside=tuple(b - a for a, b in zip(alone, health(engine), strict=True)), report=report["bus1"])

    poll_on_simulator(tmp_path, faulty_bank(), then=then)
    assert seen["report"].matching == (1, 2, 3, 4, 5, 200, 201), "the scan ran (and 6, 129-131 were silent)"
    assert seen["poll"][0] > 0 and seen["poll"][1:] == (0, 0, 0)
    assert seen["beside"] == seen["poll"], "a poll beside the scan is counted as a poll alone, the scan not at all"


def test_discovery_reports_a_wrong_model_and_does_not_adopt_ambiguous_sensors(tmp_path):
    got = {}

    async def run(gw):
        sim = gw.simulator
        sim.readdress("bus1", 3, 140)
        sim.readdress("bus1", 4, 141)  # two cell sensors moved: which is which cannot be known
        sim.readdress("bus1", 201, 200)  # the I/O module now sits where the charger monitor is configured
        got["rep"] = (await gw.engine.discover("1-5,140-141,200-201"))["bus1"]
        got["addresses"] = [d.address for d in gw.engine.buses["bus1"].devices]

    poll_on_simulator(tmp_path, faulty_bank(), cycles=0, then=run)
    rep = got["rep"]
    assert rep.missing == (3, 4, 201) and rep.adopted == {}
    assert rep.unconfigured == {140: "bm-bcs-12", 141: "bm-bcs-12"}
    assert rep.wrong_model == {200: "bm-io"} and rep.matching == (1, 2, 5)
    assert got["addresses"] == [1, 2, 3, 4, 5, 200, 201], "nothing re-pointed on a guess"


def test_discovery_at_start_up_when_the_config_asks(tmp_path, caplog):
    cfg = faulty_bank()
    cfg["gateway"]["discovery"] = {"on_start": True, "ids": "1-8,200-202"}
    seen = {}

    async def then(gw):
        gw.simulator.readdress("bus1", 5, 7)
        await gw.engine.start()
        bs = gw.engine.buses["bus1"]
        for _ in range(200):
            if bs.discovery is not None and gw.store.get(PointRef("cell.voltage", 1, 4)) is not None:
                break
            await asyncio.sleep(0.02)
        seen["discovery"] = bs.discovery
        seen["cell4"] = gw.store.get(PointRef("cell.voltage", 1, 4))

    caplog.set_level("INFO")
    poll_on_simulator(tmp_path, cfg, cycles=0, then=then)
    assert seen["discovery"]["adopted"] == {"5": 7}, seen
    assert seen["cell4"].quality is Quality.GOOD
    assert "configured at address 5 now answers at 7" in caplog.text


# -- writes --------------------------------------------------------------------------------------------------
def test_write_point_drives_the_alarm_relay_and_refuses_the_rest(tmp_path):
    seen = {}

    async def then(gw):
        relay = PointRef("io.do", channel=1)
        await gw.engine.write_point(relay, 1)
        seen["model"] = gw.simulator.model.do_state
        seen["store"] = gw.store.value(relay)
        for ref in (PointRef("cell.voltage", 1, 1), PointRef("io.do", channel=2)):
            with pytest.raises(WriteError, match="not writable"):
                await gw.engine.write_point(ref, 1)
        gw.simulator.set_fault("bus1", 201, "no_answer")
        with pytest.raises(WriteError, match="failed"):
            await gw.engine.write_point(relay, 0)
        await gw.engine.stop()
        with pytest.raises(WriteError, match="not open"):
            await gw.engine.write_point(relay, 0)

    poll_on_simulator(tmp_path, faulty_bank(), then=then)
    assert seen == {"model": 1, "store": 1.0}


def test_a_cycle_publishes_its_readings_together_in_order_and_all_by_its_end(tmp_path):
    """Each store write wakes every listener (alarms, history, web, analytics): a bus's readings go in together,
    not one write per sensor; none is lost or reordered, and a sensor that fails (retried after the others)
    has its STALE published after the values read before it."""
    seen = {}

    async def then(gw):
        batches = []
        gw.store.subscribe(lambda batch: batches.append(list(batch)))
        gw.simulator.set_fault("bus1", 3, "no_answer")  # cell 2's sensor, between cells 1 and 3
        before = gw.store.snapshot()
        await gw.engine.poll_once(slow=False)
        seen["store"] = gw.store.snapshot()
        seen["before"] = before
        seen["batches"] = batches

    poll_on_simulator(tmp_path, faulty_bank(), then=then)
    volts = [PointRef("cell.voltage", 1, c) for c in (1, 2, 3, 4)]
    events = [(n, ref, r.quality) for n, batch in enumerate(seen["batches"]) for ref, r in batch if ref in volts]
    writes = {n for n, _, _ in events}
    assert len(writes) <= 3, f"{len(writes)} writes for 4 cell voltages"
    order = [(str(ref), q.value) for _, ref, q in events]
    assert order == [("cell.voltage string=1 cell=1", "GOOD"), ("cell.voltage string=1 cell=3", "GOOD"),
                     ("cell.voltage string=1 cell=4", "GOOD"), ("cell.voltage string=1 cell=2", "STALE")]
    store, before = seen["store"], seen["before"]
    for ref in (volts[0], volts[2], volts[3]):  # all in the store when the cycle is over, newer than before
        assert store[ref].quality is Quality.GOOD and store[ref].ts > before[ref].ts
    assert store[volts[1]].quality is Quality.STALE and store[volts[1]].ts == before[volts[1]].ts


# -- the port ------------------------------------------------------------------------------------------------
def test_rs485_mode_on_a_port_that_refuses_it_is_a_clear_error_not_a_crash(tmp_path, caplog):
    """A pseudo-terminal refuses TIOCSRS485 like a USB adapter without direction control would."""
    cfg = faulty_bank()
    cfg["buses"][0].update(rs485=True, timeout_ms=30)
    caplog.set_level("ERROR")
    gw = poll_on_simulator(tmp_path, cfg, cycles=3)
    c = gw.engine.counters()["bus1"]
    assert not c["open"] and "does not support the kernel's RS485 mode" in c["open_error"]
    assert "rs485: false" in c["open_error"]
    assert caplog.text.count("does not support the kernel's RS485 mode") == 1, "said once, not every cycle"
    assert c["devices_lost"] == 7 and c["requests"] == 0
    r = gw.store.get(PointRef("cell.voltage", 1, 1))
    assert r.quality is Quality.COMM_FAIL and r.value is None


def test_an_adapter_that_disappears_is_reported_and_does_not_spin(tmp_path, caplog):
    seen = {}

    async def then(gw):
        sb = gw.simulator.buses["bus1"]
        os.close(sb.master)  # the far end of the pseudo-terminal vanishes, like an unplugged USB adapter
        sb.master = os.open("/dev/null", os.O_RDONLY)  # so the simulator's own close does not fail
        await asyncio.sleep(0.05)
        for _ in range(3):
            await gw.engine.poll_once()
        seen["counters"] = gw.engine.counters()["bus1"]

    cfg = faulty_bank()
    cfg["buses"][0]["timeout_ms"] = 30
    poll_on_simulator(tmp_path, cfg, then=then)
    c = seen["counters"]
    assert c["devices_lost"] == 7 and not c["open"]
    assert c["open_error"].startswith(f"bus bus1: cannot open {c['port']}")
    assert caplog.text.count(f"cannot open {c['port']}") == 1, "said once, not every cycle"
    assert c["timeouts"] <= 2, "the port is closed, not hammered"


def test_the_transport_drops_a_late_reply_of_another_unit(tmp_path):
    """A slow slave's reply that arrives during the next transaction is dropped, not taken as the answer."""
    import threading
    import tty

    from gateway.modbus.rtu import read_request, with_crc
    from gateway.modbus.transport import RtuTransport
    from gateway.topology import BusConfig

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)

    def peer():
        request = os.read(master, 64)
        stray = with_crc(bytes([9, 4, 2, 0x12, 0x34]))  # unit 9's late answer
        os.write(master, stray[:4])
        os.write(master, stray[4:] + with_crc(bytes([request[0], 4, 2, 0x00, 0x2A])))

    t = threading.Thread(target=peer)
    t.start()

    async def go():
        tr = RtuTransport(BusConfig("b", os.ttyname(slave), baud=115200, timeout_ms=500))
        tr.open()
        try:
            return await tr.transact(read_request(5, 4, 0, 1)), tr.counters
        finally:
            tr.close()

    try:
        words, counters = asyncio.run(go())
    finally:
        t.join()
        os.close(master)
        os.close(slave)
    assert words == [42] and counters.stray_replies == 1 and counters.crc_errors == 0


def test_a_fast_cycle_says_nothing_about_a_device_with_only_slow_values(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "ohm-only.yaml").write_text(
        "{model: O-1, vendor: Acme, family: acme_o, scope: cell, registers: "
        "[{point: cell.ohmic, table: input, address: 2, type: uint32, scale: 0.000001, poll: slow}]}\n")
    cfg = one_bus({1: [{"profile": "ohm-only", "address": 2, "count": 2}]}, cells=2)
    cfg["plugins"] = {"profile_dirs": [str(profiles)]}
    cfg["gateway"] = {"poll": {"stale_after_cycles": 1}}
    cfg["buses"][0]["timeout_ms"] = 30
    seen = {}

    async def then(gw):
        events = Events(gw)
        gw.simulator.set_fault("bus1", 2, "no_answer")
        await gw.engine.poll_once(slow=True)
        await gw.engine.poll_once(slow=False)
        await gw.engine.poll_once(slow=False)
        seen["q"] = gw.store.get(PointRef("cell.ohmic", 1, 1)).quality
        seen["events"] = list(events.items)

    poll_on_simulator(tmp_path, cfg, then=then)
    assert seen["q"] is Quality.COMM_FAIL
    assert [(a, lost) for a, lost, _ in seen["events"]] == [(2, True)], "no false 'answers again'"


def test_poll_settings_applied_while_running_take_effect_at_once(tmp_path):
    """A config reload hands the engine its new gateway.poll section: a shorter slow period applies from
    now, not after the hour the old one still had to run."""
    from tests.support import GatewayThread, write_config

    path = write_config(tmp_path, base=small_bank(strings=1, cells=2),
                        overrides={"gateway": {"poll": {"slow_s": 3600}}})
    with GatewayThread(path) as gt:
        gw = gt.gateway
        ref = PointRef("cell.ohmic", 1, 1)
        gt.wait_for(lambda: gw.store.get(ref) is not None, timeout=20, what="the first ohmic reading")
        first = gw.store.get(ref).ts

        async def reload():
            gw.engine.apply_config({**gw.config.data["gateway"]["poll"], "slow_s": 1, "stale_after_cycles": 5})

        gt.call(reload())
        assert (gw.engine.slow_s, gw.engine.stale_after) == (1.0, 5)
        gt.wait_for(lambda: gw.store.get(ref).ts > first, timeout=20, what="the ohmic value read again")


def test_a_batch_of_the_sweep_reaches_the_store_in_one_write(tmp_path):
    """At the wire's pace a batch takes about PUBLISH_S, so its first devices' readings have waited that long
    when the batch comes back: they once went to the store one device at a time before the rest of the batch
    followed.  Each store write wakes every listener; a batch is one write."""
    from gateway.app import Gateway
    from tests.coretools import running
    from tests.support import write_config

    path = write_config(tmp_path, {"simulator": {"wire_time": True}}, base=small_bank(strings=1, cells=40))
    gw = Gateway(path)
    seen = {}
    with running(gw):
        async def go():
            engine = gw.engine
            try:
                await engine.poll_once(slow=True)
                bs = engine.buses["bus1"]
                sweep = [r for ds in bs.devices if (r := engine._reads(ds, False, 0)) is not None]
                seen["batches"] = len(engine._batches(bs, sweep))
                writes: list[int] = []
                put_many = gw.store.put_many

                def counting(batch, *args, **kwargs):
                    cells = {ref.cell for ref, _ in batch if ref.point == "cell.voltage"}
                    if cells:
                        writes.append(len(cells))
                    return put_many(batch, *args, **kwargs)

                gw.store.put_many = counting
                await engine.poll_once(slow=False)
                seen["writes"] = writes
            finally:
                await engine.stop()

        asyncio.run(go())
    assert seen["batches"] >= 2, "forty sensors at 115200 baud make more than one batch"
    assert len(seen["writes"]) == seen["batches"] and sum(seen["writes"]) == 40, seen
