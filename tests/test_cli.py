"""The `bmsgw` console script as a user runs it: check-config, simulate (read by mbpoll, a real third-party
Modbus RTU master), run (says where it polls and where each face listens, stops cleanly on SIGTERM), and
`make run`."""
import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEFAULT_CONFIG, ROOT
from tests.coretools import BMSGW, bmsgw
from tests.support import free_port, small_bank, write_config

# -- check-config --------------------------------------------------------------------------------------------
VALID = {"buses": [{"name": "rs1", "port": "/dev/ttyS1", "baud": 9600}],
         "strings": [{"id": 1, "cells": 4, "devices": [{"profile": "bm-smd", "bus": "rs1", "address": 1},
                                                        {"profile": "bm-bcs-12", "bus": "rs1", "address": 2}]}]}


def test_check_config_accepts_the_default_and_a_site_config(tmp_path):
    out = bmsgw("check-config", "--config", DEFAULT_CONFIG)
    assert out.returncode == 0 and "valid: 4 strings, 480 batteries, 486 devices on 4 buses" in out.stdout
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(VALID))
    out = bmsgw("check-config", "--config", path)
    assert out.returncode == 0 and out.stderr == "", "check-config must not open /dev/ttyS1"
    assert "valid: 1 strings, 4 batteries, 5 devices" in out.stdout
    # it builds every face to check it, but writes nothing: no state folder, no key file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml"]


BROKEN = [
    ("bad value", lambda d: d["buses"][0].update(baud=9601), "buses[0].baud",
     "9601 is not one of [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]"),
    ("unknown profile", lambda d: d["strings"][0]["devices"][1].update(profile="bm-bcs-24"),
     "strings[0].devices[1].profile", "unknown profile 'bm-bcs-24'; known: bm-bcs-02, bm-bcs-06, bm-bcs-12"),
    ("duplicate address", lambda d: d["strings"][0]["devices"][1].update(address=1),
     "strings[0].devices[1].address", "address 1 on rs1 is already used by strings[0].devices[0]"),
    ("unknown section", lambda d: d.update(snmpp={"port": 161}), "snmpp", "unknown section"),
    ("sim without simulator", lambda d: d["buses"][0].update(port="sim"), "buses[0].port",
     "port 'sim' needs the built-in simulator"),
]


