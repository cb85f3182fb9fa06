"""Shared helpers for the benchmarks: configs in a temp folder, the simulator in its own process."""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BMSGW = str(Path(sys.executable).parent / "bmsgw")


def direct_bank(baud: int, strings: int = 4, cells: int = 120, wire_time: bool = True,
                silence_ms: float | None = None, string_sensor: bool = False) -> dict:
    """``strings`` x ``cells`` 12 V units, each with its own cell sensor (B-TEK style), one bus per string."""
    buses, strs = [], []
    for i in range(1, strings + 1):
        bus = {"name": f"bus{i}", "port": "sim", "baud": baud, "timeout_ms": 200, "retries": 1}
        if silence_ms is not None:
            bus["silence_ms"] = silence_ms
        buses.append(bus)
        devices = [{"profile": "bm-bcs-12", "bus": f"bus{i}", "address": 2, "count": cells}]
        if string_sensor:
            devices.insert(0, {"profile": "bm-smd", "bus": f"bus{i}", "address": 1})
        strs.append({"id": i, "cells": cells, "devices": devices})
    return {"simulator": {"enabled": True, "wire_time": wire_time}, "buses": buses, "strings": strs,
            "gateway": {"log_level": "WARNING"}}


def write_config(data: dict, folder: Path | None = None) -> Path:
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="bmsgw-bench-"))
        atexit.register(shutil.rmtree, folder, True)
    data.setdefault("gateway", {})["state_dir"] = str(folder / "var")
    if isinstance(data.get("simulator"), dict):
        data["simulator"].setdefault("backfill_days", 0)  # a bench measures the running gateway, not the demo's
        # first-start back-fill (bench/backfill.py does)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class SimProcess:
    """``bmsgw simulate`` in a child process; ``ports`` maps bus name -> pseudo-terminal."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen([BMSGW, "simulate", "--config", str(config), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ports: dict[str, str] = {}
        data = yaml.safe_load(config.read_text())
        want = len(data["buses"])
        while len(self.ports) < want:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("bmsgw simulate exited early")
            m = re.match(r"(\S+): (/dev/\S+)", line)
            if m:
                self.ports[m.group(1)] = m.group(2)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def now() -> float:
    return time.perf_counter()
