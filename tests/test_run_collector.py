"""`bmsgw run` collects the garbage collector's youngest generation less often (gateway/cli.py,
RUN_COLLECTOR_THRESHOLDS), from before it builds anything."""
from __future__ import annotations

import gc

import pytest

from gateway.cli import RUN_COLLECTOR_THRESHOLDS, main
from tests.support import small_bank, write_config


class _Built(Exception):
    """Raised where the gateway would be built: the test has seen what it needs."""


def test_bmsgw_run_sets_the_collector_thresholds_before_building_the_gateway(monkeypatch, tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=4))
    seen: dict[str, tuple[int, ...]] = {}

    def building(config_file):
        seen["thresholds"] = gc.get_threshold()
        raise _Built

    monkeypatch.setattr("gateway.app.Gateway", building)
    monkeypatch.setattr("gateway.libc.limit_malloc_arenas", lambda count=1: True)  # (this process's allocator)
    before = gc.get_threshold()
    try:
        with pytest.raises(_Built):
            main(["run", "--config", str(path)])
    finally:
        gc.set_threshold(*before)
    assert seen["thresholds"] == RUN_COLLECTOR_THRESHOLDS
    assert seen["thresholds"][0] >= 10 * 700, "the youngest generation: at least 10x CPython's default interval"
