"""Analytics inside the running gateway: derived points published from polled data, a discharge seen on the
real polling path, and the `bmsgw battery` / `bmsgw maintenance` commands acting on the running gateway."""
from __future__ import annotations

import subprocess

import pytest

from gateway.points import PointRef, Quality
from tests.support import GatewayThread, small_bank, write_config


def bmsgw(venv_bin, env, *args):
    return subprocess.run([str(venv_bin / "bmsgw"), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=60)


def test_analytics_publish_derived_points_in_the_gateway(tmp_path, venv_bin, bmsgw_env):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=6),
                        overrides={"analytics": {"interval_s": 0.2}, "history": {"enabled": False}})
    with GatewayThread(path) as gt:
        gw = gt.gateway
        def v(p, s=1, c=None):
            return gw.store.value(PointRef(p, s, c))

        gt.wait_for(lambda: v("string.cell_voltage_avg") is not None and v("string.state") == 1, timeout=30,
                    what="string aggregates and state")
        volts = [v("cell.voltage", 1, c) for c in range(1, 7)]
        assert v("string.cell_voltage_min") == pytest.approx(min(volts), abs=0.01)
        assert v("cell.voltage_average_deviation", 1, 2) == pytest.approx(volts[1] - sum(volts) / 6, abs=0.02)
        assert v("string.soc") == 100.0 and v("string.on_battery_time") == 0.0
        # no baseline yet: the deviation is published as not available, not as a verdict
        r = gw.store.get(PointRef("cell.ohmic_baseline_deviation", 1, 1))
        assert r.quality is Quality.GOOD and r.value is None
        assert gw.status()["analytics"]["strings"][1]["state"] == 1

        # a user sets a baseline from the command line while the gateway runs
        p = bmsgw(venv_bin, bmsgw_env, "battery", "baseline", "--config", path, "--string", 1, "--cell", 2,
                  "--ohmic", 0.005)
        assert p.returncode == 0, p.stderr
        gt.wait_for(lambda: v("cell.ohmic_baseline", 1, 2) == 0.005, timeout=15, what="baseline picked up")
        gt.wait_for(lambda: v("cell.ohmic_baseline_deviation", 1, 2) is not None, timeout=15, what="deviation")
        assert v("cell.ohmic_baseline_deviation", 1, 2) == pytest.approx((v("cell.ohmic", 1, 2) / 0.005 - 1) * 100,
                                                                          abs=2)
        # and replaces the battery: its baseline is gone again
        p = bmsgw(venv_bin, bmsgw_env, "battery", "replace", "--config", path, "--string", 1, "--cell", 2,
                  "--reason", "cracked case")
        assert p.returncode == 0 and "replacement recorded" in p.stdout
        gt.wait_for(lambda: v("cell.ohmic_baseline", 1, 2) is None, timeout=15, what="baseline reset")

        # the mains fail: the simulated string discharges, seen through the real polling path
        gw.simulator.model.set_mode(1, "discharge", 25.0)
        gt.wait_for(lambda: v("string.state") == 3, timeout=20, what="discharging state")
        gt.wait_for(lambda: (v("string.on_battery_time") or 0) > 0.5, timeout=20, what="on-battery time")
        assert v("string.runtime_remaining") > 3600 and v("string.soc") < 100.0

    p = bmsgw(venv_bin, bmsgw_env, "battery", "list", "--config", path, "--string", 1)
    assert p.returncode == 0 and "cracked case" in p.stdout
    # battery 2's baseline was reset by the replacement: the list says "-", not "nan"
    row = next(line.split() for line in p.stdout.splitlines() if line.split()[:2] == ["1", "2"])
    assert row[2] == "-" and "nan" not in p.stdout
    p = bmsgw(venv_bin, bmsgw_env, "maintenance", "done", "visual_inspection", "--config", path, "--note", "clean")
    assert p.returncode == 0
    p = bmsgw(venv_bin, bmsgw_env, "maintenance", "list", "--config", path)
    assert "visual_inspection" in p.stdout and "clean" in p.stdout


def test_battery_commands_refuse_bad_input(tmp_path, venv_bin, bmsgw_env):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=4))
    p = bmsgw(venv_bin, bmsgw_env, "battery", "replace", "--config", path, "--string", 3, "--cell", 1,
              "--reason", "x")
    assert p.returncode == 2 and "no string 3" in p.stderr
    p = bmsgw(venv_bin, bmsgw_env, "battery", "replace", "--config", path, "--string", 1, "--cell", 9,
              "--reason", "x")
    assert p.returncode == 2 and "batteries 1..4" in p.stderr
    p = bmsgw(venv_bin, bmsgw_env, "battery", "baseline", "--config", path, "--string", 1, "--cell", 1)
    assert p.returncode == 2 and "no ohmic readings" in p.stderr
    p = bmsgw(venv_bin, bmsgw_env, "battery", "baseline", "--config", path, "--string", 1, "--cell", 1,
              "--ohmic", 5)
    assert p.returncode == 2 and "outside" in p.stderr
    p = bmsgw(venv_bin, bmsgw_env, "maintenance", "done", "dusting", "--config", path)
    assert p.returncode == 2 and "unknown item" in p.stderr
