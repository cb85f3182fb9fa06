"""The engine's poll schedule and its self-metrics: cycles on a fixed grid, missed and late cycles counted,
shown in the status and in every face through the point map (gateway.bus_cycles*, gateway.bus_cycle_lag)."""
from __future__ import annotations

import asyncio
import time

import pytest

from gateway.app import Gateway
from gateway.exposition import render_metrics
from gateway.points import PointRef
from tests.support import GatewayThread, small_bank, write_config


def offline(tmp_path) -> Gateway:
    path = write_config(tmp_path, base=small_bank(strings=2, cells=2))
    return Gateway(path, simulator=False, port_overrides={"bus1": "(not opened)", "bus2": "(not opened)"})


def test_a_cycle_on_time_is_neither_late_nor_missed_and_a_whole_skipped_slot_is_missed(tmp_path, caplog):
    gw = offline(tmp_path)
    engine, bs = gw.engine, gw.engine.buses["bus1"]
    engine.fast_s = 5.0
    assert engine._schedule(bs, 100.2, 100.0) == 100.0  # 0.2 s: within a tenth of the interval
    assert (bs.missed, bs.late) == (0, 0)
    assert engine._schedule(bs, 105.9, 105.0) == 105.0  # 0.9 s after its slot: late, still in it
    assert (bs.missed, bs.late) == (0, 1)
    # the bus was busy (or the loop blocked) through two whole slots: they are missed, the cycle runs in the
    # third one, 1 s after it began (late as well)
    assert engine._schedule(bs, 121.0, 110.0) == pytest.approx(120.0)
    assert (bs.missed, bs.late) == (2, 2)
    assert bs.max_lag == pytest.approx(11.0) and bs.last_lag == pytest.approx(11.0)
    c = engine.counters()["bus1"]
    assert (c["cycles_missed"], c["cycles_late"], c["max_lag_s"]) == (2, 2, 11.0)
    # a bus that keeps missing (more devices than fast_s allows) says so once per 10 minutes, not every cycle
    engine._schedule(bs, 131.0, 125.0)
    engine._schedule(bs, 731.0, 725.0)
    warnings = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert len(warnings) == 2 and bs.missed == 4, warnings
    assert warnings[0].startswith("bus bus1: 2 poll cycle(s) missed") and "fast_s (5 s)" in warnings[0]
    assert warnings[1].startswith("bus bus1: 2 poll cycle(s) missed since the last warning")


def test_a_blocked_event_loop_shows_as_missed_cycles_in_the_status_and_the_metrics(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=2, cells=2))  # fast_s 0.5
    with GatewayThread(path, services=False) as gt:
        gw = gt.gateway
        gt.wait_for(lambda: all(c["cycles"] >= 2 for c in gw.engine.counters().values()), what="two cycles")
        assert all(c["cycles_missed"] == 0 for c in gw.engine.counters().values())
        before = {name: c["cycles"] for name, c in gw.engine.counters().items()}

        async def block() -> None:
            # a CPU hog in the loop: over three slots of 0.5 s go by with no cycle started
            time.sleep(1.6)  # noqa: ASYNC251 blocking the event loop is what this test does

        gt.call(block())
        gt.wait_for(lambda: all(c["cycles"] >= before[n] + 2 for n, c in gw.engine.counters().items()),
                    what="polling to go on")
        counters = gw.engine.counters()
        for ch, name in ((1, "bus1"), (2, "bus2")):
            c = counters[name]
            assert c["cycles_missed"] >= 1 and c["max_lag_s"] >= 0.5, c
            gt.wait_for(lambda ch=ch, name=name: gw.store.value(PointRef("gateway.bus_cycles_missed", channel=ch)) ==
                        gw.engine.counters()[name]["cycles_missed"], what="the published counter")
        text = gt.call(asyncio.to_thread(lambda: render_metrics(gw)[0].decode()))
    assert 'bms_gateway_bus_cycles_missed_total{bus="1"}' in text
    assert 'bms_gateway_bus_cycles_total{bus="2"}' in text
    assert 'bms_gateway_bus_cycle_lag_seconds{bus="1"}' in text
