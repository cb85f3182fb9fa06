"""The lived-in demo: the first start of the default (simulated) config back-fills simulated history through the
recording, the analytics and the alarms, once per state folder, never for a real bank (gateway.backfill)."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from gateway import backfill as bf
from gateway.alarms.manager import LOG_FILE
from gateway.analytics import analytics_for, open_state
from gateway.app import Gateway
from gateway.cliargs import offline_gateway
from gateway.history import history_for
from gateway.points import PointRef
from tests.support import GatewayThread, write_config

DAY = 86400.0


def demo_config(tmp_path, days: float = 2, **over):
    # the default bank (4 x 120 2 V cells); a 30-year horizon: batteries a few days old get a dated forecast too
    overrides = {"simulator": {"backfill_days": days}, "analytics": {"forecast": {"horizon_years": 30}}}
    for k, v in over.items():
        overrides.setdefault(k, {}).update(v)
    return write_config(tmp_path, overrides)


def test_the_first_start_back_fills_history_through_the_real_paths_and_a_restart_does_not_again(tmp_path):
    path = demo_config(tmp_path)
    before = time.time()
    with GatewayThread(path, timeout=600) as gt:
        gw = gt.gateway
        status = gw.status()["backfill"]
        assert status["state"] == "done" and status["days"] == 2 and status["percent"] == 100
        # a forecast per battery, published by the running analytics from the back-filled state
        eol = [PointRef("cell.eol_date", s.id, c) for s in gw.topology.strings for c in range(1, s.cells + 1)]
        gt.wait_for(lambda: all(gw.store.value(r) is not None for r in eol), what="a forecast for every battery")
        engine = analytics_for(gw)
        assert engine is not None and len(engine.fc_pub) == 480
        # discharges, one of them a capacity test
        events = engine.state.events()
        assert events and any(e.get("capacity_test") for e in events)
        assert all(e["start"] < before for e in events)
        # trend points older than the start, from the history the web page and REST read
        db = history_for(gw)
        assert db is not None
        series = db.query("cell.voltage", string=2, cell=37, start=before - 3 * DAY, end=before)
        assert len(series.t) >= 5 and min(series.t) < before - DAY
        # the alarm log: the discharges and the thermal runaway, raised and cleared in simulated time
        log = gw.service("alarms").manager.history(1000)
        rules = {r["rule"] for r in log}
        assert {"string_on_battery", "string_thermal_runaway"} <= rules, rules
        assert all(r["raised"] < before for r in log if r["rule"] == "string_thermal_runaway")
        # the simulator goes on with the same batteries, as old as the history says
        assert gw.simulator.model.years() == pytest.approx(2 / 365.25, abs=0.01)
        assert gw.simulator.model.battery(2, 37).temp_offset > 3.5  # the battery drying out, still hot
    marker = json.loads((tmp_path / "var" / bf.MARKER).read_text())
    assert marker["state"] == "done" and not (tmp_path / "var" / bf.STAGING).exists()

    # a restart: no second back-fill, the same installation date
    with GatewayThread(path, timeout=120) as gt:
        status = gt.gateway.status()["backfill"]  # what it did at the first start
        assert status["state"] == "done" and status["simulated_until"] == marker["summary"]["simulated_until"]
        assert gt.gateway.backfill_plan.epoch == marker["epoch"]
        state = open_state(gt.gateway.config, readonly=True)
        try:
            assert len(state.events()) == len(events)
        finally:
            state.close()


def test_an_interrupted_back_fill_starts_again_from_scratch(tmp_path):
    path = demo_config(tmp_path, days=1)
    gw = Gateway(path)
    p = gw.backfill_plan
    assert p is not None and p.needed
    job = bf.Backfill(gw.config, p)
    job.cancel()  # SIGTERM/Ctrl-C at the first step
    with pytest.raises(bf.BackfillCancelled, match="the next start begins it again"):
        job.run()
    var = tmp_path / "var"
    assert json.loads((var / bf.MARKER).read_text())["state"] == "running"
    assert not (var / bf.STAGING).exists() and not (var / "history.sqlite").exists()
    again = Gateway(path).backfill_plan
    assert again is not None and again.needed


def test_a_stop_request_ends_the_back_fill_of_a_starting_gateway(tmp_path):
    gw = Gateway(demo_config(tmp_path, days=30))

    async def main() -> None:
        task = asyncio.create_task(gw.start())
        while gw.backfill_status is None:  # noqa: ASYNC110 set by start(); nothing to await
            await asyncio.sleep(0.01)
        gw.cancel_backfill()
        with pytest.raises(bf.BackfillCancelled):
            await task

    asyncio.run(main())
    assert json.loads((tmp_path / "var" / bf.MARKER).read_text())["state"] == "running"


def test_a_state_folder_with_a_past_of_its_own_is_not_back_filled(tmp_path):
    path = demo_config(tmp_path)
    var = tmp_path / "var"
    var.mkdir()
    (var / LOG_FILE).write_bytes(b"an alarm log")  # the gateway ran here before
    p = Gateway(path).backfill_plan
    assert p is not None and not p.needed and "alarms" in p.skip_reason
    asyncio.run(Gateway(path).backfill())
    marker = json.loads((var / bf.MARKER).read_text())
    assert marker["state"] == "skipped" and marker["epoch"] == pytest.approx(p.epoch, abs=60)


def test_never_for_a_real_bank_nor_with_the_back_fill_off(tmp_path):
    buses = [{"name": f"bus{i}", "port": "sim" if i > 1 else "/dev/ttyS9", "baud": 115200} for i in range(1, 5)]
    real = offline_gateway(write_config(tmp_path, {"simulator": {"backfill_days": 540}, "buses": buses})).config
    assert "bus1 is a real serial port" in (bf.source_problem(real) or "")
    assert bf.plan(real) is None
    off = offline_gateway(write_config(tmp_path, {"simulator": {"backfill_days": 0}})).config
    assert bf.plan(off) is None
    real_ports = [{**b, "port": f"/dev/ttyS{i}"} for i, b in enumerate(buses)]
    packaged = offline_gateway(write_config(tmp_path, {"simulator": {"enabled": False, "backfill_days": 540},
                                                       "buses": real_ports}, fast=False)).config
    assert bf.plan(packaged) is None
