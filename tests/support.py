"""Shared test harness: configs in a temp folder, a gateway running in a background thread, free ports."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import resource
import socket
import threading
import time
from pathlib import Path

import yaml

from tests.conftest import DEFAULT_CONFIG


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@contextlib.contextmanager
def descriptors_above_select(first: int = 1100):
    """Every descriptor below ``first`` taken (the soft open-files limit raised for them, as ``bmsgw run`` raises
    its own): what opens meanwhile is above 1023, out of select()'s reach, as in a gateway whose faces hold many
    connections when a bus is opened again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * first if hard == resource.RLIM_INFINITY else min(hard, 4 * first)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < first - 1:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def small_bank(strings: int = 1, cells: int = 8, profile: str = "bm-bcs-12") -> dict:
    """A small simulated bank for quick tests: ``strings`` strings of ``cells`` units, one bus each."""
    buses = [{"name": f"bus{i}", "port": "sim", "baud": 115200, "timeout_ms": 100, "retries": 1}
             for i in range(1, strings + 1)]
    strs = [{"id": i, "cells": cells, "name": f"String {i}",
             "devices": [{"profile": "bm-smd", "bus": f"bus{i}", "address": 1},
                         {"profile": profile, "bus": f"bus{i}", "address": 2, "count": cells}]}
            for i in range(1, strings + 1)]
    return {"buses": buses, "strings": strs,
            "bank": {"devices": [{"profile": "btek-cmu", "bus": "bus1", "address": 200},
                                 {"profile": "bm-io", "bus": "bus1", "address": 201}]}}


LISTENING_FACES = {"snmp": socket.SOCK_DGRAM, "modbus_tcp": socket.SOCK_STREAM, "web": socket.SOCK_STREAM,
                   "prometheus": socket.SOCK_STREAM, "nut": socket.SOCK_STREAM}


def write_config(tmp_path: Path, overrides: dict | None = None, base: dict | None = None,
                 fast: bool = True) -> Path:
    """The default config (or ``base``) with ``overrides`` merged in, state kept under ``tmp_path``.

    ``fast``: no wire-time emulation and a 0.5 s poll period, so tests see data quickly.
    """
    data = yaml.safe_load(DEFAULT_CONFIG.read_text()) if base is None else copy.deepcopy(base)
    data.setdefault("gateway", {})["state_dir"] = str(tmp_path / "var")
    if fast:
        data = deep_merge(data, {"simulator": {"enabled": True, "wire_time": False},
                                 "gateway": {"poll": {"fast_s": 0.5, "slow_s": 5}}})
    data = deep_merge(data, overrides or {})
    if isinstance(data.get("simulator"), dict) and "backfill_days" not in ((overrides or {}).get("simulator") or {}):
        data["simulator"]["backfill_days"] = 0  # no first-start back-fill unless the test asks for one
    # every listening face on a free port unless the test chose one: several gateways (and other test
    # runs on the same machine) may be up at once
    for section, kind in LISTENING_FACES.items():
        if "listen" not in ((overrides or {}).get(section) or {}):
            data.setdefault(section, {})["listen"] = f"127.0.0.1:{free_port(kind)}"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


MIN_WAIT_S = 30.0


class GatewayThread:
    """``bmsgw run`` in-process: the gateway's event loop in a background thread.

    >>> with GatewayThread(path) as gt:
    ...     gt.gateway.store.snapshot()
    """

    def __init__(self, config_path: Path, services: bool = True, wait_points: str | None = "cell.voltage",
                 timeout: float = 60.0) -> None:
        from gateway.app import Gateway

        self.gateway = Gateway(config_path)
        self.services = services
        self.wait_points = wait_points
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine in the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> GatewayThread:
        self._thread.start()
        self.call(self.gateway.start(faces=self.services), timeout=self.timeout)
        if self.wait_points:
            expected = len(self.gateway.pointmap.refs(self.wait_points))
            self.wait_for(lambda: self.count_good(self.wait_points) >= expected,
                          what=f"every {self.wait_points} to be read")
        return self

    def count_good(self, point: str) -> int:
        snap = self.gateway.store.snapshot()
        return sum(1 for ref, r in snap.items() if ref.point == point and r.quality.value == "GOOD")

    def wait_for(self, predicate, timeout: float | None = None, what: str = "condition") -> None:
        """Until ``predicate()`` holds.  The deadline is how long a loaded 2-core CI machine may take, never a
        timing assertion (those are benchmarks), so it is at least ``MIN_WAIT_S``."""
        deadline = time.monotonic() + max(timeout or self.timeout, MIN_WAIT_S)
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        try:
            self.call(self.gateway.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def section_with_defaults(name: str, data: dict) -> dict:
    """A config section as the gateway hands it to its services: ``data`` with the schema's defaults filled in."""
    from gateway.config import fill_defaults, full_schema
    from gateway.plugins import make_plugin_manager

    extra: dict = {}
    for part in make_plugin_manager().hook.bmsgw_config_schema():
        extra.update(part)
    return fill_defaults(full_schema(extra)["properties"][name], copy.deepcopy(data))
