"""The soak run: `bmsgw run` on the default 480-battery config under every northbound face's load at once.

Used by bench/soak.py (10 minutes and more) and tests/soak/test_soak_short.py (about 40 s).  The gateway runs
as a subprocess (`bmsgw run`, the built-in simulator, alarms, history and analytics on as in config.yaml,
every face on a free port); the load comes from the real peers:

* Modbus TCP: ``modbus_clients`` in a process of its own (N clients reading the whole register map in a
  loop, some of them pymodbus) and `mbpoll` runs;
* SNMP: net-snmp `snmpbulkwalk` of the BMSGW MIB every ``snmp_every_s``, like an NMS;
* Prometheus: a real `prometheus` server scraping the exporter every ``scrape_every_s``; its API says
  afterwards whether every scrape succeeded;
* web: a browser-like client (login, the overview page, the string page's /api/v1/.../cells refresh) and,
  optionally, headless chromium with the string page open.

What counts as a missed poll cycle (the engine's own accounting, gateway/engine.py): each bus polls on a
fixed schedule, cycle k due at t0 + k * fast_s.  A slot of that schedule in which no cycle started (the
previous one overran it, or the event loop was blocked) is *missed*; a cycle that starts more than 10 % of
the interval after its slot is *late*.  The run checks this independently too: cycles done during the load
window against window / fast_s.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from tests.snmp_support import MIBS, net_snmp_env
from tests.soak.stats import Latency, slope
from tests.support import free_port, write_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "soak-test-password-1"


@dataclass
class Plan:
    """How long and how hard: the defaults are the issue's (20 clients, SNMP every 10 s, scrapes every 5 s)."""

    baseline_s: float = 60.0  # the gateway alone, before any load: the reference for the poll cycle time
    load_s: float = 600.0
    warmup_s: float = 120.0  # of the load phase: RSS growth and slope are measured after it
    modbus_clients: int = 20
    modbus_pymodbus: int = 2
    modbus_period_s: float = 1.0
    mbpoll_every_s: float = 30.0
    snmp_every_s: float = 10.0
    scrape_every_s: float = 5.0
    web_every_s: float = 10.0  # the string page refreshes its batteries every 10 s (static/app.js)
    overview_every_s: float = 30.0  # the overview page reloads itself every 30 s (meta refresh)
    browser: bool = False  # headless chromium with the string page open, besides the scripted client
    sample_every_s: float = 5.0
    progress_every_s: float = 60.0
    progress: bool = True
    sim_process: bool = False  # the simulator in a process of its own (`bmsgw simulate`) instead of built in


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process, MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", text)[1]) / 1024
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", text)[1]) / 1024
    return rss, hwm


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the gateway ---------------------------------------------------------------------------------------------
class GatewayProcess:
    """`bmsgw run` on a copy of config.yaml: every face on a free port, state in ``folder``."""

    def __init__(self, folder: Path, overrides: dict | None = None, sim_process: bool = False) -> None:
        self.folder = folder
        self.sim = None
        if sim_process:  # the sensors in a process of their own, as on the controller (bench/memory.py too)
            from bench._common import SimProcess

            (folder / "sim").mkdir(parents=True, exist_ok=True)
            sim_config = write_config(folder / "sim", fast=False)
            self.sim = SimProcess(sim_config)
            buses = yaml.safe_load(sim_config.read_text())["buses"]
            overrides = {**(overrides or {}), "simulator": {"enabled": False},
                         "buses": [{**b, "port": self.sim.ports[b["name"]]} for b in buses]}
        self.config = write_config(folder, overrides, fast=False)  # the default config, faces on free ports
        self.data = data = yaml.safe_load(self.config.read_text())

        def port(section: str) -> int:
            return int(data[section]["listen"].rsplit(":", 1)[1])

        self.modbus_port, self.snmp_port = port("modbus_tcp"), port("snmp")
        self.web_port, self.prom_port = port("web"), port("prometheus")
        self.fast_s = float(data["gateway"]["poll"]["fast_s"])
        self.buses = [b["name"] for b in data["buses"]]
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.log_path = folder / "bmsgw.log"
        self.proc: subprocess.Popen | None = None
        self.user = "soak"
        self._cli("user", "add", self.user, "--role", "viewer", "--password-stdin", input=PASSWORD + "\n")
        self.token = self._cli("token", "add", "soak-monitor", "--role", "viewer").strip()

    def _cli(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run([str(BIN / "bmsgw"), *args, "--config", str(self.config)], input=input,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"bmsgw {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def start(self, timeout: float = 180.0) -> None:
        with open(self.log_path, "w") as log:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen([str(BIN / "bmsgw"), "run", "--config", str(self.config)],
                                         stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()
            if text.count("first poll cycle took") >= len(self.buses):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"bmsgw run exited ({self.proc.returncode}):\n{text[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"no complete poll cycle on every bus within {timeout} s:\n"
                           f"{self.log_path.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict:
        r = requests.get(self.web_url + "/api/v1/status", headers={"Authorization": f"Bearer {self.token}",
                                                                  "Accept": "application/json"}, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self) -> int:
        try:
            if self.proc is None:
                return 0
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            return self.proc.returncode
        finally:
            if self.sim is not None:
                self.sim.close()
                self.sim = None

    def log_problems(self) -> list[str]:
        """Lines of the gateway's log at ERROR or worse, and tracebacks."""
        return [line for line in self.log_path.read_text().splitlines()
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


def served_ranges(config: Path) -> list[list[int]]:
    """The register ranges the Modbus TCP face serves for this config (what a SCADA reads from the regmap)."""
    from gateway.app import Gateway
    from gateway.outputs.modbus_tcp.face import served_ranges as ranges

    data = yaml.safe_load(config.read_text())
    gw = Gateway(config, simulator=False, port_overrides={b["name"]: "(not opened)" for b in data["buses"]})
    return [list(r) for r in ranges(gw.pointmap)]


# -- the loads -----------------------------------------------------------------------------------------------
@dataclass
class FaceStats:
    name: str
    latency: Latency = field(default_factory=Latency)
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def good(self, seconds: float | None = None) -> None:
        with self.lock:
            self.ok += 1
            if seconds is not None:
                self.latency.add(seconds)

    def bad(self, text: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.error_samples) < 10:
                self.error_samples.append(text[:300])


class Periodic(threading.Thread):
    """Calls ``fn`` every ``every`` seconds on a fixed schedule until ``stop`` is set; a call that runs past its
    next slot makes that slot skipped (counted in ``overruns``), as an NMS that is still walking would."""

    def __init__(self, name: str, every: float, fn, stop: threading.Event, offset: float = 0.0) -> None:
        super().__init__(name=name, daemon=True)
        self.every, self.fn, self.stop_event, self.offset = every, fn, stop, offset
        self.overruns = 0
        self.crashed: BaseException | None = None

    def run(self) -> None:
        due = time.monotonic() + self.offset
        while not self.stop_event.wait(max(due - time.monotonic(), 0.0)):
            try:
                self.fn()
            except BaseException as exc:  # a bug in the load itself: stop and say so
                self.crashed = exc
                return
            due += self.every
            while due < time.monotonic():
                due += self.every
                self.overruns += 1


class ModbusLoad:
    """The clients in a child process (tests.soak.modbus_clients), its JSON lines read in a thread."""

    def __init__(self, gw: GatewayProcess, plan: Plan, ranges: list[list[int]]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.soak.modbus_clients", "--port", str(gw.modbus_port),
             "--ranges", json.dumps(ranges), "--clients", str(plan.modbus_clients),
             "--pymodbus", str(plan.modbus_pymodbus), "--period", str(plan.modbus_period_s)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.last: dict = {}
        self.final: dict | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("final"):
                self.final = data
            self.last = data

    def stop(self) -> dict:
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(10)
        if self.final is None:
            raise RuntimeError(f"the Modbus clients ended without a summary: {self.proc.stderr.read()[-2000:]}")
        return self.final


def mbpoll(gw: GatewayProcess, stats: FaceStats) -> None:
    """One mbpoll read of string 1's first 100 registers (input registers, PDU address 3000)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["mbpoll", "-m", "tcp", "-p", str(gw.modbus_port), "-a", "1", "-t", "3", "-0",
                           "-r", "3000", "-c", "100", "-o", "3", "-1", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    values = re.findall(r"^\[(\d+)\]:\s+(-?\d+)", proc.stdout, re.M)
    if proc.returncode != 0 or len(values) != 100:
        stats.bad(f"mbpoll rc={proc.returncode}, {len(values)} values: {proc.stderr.strip() or proc.stdout[-200:]}")
    else:
        stats.good(took)


class SnmpWalker:
    """An NMS: `snmpbulkwalk` of the BMSGW MIB (loaded from mibs/), checked against the walk without load."""

    def __init__(self, gw: GatewayProcess, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.env = net_snmp_env(folder)
        community = gw.data["snmp"]["v2c"]["community"]
        self.cmd = ["snmpbulkwalk", "-v2c", "-c", community, "-M", str(MIBS), "-m", "BMSGW-MIB", "-Cr50",
                    "-t", "5", "-r", "1", "-On", f"udp:127.0.0.1:{gw.snmp_port}", "BMSGW-MIB::bmsgwMIB"]
        self.stats = FaceStats("snmp")
        self.varbinds: list[int] = []
        self.reference: set[str] | None = None  # the OIDs of the walk without load
        self.changes: list[str] = []

    @property
    def expected(self) -> int | None:
        return len(self.reference) if self.reference is not None else None

    def walk(self) -> set[str]:
        t0 = time.perf_counter()
        proc = subprocess.run(self.cmd, capture_output=True, text=True, env=self.env, timeout=120)
        took = time.perf_counter() - t0
        oids = {line.split(" = ", 1)[0] for line in proc.stdout.splitlines() if " = " in line}
        self.varbinds.append(len(oids))
        problem = ""
        if proc.returncode != 0 or proc.stderr.strip():
            problem = f"rc={proc.returncode}: {proc.stderr.strip()[:200]}"
        elif self.reference is not None and oids != self.reference:
            change = self.describe(oids)
            self.changes.append(change)
            (self.folder / f"walk-{len(self.varbinds)}.txt").write_text(proc.stdout)
            # rows of a device that missed a poll (stale) are left out, as they should be; a walk that lost
            # more than a few devices' worth is cut short
            if len(oids) < 0.95 * len(self.reference):
                problem = change
        if problem:
            self.stats.bad(f"snmpbulkwalk: {problem}")
        else:
            self.stats.good(took)
        return oids

    def describe(self, oids: set[str]) -> str:
        """Which columns (OID up to the column number) lost or gained instances against the reference."""
        def columns(items: set[str]) -> dict[str, int]:
            out: dict[str, int] = {}
            for oid in items:
                col = ".".join(oid.split(".")[:12])
                out[col] = out.get(col, 0) + 1
            return dict(sorted(out.items()))

        return (f"{len(oids)} varbinds ({len(self.reference)} without load): lost {columns(self.reference - oids)}, "
                f"new {columns(oids - self.reference)}")


class PrometheusServer:
    """A real Prometheus scraping the exporter; afterwards its API says how every scrape went.

    It starts with nothing to scrape (so its start-up overlaps the gateway's and the baseline has no load);
    ``scrape()`` then gives it the job and reloads its configuration (SIGHUP), as an operator would."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "prometheus.log"
        self.config = folder / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({"global": {"scrape_interval": "10s"}}))
        with open(self.log, "w") as log:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen(["prometheus", f"--config.file={self.config}",
                                          f"--storage.tsdb.path={folder / 'tsdb'}",
                                          f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        self.url = f"http://127.0.0.1:{self.port}"

    def scrape(self, target: str, every: float) -> None:
        every_s = f"{round(every * 1000)}ms"  # Prometheus durations take whole units
        timeout_s = f"{round(max(every * 0.8, 1) * 1000)}ms"
        config = {"global": {"scrape_interval": every_s, "evaluation_interval": every_s},
                  "scrape_configs": [{"job_name": "bmsgw", "scrape_interval": every_s, "scrape_timeout": timeout_s,
                                      "static_configs": [{"targets": [target]}]}]}
        self.config.write_text(yaml.safe_dump(config))
        self._wait('up{job="bmsgw"}', "scrape the gateway", lambda: self.proc.send_signal(signal.SIGHUP))

    def _wait(self, query: str, what: str, nudge, timeout: float = 90) -> None:
        """Until ``query`` returns something; ``nudge`` once Prometheus answers at all (it may still be
        starting: a reload signal sent before its handler is set would end it)."""
        deadline = time.monotonic() + timeout
        nudged = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-1000:]}")
            try:
                if not nudged:
                    if requests.get(self.url + "/-/ready", timeout=5).status_code == 200:
                        nudge()
                        nudged = True
                else:
                    r = requests.get(self.url + "/api/v1/query", params={"query": query}, timeout=5)
                    if r.status_code == 200 and r.json()["data"]["result"]:
                        return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not {what} within {timeout} s")

    def api(self, path: str, **params) -> dict:
        r = requests.get(self.url + path, params=params, timeout=30)
        r.raise_for_status()
        return r.json()["data"]

    def scalar(self, promql: str, at: float) -> float | None:
        result = self.api("/api/v1/query", query=promql, time=f"{at:.3f}")["result"]
        return float(result[0]["value"][1]) if result else None

    def per_bus(self, promql: str, at: float) -> dict[str, float]:
        result = self.api("/api/v1/query", query=promql, time=f"{at:.3f}")["result"]
        return {r["metric"].get("bus", "?"): float(r["value"][1]) for r in result}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WebClient:
    """What a person with the page open causes: login, the overview page every 30 s (its meta refresh), the
    string page and its battery refresh every 10 s (static/app.js), the alarm list now and then."""

    def __init__(self, gw: GatewayProcess, plan: Plan) -> None:
        from tests.web_support import Client

        self.gw, self.plan = gw, plan
        self.stats = FaceStats("web")
        self.client = Client(gw.web_url)
        self.strings = [s["id"] for s in gw.data["strings"]]
        self.turn = 0
        self.next_overview = 0.0

    def get(self, path: str, json_body: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            headers = {"Accept": "application/json"} if json_body else {}
            r = self.client.get(path, headers=headers, allow_redirects=False)
            took = time.perf_counter() - t0
            if r.status_code != 200:
                self.stats.bad(f"GET {path}: HTTP {r.status_code}")
            elif json_body:
                r.json()
                self.stats.good(took)
            else:
                self.stats.good(took)
        except (requests.RequestException, ValueError) as exc:
            self.stats.bad(f"GET {path}: {type(exc).__name__}: {exc}")

    def login(self) -> None:
        t0 = time.perf_counter()
        try:
            self.client.login(self.gw.user, PASSWORD)
            self.stats.good(time.perf_counter() - t0)
        except (AssertionError, requests.RequestException) as exc:
            self.stats.bad(f"login: {exc}")

    def tick(self) -> None:
        """One refresh of the open string page; the overview when its meta refresh is due; the user moves
        to the next string page every minute."""
        now = time.monotonic()
        sid = self.strings[(self.turn * int(self.plan.web_every_s) // 60) % len(self.strings)]
        if self.turn == 0 or now >= self.next_overview:
            self.get("/")
            self.get(f"/strings/{sid}")
            self.get("/api/v1/alarms", json_body=True)
            self.next_overview = now + self.plan.overview_every_s
        self.get(f"/api/v1/strings/{sid}/cells", json_body=True)
        self.turn += 1


class BrowserPage(threading.Thread):
    """Headless chromium (Playwright driving /usr/bin/chromium) with a string page open: its own script
    refreshes the batteries every 10 s; failed responses and script errors are counted."""

    def __init__(self, gw: GatewayProcess, stop: threading.Event) -> None:
        super().__init__(name="browser", daemon=True)
        self.gw, self.stop_event = gw, stop
        self.stats = FaceStats("browser")
        self.api_responses = 0
        self.ready = threading.Event()
        self.crashed: BaseException | None = None

    def run(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path="/usr/bin/chromium",
                                      args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                            "--disable-background-networking", "--disable-component-update"])
                page = b.new_page(viewport={"width": 1280, "height": 900})
                page.on("pageerror", lambda e: self.stats.bad(f"page error: {e}"))
                page.on("console", lambda m: self.stats.bad(f"console: {m.text}") if m.type == "error" else None)
                page.on("requestfailed", lambda r: self.stats.bad(f"request failed: {r.url} {r.failure}"))
                page.on("response", self._response)
                page.on("requestfinished", self._finished)
                page.goto(self.gw.web_url + "/login")
                page.fill("input[name=username]", self.gw.user)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(self.gw.web_url + "/")
                page.goto(self.gw.web_url + "/strings/1")
                page.wait_for_selector(".chart.bar canvas", timeout=60000)
                self.ready.set()
                while not self.stop_event.is_set():
                    page.wait_for_timeout(500)
                b.close()
        except BaseException as exc:
            self.crashed = exc
            self.stats.bad(f"browser: {type(exc).__name__}: {exc}")
        finally:
            self.ready.set()

    def _response(self, resp) -> None:
        if resp.status >= 400:
            self.stats.bad(f"HTTP {resp.status} for {resp.url}")

    def _finished(self, request) -> None:
        if "/api/" not in request.url:
            return
        self.api_responses += 1
        timing = request.timing  # milliseconds from startTime; -1 when not known
        ok = timing.get("responseEnd", -1) >= 0 and timing.get("requestStart", -1) >= 0
        self.stats.good((timing["responseEnd"] - timing["requestStart"]) / 1000 if ok else None)


# -- sampling ------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float  # monotonic
    rss_mb: float
    hwm_mb: float
    cpu_s: float
    buses: dict  # engine counters per bus (the status' "buses")


class Monitor(threading.Thread):
    def __init__(self, gw: GatewayProcess, every: float, stop: threading.Event, web: FaceStats) -> None:
        super().__init__(name="monitor", daemon=True)
        self.gw, self.every, self.stop_event, self.web = gw, every, stop, web
        self.samples: list[Sample] = []
        self.lock = threading.Lock()

    def sample(self) -> Sample:
        t0 = time.perf_counter()
        status = self.gw.status()
        self.web.good(time.perf_counter() - t0)
        rss, hwm = rss_mb(self.gw.pid)
        s = Sample(time.monotonic(), rss, hwm, cpu_s(self.gw.pid), status["buses"])
        with self.lock:
            self.samples.append(s)
        return s

    def run(self) -> None:
        due = time.monotonic()
        while not self.stop_event.wait(max(due - time.monotonic(), 0.0)):
            try:
                self.sample()
            except (requests.RequestException, OSError, ValueError) as exc:
                self.web.bad(f"status: {type(exc).__name__}: {exc}")
            due += self.every


# -- the run -------------------------------------------------------------------------------------------------
@dataclass
class BusFigures:
    cycles: int
    expected: float
    missed: int
    late: int
    overruns: int
    max_lag_s: float
    cycle_s_baseline: float
    cycle_s_load: float
    bus_errors: int  # timeouts, CRC/frame errors and exception answers on the RS485 side during the load
    bus_errors_baseline: int


@dataclass
class Result:
    plan: Plan
    fast_s: float
    load_s: float
    buses: dict[str, BusFigures]
    rss: dict[str, float]  # start, load_start, warm, end, peak
    rss_slope_mb_h: float
    rss_timeline: list[tuple[float, float]]  # (minutes into the load, MB) every 5 minutes and at the end
    cpu_baseline: float  # gateway CPU share (1.0 = one core) without and with load
    cpu_load: float
    faces: dict[str, FaceStats]
    idle: dict[str, float]  # one request of each face without load, seconds
    modbus: dict
    snmp_varbinds: tuple[int, int]  # without load, min under load
    snmp_changes: list[str]  # walks whose OIDs differed from the one without load, and how
    prometheus: dict
    browser_api_responses: int | None
    log_problems: list[str]
    exit_code: int
    load_errors: list[str]

    @property
    def missed(self) -> int:
        return sum(b.missed for b in self.buses.values())

    @property
    def short_cycles(self) -> int:
        """Cycles fewer than the schedule asked for over the load window (an independent check of missed)."""
        return sum(max(0, round(b.expected) - 1 - b.cycles) for b in self.buses.values())

    @property
    def bus_errors(self) -> int:
        return sum(b.bus_errors for b in self.buses.values())

    @property
    def face_errors(self) -> int:
        return sum(f.errors for f in self.faces.values())

    @property
    def rss_growth_mb(self) -> float:
        return self.rss["end"] - self.rss["warm"]


BUS_ERRORS = ("timeouts", "crc_errors", "exceptions")


def _delta(a: Sample, b: Sample, bus: str, key: str) -> float:
    return b.buses[bus][key] - a.buses[bus][key]


def _at(samples: list[Sample], t: float) -> Sample:
    """The first sample at or after ``t`` (the last one if none)."""
    return next((s for s in samples if s.t >= t), samples[-1])


def run(plan: Plan, folder: Path | None = None) -> Result:
    own = folder is None
    tmp = tempfile.TemporaryDirectory(prefix="bmsgw-soak-") if own else None
    folder = Path(tmp.name) if own else folder
    stop = threading.Event()
    gw = GatewayProcess(folder, sim_process=plan.sim_process)
    ranges = served_ranges(gw.config)
    faces = {name: FaceStats(name) for name in ("modbus", "mbpoll", "prometheus", "web", "web-status")}
    walker = SnmpWalker(gw, folder / "net-snmp")
    faces["snmp"] = walker.stats
    prom = modbus = browser = None
    threads: list[Periodic] = []
    monitor = Monitor(gw, plan.sample_every_s, stop, faces["web-status"])
    idle: dict[str, float] = {}
    load_errors: list[str] = []
    try:
        prom = PrometheusServer(folder / "prometheus")
        gw.start()
        first = monitor.sample()
        if plan.progress:
            log(f"soak: bmsgw run is polling {len(gw.buses)} buses (RSS {first.rss_mb:.1f} MB); "
                f"{plan.baseline_s:.0f} s without load first")
        monitor.start()
        time.sleep(plan.baseline_s)
        base_start, base_end = first, monitor.sample()

        web = WebClient(gw, plan)
        web.stats = faces["web"]
        web.login()
        idle = _idle_latencies(gw, walker, web, ranges)

        # the load: Prometheus first, so that the window starts with its scrapes going
        prom.scrape(f"127.0.0.1:{gw.prom_port}", plan.scrape_every_s)
        load_start = monitor.sample()
        prom_t0 = time.time()
        modbus = ModbusLoad(gw, plan, ranges)
        threads = [Periodic("snmp", plan.snmp_every_s, walker.walk, stop),
                   Periodic("web", plan.web_every_s, web.tick, stop, offset=1.0),
                   Periodic("mbpoll", plan.mbpoll_every_s, lambda: mbpoll(gw, faces["mbpoll"]), stop, offset=2.0)]
        for th in threads:
            th.start()
        if plan.browser:
            browser = BrowserPage(gw, stop)
            faces["browser"] = browser.stats
            browser.start()
        end_at = load_start.t + plan.load_s
        next_progress = load_start.t + plan.progress_every_s
        while time.monotonic() < end_at:
            time.sleep(min(1.0, max(end_at - time.monotonic(), 0.0)))
            if gw.proc.poll() is not None:
                raise RuntimeError(f"bmsgw run exited during the soak:\n{gw.log_path.read_text()[-3000:]}")
            if plan.progress and time.monotonic() >= next_progress:
                next_progress += plan.progress_every_s
                log(_progress(monitor, load_start, gw, faces, modbus, plan))
        load_end = monitor.sample()
        prom_t1 = time.time()
        stop.set()
        for th in threads:
            th.join(120)
            if th.crashed is not None:
                load_errors.append(f"{th.name} load crashed: {th.crashed!r}")
        if browser is not None:
            browser.join(60)
        modbus_final = modbus.stop()
        modbus = None
        faces["modbus"].latency = Latency.from_dict(modbus_final["latency"])
        faces["modbus"].ok = modbus_final["requests"]
        faces["modbus"].errors = modbus_final["errors"]
        faces["modbus"].error_samples = modbus_final["error_samples"]
        prometheus = _prometheus_figures(prom, faces["prometheus"], prom_t0, prom_t1, plan)
        monitor.join(plan.sample_every_s + 30)
    finally:
        stop.set()
        if modbus is not None:
            modbus.proc.kill()
        if prom is not None:
            prom.stop()
        exit_code = gw.stop()
    samples = sorted(monitor.samples, key=lambda s: s.t)
    buses = {}
    for bus in gw.buses:
        base_cycles = _delta(base_start, base_end, bus, "cycles")
        load_cycles = _delta(load_start, load_end, bus, "cycles")
        buses[bus] = BusFigures(
            cycles=int(load_cycles), expected=(load_end.t - load_start.t) / gw.fast_s,
            missed=int(_delta(load_start, load_end, bus, "cycles_missed")),
            late=int(_delta(load_start, load_end, bus, "cycles_late")),
            overruns=int(_delta(load_start, load_end, bus, "overruns")),
            max_lag_s=load_end.buses[bus]["max_lag_s"],
            cycle_s_baseline=_delta(base_start, base_end, bus, "busy_s") / max(base_cycles, 1),
            cycle_s_load=_delta(load_start, load_end, bus, "busy_s") / max(load_cycles, 1),
            bus_errors=int(sum(_delta(load_start, load_end, bus, k) for k in BUS_ERRORS)),
            bus_errors_baseline=int(sum(_delta(base_start, base_end, bus, k) for k in BUS_ERRORS)))
    warm = _at(samples, load_start.t + plan.warmup_s)
    after = [(s.t, s.rss_mb) for s in samples if warm.t <= s.t <= load_end.t]
    rss = {"start": first.rss_mb, "load_start": load_start.rss_mb, "warm": warm.rss_mb, "end": load_end.rss_mb,
           "peak": load_end.hwm_mb}
    result = Result(
        plan=plan, fast_s=gw.fast_s, load_s=load_end.t - load_start.t, buses=buses, rss=rss,
        rss_slope_mb_h=slope(after) * 3600, rss_timeline=_timeline(samples, load_start, load_end),
        cpu_baseline=(base_end.cpu_s - base_start.cpu_s) / max(base_end.t - base_start.t, 1e-9),
        cpu_load=(load_end.cpu_s - load_start.cpu_s) / max(load_end.t - load_start.t, 1e-9),
        faces=faces, idle=idle, modbus=modbus_final,
        snmp_varbinds=(walker.expected or 0, min(walker.varbinds or [0])), snmp_changes=walker.changes,
        prometheus=prometheus,
        browser_api_responses=browser.api_responses if browser is not None else None,
        log_problems=gw.log_problems(), exit_code=exit_code, load_errors=load_errors)
    if own:
        tmp.cleanup()
    return result


def _timeline(samples: list[Sample], start: Sample, end: Sample, step_s: float = 300.0) -> list[tuple[float, float]]:
    out, t = [], start.t
    while t < end.t:
        s = _at(samples, t)
        out.append(((s.t - start.t) / 60, s.rss_mb))
        t += step_s
    out.append(((end.t - start.t) / 60, end.rss_mb))
    return out


def _idle_latencies(gw: GatewayProcess, walker: SnmpWalker, web: WebClient, ranges: list[list[int]]) -> dict:
    """Median of three requests of each face with nothing else going on: the latency baseline.  Their
    outcomes go to throwaway stats; an error here stops the run (the gateway is broken before any load)."""
    def median3(stats: FaceStats, fn) -> float:
        for _ in range(3):
            fn()
        if stats.errors:
            raise RuntimeError(f"{stats.name} fails without load: {stats.error_samples}")
        return stats.latency.quantile(0.5)

    out = {}
    real, walker.stats = walker.stats, FaceStats("snmp")
    out["snmp"] = median3(walker.stats, walker.walk)
    walker.reference, walker.stats = walker.walk(), real
    del walker.varbinds[:]
    metrics = FaceStats("prometheus")

    def scrape() -> None:
        t0 = time.perf_counter()
        requests.get(f"http://127.0.0.1:{gw.prom_port}/metrics", timeout=30).raise_for_status()
        metrics.good(time.perf_counter() - t0)

    out["prometheus"] = median3(metrics, scrape)
    real, web.stats = web.stats, FaceStats("web")
    out["web"] = out["browser"] = median3(web.stats, lambda: web.get("/api/v1/strings/1/cells", json_body=True))
    web.stats = real
    status = FaceStats("web-status")

    def get_status() -> None:
        t0 = time.perf_counter()
        gw.status()
        status.good(time.perf_counter() - t0)

    out["web-status"] = median3(status, get_status)
    polls = FaceStats("mbpoll")
    out["mbpoll"] = median3(polls, lambda: mbpoll(gw, polls))
    out["modbus"] = _idle_modbus(gw, ranges)
    return out


def _idle_modbus(gw: GatewayProcess, ranges: list[list[int]]) -> float:
    """Median latency of one full pass's reads by a single raw client with nothing else going on."""
    import asyncio

    from tests.soak.modbus_clients import RawClient, blocks

    async def one_pass() -> list[float]:
        client = RawClient("127.0.0.1", gw.modbus_port, 1)
        await client.connect()
        out = []
        for address, count in blocks(ranges):
            t0 = time.perf_counter()
            await client.read(4, address, count)
            out.append(time.perf_counter() - t0)
        await client.close()
        return out

    times = sorted(asyncio.run(one_pass()))
    return times[len(times) // 2]


def _prometheus_figures(prom: PrometheusServer, stats: FaceStats, t0: float, t1: float, plan: Plan) -> dict:
    """How the scrapes went, from Prometheus's own records over the load window."""
    time.sleep(1.0)  # the last scrape of the window is in the TSDB by now
    window = max(int(t1 - t0), int(plan.scrape_every_s))
    sel = 'up{job="bmsgw"}'
    scrapes = prom.scalar(f"count_over_time({sel}[{window}s])", t1) or 0
    up = prom.scalar(f"sum_over_time({sel}[{window}s])", t1) or 0
    dur = 'scrape_duration_seconds{job="bmsgw"}'
    figures = {
        "scrapes": int(scrapes), "up": int(up), "expected": (t1 - t0) / plan.scrape_every_s,
        "p50_s": prom.scalar(f"quantile_over_time(0.5, {dur}[{window}s])", t1),
        "p99_s": prom.scalar(f"quantile_over_time(0.99, {dur}[{window}s])", t1),
        "max_s": prom.scalar(f"max_over_time({dur}[{window}s])", t1),
        "samples": prom.scalar('scrape_samples_scraped{job="bmsgw"}', t1),
        "missed_by_gateway": prom.per_bus(f"increase(bms_gateway_bus_cycles_missed_total[{window}s])", t1),
        "cycles_by_gateway": prom.per_bus(f"increase(bms_gateway_bus_cycles_total[{window}s])", t1),
    }
    targets = prom.api("/api/v1/targets")["activeTargets"]
    figures["targets"] = [{"health": t["health"], "lastError": t["lastError"]} for t in targets]
    stats.ok = int(up)
    failed = int(scrapes - up)
    for t in targets:
        if t["health"] != "up" or t["lastError"]:
            stats.bad(f"target {t['scrapeUrl']}: {t['health']} {t['lastError']}")
    if failed:
        stats.bad(f"{failed} of {int(scrapes)} scrapes failed (up == 0)")
    if scrapes < figures["expected"] - 1:
        stats.bad(f"only {int(scrapes)} scrapes in {window} s, {figures['expected']:.0f} expected")
    return figures


def _progress(monitor: Monitor, load_start: Sample, gw: GatewayProcess, faces: dict, modbus: ModbusLoad,
              plan: Plan) -> str:
    s = monitor.samples[-1]
    minute = (s.t - load_start.t) / 60
    cyc = [int(_delta(load_start, s, b, "cycles")) for b in gw.buses]
    missed = sum(int(_delta(load_start, s, b, "cycles_missed")) for b in gw.buses)
    late = sum(int(_delta(load_start, s, b, "cycles_late")) for b in gw.buses)
    lag = max(s.buses[b]["last_lag_s"] for b in gw.buses)
    cycle = max(s.buses[b]["last_cycle_s"] for b in gw.buses)
    m = modbus.last
    return (f"soak {minute:4.1f}/{plan.load_s / 60:.0f} min: cycles {'/'.join(map(str, cyc))} "
            f"(missed {missed}, late {late}, last cycle {cycle:.2f} s, lag {lag:.3f} s); RSS {s.rss_mb:.1f} MB; "
            f"modbus {m.get('requests', 0)} reads ({m.get('errors', 0)} err), mbpoll {faces['mbpoll'].ok} "
            f"({faces['mbpoll'].errors} err), snmp {faces['snmp'].ok} walks ({faces['snmp'].errors} err), "
            f"web {faces['web'].ok} ({faces['web'].errors} err)")


def report(r: Result) -> list[str]:
    """The figures as lines of text; the last one is the headline."""
    p = r.plan
    sim = "`bmsgw simulate` in its own process" if p.sim_process else "the built-in simulator"
    lines = [f"soak: bmsgw run, default config (480 batteries, {len(r.buses)} buses, fast poll every {r.fast_s:g} s, "
             f"{sim}), "
             f"{r.load_s / 60:.1f} min of load after {p.baseline_s:.0f} s without: {p.modbus_clients} Modbus TCP "
             f"clients (whole map every {p.modbus_period_s:g} s, {p.modbus_pymodbus} of them pymodbus) + mbpoll "
             f"every {p.mbpoll_every_s:g} s, snmpbulkwalk every {p.snmp_every_s:g} s, Prometheus scrape every "
             f"{p.scrape_every_s:g} s, web page (every {p.web_every_s:g} s){' + chromium' if p.browser else ''}"]
    lines.append("poll cycles per bus (load window): done / expected, missed, late, overruns, max start lag, "
                 "mean cycle time load vs baseline, RS485 errors (timeouts, CRC/frame, exceptions) load/baseline")
    for name, b in r.buses.items():
        ratio = b.cycle_s_load / b.cycle_s_baseline if b.cycle_s_baseline else float("nan")
        lines.append(f"  {name}: {b.cycles} / {b.expected:.1f}, missed {b.missed}, late {b.late}, overruns "
                     f"{b.overruns}, max lag {b.max_lag_s:.3f} s, cycle {b.cycle_s_load:.3f} s vs "
                     f"{b.cycle_s_baseline:.3f} s ({ratio:.2f}x), bus errors {b.bus_errors}/{b.bus_errors_baseline}")
    rs = r.rss
    lines.append(f"RSS (MB): start {rs['start']:.1f}, load start {rs['load_start']:.1f}, after {p.warmup_s:.0f} s "
                 f"warm-up {rs['warm']:.1f}, end {rs['end']:.1f}, peak {rs['peak']:.1f}; after warm-up "
                 f"{r.rss_growth_mb:+.1f} MB, slope {r.rss_slope_mb_h:+.2f} MB/h")
    if len(r.rss_timeline) > 2:
        lines.append("RSS during the load (minute: MB): " + ", ".join(f"{m:.0f}: {mb:.1f}" for m, mb in r.rss_timeline))
    lines.append(f"gateway CPU: {r.cpu_baseline * 100:.0f} % of a core without load, {r.cpu_load * 100:.0f} % "
                 f"with ({r.cpu_load / max(r.cpu_baseline, 1e-9):.1f}x)")
    m = r.modbus
    lines.append(f"modbus: {m['requests']} reads ({m['registers'] / max(r.load_s, 1):.0f} registers/s, "
                 f"{m['passes']} full passes of {m['reads_per_pass']} reads, {m['slow_passes']} longer than the "
                 f"period), {m['errors']} errors, {m['reconnects']} reconnects")
    pr = r.prometheus
    lines.append(f"prometheus: {pr['scrapes']} scrapes ({pr['expected']:.0f} expected), up==1 in {pr['up']}, "
                 f"{pr['samples']:.0f} samples each, scrape duration p50 {_ms(pr['p50_s'])} p99 {_ms(pr['p99_s'])} "
                 f"max {_ms(pr['max_s'])}; gateway self-metrics via Prometheus: cycles "
                 f"{_bus_values(pr['cycles_by_gateway'])}, missed {_bus_values(pr['missed_by_gateway'])}")
    lines.append(f"snmp: {r.faces['snmp'].ok + r.faces['snmp'].errors} walks, {r.snmp_varbinds[0]} varbinds "
                 f"each without load, at least {r.snmp_varbinds[1]} under load; {len(r.snmp_changes)} walks "
                 f"differed{': ' + '; '.join(r.snmp_changes[:3]) if r.snmp_changes else ''}")
    if r.browser_api_responses is not None:
        lines.append(f"browser: the string page's own script fetched the batteries {r.browser_api_responses} times")
    lines.append("latency per face under load (idle = one request with no load; ratio p50/idle):")
    for name, f in r.faces.items():
        base = r.idle.get(name)
        if name == "prometheus":  # as Prometheus measured each scrape (scrape_duration_seconds)
            p50, text = pr["p50_s"], f"p50 {_ms(pr['p50_s'])}, p99 {_ms(pr['p99_s'])}, max {_ms(pr['max_s'])} " \
                                     f"({pr['scrapes']} scrapes)"
        else:
            p50, text = (f.latency.quantile(0.5) if f.latency.count else None), f.latency.summary_ms()
        ratio = f" ({p50 / base:.1f}x idle {base * 1000:.1f} ms)" if base and p50 else ""
        lines.append(f"  {name:10s} {text}{ratio}; ok {f.ok}, errors {f.errors}"
                     + (f": {f.error_samples[:3]}" if f.errors else ""))
    problems = ": " + repr(r.log_problems[:3]) if r.log_problems else ""
    load_errors = "; " + "; ".join(r.load_errors) if r.load_errors else ""
    lines.append(f"gateway log: {len(r.log_problems)} ERROR lines{problems}; exit code {r.exit_code}{load_errors}")
    lines.append(f"soak headline: {r.missed} poll cycles missed ({r.short_cycles} short of the schedule) in "
                 f"{r.load_s / 60:.1f} min under load, {r.face_errors} face errors, RSS {rs['load_start']:.1f} -> "
                 f"{rs['end']:.1f} MB ({r.rss_growth_mb:+.1f} MB after warm-up, {r.rss_slope_mb_h:+.2f} MB/h)")
    return lines


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def _bus_values(d: dict) -> str:
    return "/".join(f"{v:.0f}" for _, v in sorted(d.items())) or "-"

