"""Helpers for the core's tests: gateways that do not open ports, and a simulator-backed engine run."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

BMSGW = str(Path(sys.executable).parent / "bmsgw")


def offline_gateway(path: Path, **kwargs):
    """A Gateway for a config whose ports are never opened (what check-config and regmap build)."""
    from gateway.app import Gateway

    data = yaml.safe_load(Path(path).read_text())
    ports = {b["name"]: "(not opened)" for b in data["buses"]}
    return Gateway(path, simulator=False, port_overrides=ports, **kwargs)


def bmsgw(*args: str, timeout: float = 60, env: dict | None = None, cwd: Path | None = None,
          check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``bmsgw`` console script of this checkout's venv."""
    return subprocess.run([BMSGW, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd or ROOT, check=check)


@contextlib.contextmanager
def running(gw):
    """The gateway's simulator started (engine not started: the test drives ``poll_once``)."""
    if gw.simulator is not None:
        gw.simulator.start()
    try:
        yield gw
    finally:
        if gw.simulator is not None:
            gw.simulator.stop()


def poll(gw, cycles: int = 1, slow: bool = True) -> None:
    """``cycles`` full scans through the real serial path, then close the ports."""

    async def go():
        try:
            for _ in range(cycles):
                await gw.engine.poll_once(slow=slow)
        finally:
            await gw.engine.stop()

    asyncio.run(go())
