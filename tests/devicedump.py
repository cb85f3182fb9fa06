"""Device fixtures as register dumps, one file per model (plugins/<family>/tests/testdata/<profile>.json).

A dump holds the registers a device returned and the readings they must decode to.  ``check_dump`` plans the
device's reads with the real block planner and decodes each block with the engine's own decoder (the same
code that decodes replies on the wire), so a dump also pins the profile's register layout.

    {"profile": "bm-bcs-12", "source": "...", "cells": 1,
     "cases": [{"name": "...", "registers": {"input": {"0": 13452, ...}, "holding": {...}},
                "expected": [{"point": "cell.voltage", "value": 13.452, "quality": "GOOD"}, ...]}]}

Register addresses are decimal strings; a register missing from a dump reads as 0.  ``cell`` (concentrator)
and ``channel`` (I/O) in an expected reading pick one of several points of the same family.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.dump import decode_registers
from gateway.profiles import PROFILES_DIR, load_profiles
from tests.coretools import running
from tests.support import write_config

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def all_profiles():
    return load_profiles([PROFILES_DIR, *sorted(PLUGINS.glob("*/profiles"))])


def decode_dump(profile, registers: dict, cells: int = 1) -> dict:
    """Decode ``registers`` as the engine would: {(point, cell, channel): Reading} (``bmsgw dump`` fills a
    dump's expected readings with the same function)."""
    return decode_registers(profile, registers, cells)


def check_dump(path: Path) -> None:
    dump = json.loads(path.read_text())
    profile = all_profiles()[dump["profile"]]
    assert dump["profile"] == path.stem
    assert dump.get("source"), "say where the dump came from"
    for case in dump["cases"]:
        got = decode_dump(profile, case["registers"], dump.get("cells", 1))
        for exp in case["expected"]:
            key = (exp["point"], exp.get("cell"), exp.get("channel"))
            assert key in got, f"{path.name} {case['name']}: no reading for {key}"
            reading = got[key]
            where = f"{path.name} {case['name']} {key}"
            assert reading.quality.value == exp.get("quality", "GOOD"), where
            if exp["value"] is None:
                assert reading.value is None, where
            else:
                assert reading.value == pytest.approx(exp["value"], rel=1e-9, abs=1e-12), where


def poll_on_simulator(tmp_path: Path, config: dict, cycles: int = 1, then=None):
    """A gateway on the built-in simulator (no wire-time pacing), polled ``cycles`` times through the
    pseudo-terminals; ``then(gw)``, a coroutine function, runs afterwards in the same loop.  Returns the
    stopped gateway (its store, counters and simulator model stay readable)."""
    path = write_config(tmp_path, base=config)
    from gateway.app import Gateway

    gw = Gateway(path)
    with running(gw):

        async def go():
            try:
                for _ in range(cycles):
                    await gw.engine.poll_once(slow=True)
                if then is not None:
                    await then(gw)
            finally:
                await gw.engine.stop()

        asyncio.run(go())
    return gw


def assert_matches_truth(gw, point: str, rel: float = 0.0, abs_: float = 0.0, refs=None) -> int:
    """Every reading of ``point`` is GOOD and within tolerance of the simulator's ground truth; returns how
    many were checked."""
    model = gw.simulator.model
    snap = gw.store.snapshot()
    refs = refs or list(gw.pointmap.refs(point))
    assert refs, f"no {point} points"
    for ref in refs:
        reading = snap.get(ref)
        assert reading is not None and reading.quality.value == "GOOD", f"{ref}: {reading}"
        truth = model.value(ref.point, ref.string, ref.cell, ref.channel)
        assert reading.value == pytest.approx(truth, rel=rel, abs=abs_), str(ref)
    return len(refs)


def one_bus(devices_by_string: dict[int, list[dict]], cells: int = 4, nominal: int = 12, bank: Sequence[dict] = (),
            baud: int = 115200) -> dict:
    """A config with one simulated bus: strings of ``cells`` units with the given devices, and bank devices."""
    return {"buses": [{"name": "bus1", "port": "sim", "baud": baud, "timeout_ms": 200, "retries": 1}],
            "strings": [{"id": sid, "cells": cells, "battery": {"nominal_voltage": nominal},
                         "devices": [dict(d, bus="bus1") for d in devs]}
                        for sid, devs in devices_by_string.items()],
            "bank": {"devices": [dict(d, bus="bus1") for d in bank]},
            # these tests prove the register path (encoding, decoding, block reads) against the simulator's
            # ground truth: its sensors are perfect here; the sensors' datasheet errors are proven in
            # tests/test_realism.py and tests/test_strings.py
            "simulator": {"sensor_errors": False}}