@pytest.mark.parametrize("name, change, where, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_check_config_refuses_with_file_key_path_and_message(tmp_path, name, change, where, message):
    data = yaml.safe_load(yaml.safe_dump(VALID))
    change(data)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    out = bmsgw("check-config", "--config", path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"bmsgw: {path}: {where}: {message}"), out.stderr
    assert "Traceback" not in out.stderr


def test_check_config_lists_every_problem_a_plugin_finds_in_its_section(tmp_path):
    """The alarm rules pass the JSON schema but make no sense: check-config says what and where, all of it,
    and `bmsgw run` refuses to start with the same words."""
    cfg = small_bank(strings=2, cells=4)
    cfg["alarms"] = {"rules": {"cell_voltage_float": {"high": {"warning": 14.5, "critical": 14.0}},
                               "hydrogen": {"point": "cell.hydrogen", "high": {"warning": 1.0}}},
                     "strings": [{"id": 3, "rules": {}}]}
    path = write_config(tmp_path, base=cfg)
    out = bmsgw("check-config", "--config", path)
    assert out.returncode == 2 and "valid" not in out.stdout
    assert out.stderr.splitlines() == [
        f"bmsgw: {path}: alarms.strings[0].id: no string 3 is configured",
        f"bmsgw: {path}: alarms.rules.cell_voltage_float.high: the critical setpoint must be above the warning "
        "setpoint (warning 14.5, critical 14.0)",
        f"bmsgw: {path}: alarms.rules.hydrogen.point: unknown point family 'cell.hydrogen'",
    ]
    run = bmsgw("run", "--config", path, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert set(out.stderr.splitlines()) <= set(run.stderr.splitlines())


def test_check_config_refuses_bad_yaml_with_the_line(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("buses:\n  - {name: rs1, port: /dev/ttyS1\nstrings: []\n")
    out = bmsgw("check-config", "--config", path)
    assert out.returncode == 2
    assert re.match(rf"bmsgw: {re.escape(str(path))}: line \d+, column \d+: not valid YAML", out.stderr), out.stderr


def test_the_module_entry_and_help(venv_bin):
    out = subprocess.run([str(venv_bin / "python"), "-m", "gateway", "--version"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("bmsgw ")
    out = bmsgw()
    assert out.returncode == 2 and "check-config" in out.stdout and "simulate" in out.stdout


def test_plugin_commands_share_the_config_option_and_the_offline_gateway(tmp_path, monkeypatch):
    """gateway.cliargs is what the faces' commands use (bmsgw report, battery, user, mib ...)."""
    import argparse

    from gateway.cliargs import add_config_option, config_path, offline_gateway, unopened_ports

    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(VALID))
    parser = argparse.ArgumentParser()
    add_config_option(parser)
    assert config_path(parser.parse_args(["-c", str(path)])) == str(path)
    monkeypatch.setenv("BMSGW_CONFIG", str(path))
    assert config_path(parser.parse_args([])) == str(path)
    assert unopened_ports(str(path)) == {"rs1": "(not opened)"}
    gw = offline_gateway(str(path))  # /dev/ttyS1 is never opened, no simulator runs
    assert gw.simulator is None and gw.topology.cell_count == 4
    assert {n: b.port for n, b in gw.engine.buses.items()} == {"rs1": "(not opened)"}


def test_poll_says_when_a_bus_cannot_be_used(tmp_path):
    cfg = small_bank(strings=1, cells=2)
    cfg["buses"][0].update(rs485=True, timeout_ms=20)
    path = write_config(tmp_path, base=cfg)
    out = bmsgw("poll", "--once", "--json", "--config", path)
    assert out.returncode == 1
    assert "does not support the kernel's RS485 mode" in out.stderr and "set `rs485: false`" in out.stderr
    assert "Traceback" not in out.stderr


# -- simulate + mbpoll ---------------------------------------------------------------------------------------
class Child:
    """A long-running command; its stderr is collected in a file so it can be searched while it runs."""

    def __init__(self, args, tmp_path: Path, name: str, **kwargs) -> None:
        self.log_path = tmp_path / f"{name}.log"
        with open(self.log_path, "w") as log:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, **kwargs)

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n{self.text()}")

    def stop(self, pid: int | None = None, timeout: float = 30) -> int:
        os.kill(pid or self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_simulate_prints_ptys_that_mbpoll_can_read(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=2, cells=4))
    sim = Child([BMSGW, "simulate", "--config", str(path), "--fault", "bus1:3=no_answer"], tmp_path, "simulate")
    try:
        lines = [sim.proc.stdout.readline() for _ in range(2)]
        ports = dict(re.match(r"(\w+): (/dev/pts/\d+)  \((\d+) devices\)", line).group(1, 2) for line in lines)
        assert set(ports) == {"bus1", "bus2"}
        # cell 1 of string 2: its sensor is at address 2 on bus2; mbpoll counts references from 1
        out = subprocess.run(["mbpoll", "-m", "rtu", "-b", "115200", "-P", "none", "-a", "2", "-t", "3", "-r", "1",
                              "-c", "5", "-1", "-o", "1", ports["bus2"]], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        regs = {int(k): int(v) for k, v in re.findall(r"\[(\d+)\]:\s+(-?\d+)", out.stdout)}
        assert sorted(regs) == [1, 2, 3, 4, 5]
        assert 12.8 < regs[1] / 1000 < 14.2, "a 12 V unit on float, in mV"
        assert 15.0 < regs[2] / 10 < 40.0, "negative-post temperature, 0.1 C"
        assert 1000 < (regs[3] << 16 | regs[4]) < 20000, "ohmic value in micro-ohm (a few milliohm)"
        # the injected fault: the sensor at address 3 on bus1 keeps silent
        out = subprocess.run(["mbpoll", "-m", "rtu", "-b", "115200", "-P", "none", "-a", "3", "-t", "3", "-r", "1",
                              "-c", "1", "-1", "-o", "0.2", ports["bus1"]], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "timed out" in out.stderr
        assert sim.stop() == 0
    finally:
        sim.kill()


# -- run -----------------------------------------------------------------------------------------------------
ECHO_FACE = '''
"""A face for the test: a TCP listener that says where it listens."""
import asyncio

from gateway.hookspecs import hookimpl
from gateway.service import Service


class Echo(Service):
    name = "echo"

    def __init__(self, port):
        self.port = port
        self.server = None

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port)

    async def serve(self, reader, writer):
        writer.write(b"bmsgw\\n")
        await writer.drain()
        writer.close()

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()

    def endpoints(self):
        return [f"tcp://127.0.0.1:{self.port}"]


@hookimpl
def bmsgw_config_schema():
    return {"echo": {"type": "object", "properties": {"port": {"type": "integer"}}}}


@hookimpl
def bmsgw_services(gateway):
    return [Echo(gateway.config.section("echo")["port"])]
'''


def test_simulate_refuses_a_bad_fault(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=2))
    out = bmsgw("simulate", "--config", path, "--fault", "bus9=unplugged", timeout=30)
    assert out.returncode == 2 and "bad --fault 'bus9=unplugged'" in out.stderr
    out = bmsgw("simulate", "--config", path, "--fault", "bus1:2=melted", timeout=30)
    assert out.returncode == 2 and "unknown fault 'melted'" in out.stderr


def test_run_logs_where_it_polls_and_where_each_face_listens_and_stops_on_sigterm(tmp_path):
    import socket

    face = tmp_path / "faces" / "echo_face"
    face.mkdir(parents=True)
    (face / "__init__.py").write_text(ECHO_FACE)
    port = free_port()
    cfg = small_bank(strings=2, cells=4)
    cfg.update(plugins={"dirs": [str(face.parent)]}, echo={"port": port})
    path = write_config(tmp_path, base=cfg)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    run = Child(["sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", BMSGW, "run", "--config", str(path)], tmp_path,
                "run")
    try:
        run.wait_log(r"bus bus1: first poll cycle took [\d.]+ s; 7 of 7 devices answer")
        # its faces' connections fit: the soft open-files limit raised to the hard one (an ulimit -n of 1024 is
        # the default, under systemd too)
        limits = Path(f"/proc/{run.proc.pid}/limits").read_text()
        soft = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
        assert soft == (65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)) > 256
        run.wait_log(r"bus bus2: first poll cycle took [\d.]+ s; 5 of 5 devices answer")
        log = run.text()
        assert re.search(r"bus bus1: /dev/pts/\d+ at 115200 baud, 7 devices", log)
        assert f"listening: echo: tcp://127.0.0.1:{port}" in log
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert s.recv(16) == b"bmsgw\n"
        assert run.stop() == 0
        assert "stopping" in run.text() and "Traceback" not in run.text()
    finally:
        run.kill()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_make_run_starts_the_default_gateway_and_stops_cleanly(tmp_path):
    from tests.support import LISTENING_FACES, free_port

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["gateway"]["state_dir"] = str(tmp_path / "var")
    data["simulator"]["backfill_days"] = 1  # the first start's back-fill, short (tests/test_backfill.py: the rest)
    for section, kind in LISTENING_FACES.items():  # the default config, but on ports nobody else holds
        data[section]["listen"] = f"127.0.0.1:{free_port(kind)}"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    make = Child(["make", "--no-print-directory", "run", f"CONFIG={path}"], tmp_path, "make")
    try:
        make.wait_log(r"back-fill done in \d+ s: 1 simulated day, \d+ discharges", timeout=300)
        make.wait_log(r"bmsgw started for Demo battery room \(simulated\): 4 strings, 480 batteries, 486 devices")
        for bus, n in (("bus1", 123), ("bus4", 121)):
            make.wait_log(rf"bus {bus}: first poll cycle took [\d.]+ s; {n} of {n} devices answer")
        pids = _children(make.proc.pid)
        assert len(pids) == 1, "make runs bmsgw as its only child"
        assert make.stop(pids[0]) == 0, make.text()
        assert "stopping" in make.text() and "Traceback" not in make.text()
    finally:
        make.kill()


def test_run_says_which_face_cannot_start_and_exits_2(tmp_path):
    import socket

    face = tmp_path / "faces" / "echo_face"
    face.mkdir(parents=True)
    (face / "__init__.py").write_text(ECHO_FACE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = small_bank(strings=1, cells=2)
        cfg.update(plugins={"dirs": [str(face.parent)]}, echo={"port": taken.getsockname()[1]})
        out = bmsgw("run", "--config", write_config(tmp_path, base=cfg), timeout=60)
    assert out.returncode == 2
    assert "bmsgw: echo cannot start:" in out.stderr and "Traceback" not in out.stderr
