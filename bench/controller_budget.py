"""Controller budget: the CPU and memory `bmsgw run` takes at steady state, per component.

The issue-18 setup: the default bank (4 strings x 120 2 V cells, a string sensor per string, the charger
monitor and the I/O module; 4 buses at 115200 baud, `fast_s: 5`), every face on (Modbus TCP, SNMP, web,
Prometheus, MQTT to a local mosquitto when one is installed, and whatever other face the config has), the
sensors in a process of their own (`bmsgw simulate`), no client connected.  After the first complete poll
cycle of every bus and a warm-up, the gateway's CPU seconds (/proc/PID/stat, user + system) over the window
give its share of one core of this machine; py-spy (pinned in the lock, dev extra), recording the gateway
from outside without pausing it, splits it per component: each sample of a thread holding the GIL counts for
the deepest frame of the gateway's own code on its stack (engine, analytics, alarms, history, strings, the
store's fan-out, each face under gateway/outputs, the faces' servers in gateway/net).  Also printed: RSS
(and its peak), start-up to the first complete poll cycle, the poll cycles missed, and the share on a core 20x
slower (the BM-BMS controller's Cortex-A8 at 800 MHz, DOMAIN.md).  The machine may be shared: the load
average is printed; CPU seconds, not wall time, are what is counted.

    .venv/bin/python bench/controller_budget.py [--seconds 120] [--warmup 75] [--batteries 480] [--fast-s 5]
    .venv/bin/python bench/controller_budget.py --variants     # also 1 battery, 2 x 480, fast_s 1

Measured on this machine (2 cores shared with other work, load average 10-18, so CPU seconds run slow and
vary by about 20 % from run to run; `--tree` measures another checkout under the same load):
    before issue 18: CPU 6.19 % of one core, RSS 125.5 MB, start-up 9.7 s; engine 34 %, history 19 % (the
    store listener's queue hand-off), MQTT 15 %, analytics 13 %, the rest alarms, store fan-out, web.
    after: 4.8-5.6 % of one core, RSS 116-117 MB; engine 25-29 %, MQTT 22-24 %, analytics 15 %, alarms 9-10 %,
    event loop 10 %, store fan-out 6-10 %, history 3 %.  1 battery: 0.4 %, 66 MB; 4 x 240: 10.8 %, 170 MB;
    fast_s 1: 17 % (MQTT publishes every cycle: 39 % of it).
    MQTT and alarms proportional to what changed (MQTT payloads from the change feed, alarms judged on changed
    values with a deadline heap), measured against main (`--tree`) in the same session, load average 2.5-3.4:
    main 4.45 % of one core (engine 1.43, MQTT 0.87, alarms 0.46 % of a core), RSS 120.8 MB; this branch 4.92 and
    5.25 % (engine 1.68-1.77: the run was slower, CPU seconds vary ~20 %; MQTT 0.71-0.78, alarms 0.46-0.49 %),
    RSS 122.8 MB.  Against the engine in the same run, MQTT went from 61 % to 42 % of the engine's share, alarms
    from 32 % to 29 %.  The simulated bank writes 5 of the 18 cell columns (2500 of 8300 points) every 5 s cycle;
    on that pattern a publish cycle costs 8-10 ms instead of 18-22 ms and an alarm evaluation 11 ms instead of
    16-18 ms (bench/changed_work.py, both paths in one process on the same store states).  The last changes (a
    column read whole when mostly written, a reference point's value kept) came after the runs above.
    engine/analytics/memory pass (branch i18-engine: a bus's readings stored together per cycle, PointRef a named
    tuple, points stored under the point map's own refs, SNMP point instances without a closure each): RSS
    121.1-121.2 MB -> 113.8-115.9 MB (main and this branch measured alternately, 4 runs each way); CPU not
    measurably lower in total under this machine's noise (bench: main 5.17 %, branch 4.57 % and 4.74 %; 60 s
    A/B pairs: 6.98 vs 5.40 %, 4.77 vs 4.95 %), its split moved: store fan-out 7 % -> 2 % of it, analytics
    11 % -> 6.5 %, MQTT 23 % -> 15 % (its point lookups), while the RTU transport and the event loop's own
    work per transaction (about 100 a second: silence timer, reply, task wake-ups) are now over half of it.
    CPU pass outside the engine (branch i18-cpu: alarms, MQTT, history, store fan-out, strings, analytics made
    cheaper per changed reading), `--seconds 90 --warmup 45 --detail 30`, load average 0.9-1.9: main (`--tree`
    of main 26bf38e) 4.79 % of one core, those components 1.80 % of a core (MQTT 0.58, analytics 0.49, alarms
    0.30, history 0.24, store fan-out 0.19, strings 0.01); branch 4.93 and 4.43 %, those components 1.67 and
    1.49 % (MQTT 0.37-0.38, analytics 0.55-0.67 (the second window held the analytics' first jobs run and a
    daily flush), alarms 0.11-0.32, history 0.16-0.24, store fan-out 0.17-0.19), RSS 116-117 MB.  The totals
    are within this machine's run-to-run noise (about 500 busy samples a run; the engine and the event loop,
    2.8-3.0 % of a core, are outside this pass); bench/changed_work.py measures the same components in one
    process: 36 -> 27 ms per 5 s cycle.
    memory pass (branch i18-mem, `--seconds 60 --warmup 45`): RSS 116 MB (main, the runs above) -> 87.4 MB after the
    first three changes -> 77.1 MB (1 battery: 66 -> 43.9 MB). Where it went (tracemalloc on the default bank,
    importtime, sys.modules): the web trend buffer 13.2 MB -> 6.2 MB (one slot time axis shared by every series,
    float32 value + uint16 offset in the slot); the SNMP OID index and its sections 11.7 -> 5.5 MB (instances share
    their object type's and index's tuples and their fixed values); NUT per-battery variables 1.9 -> 1.0 MB; the
    Modbus TCP image's per-point table (1.2 MB) gone; and what a running gateway loads only at the first request
    that needs it: pysnmp + pyasn1 + cryptography (~11 MB; the v2c fast path answers reads without them),
    Flask/Werkzeug/Jinja (~7.5 MB, the first page), prometheus-client with http.server/email (~1.5 MB, the first
    scrape), pymodbus (~1 MB, the first FC43 device identification), smtplib/urllib.request (the first mail or
    webhook). Those imports come back at first use and stay: a browser, a Prometheus server and an SNMPv3 manager
    (or a SET) together add about 20 MB (their import costs, measured one by one, not with this bench).

    RTU bus threads (the engine hands each bus's thread a sweep a few devices at a time; the event loop wakes once
    per batch, not several times per transaction), readings as named tuples, decoders specialised per register
    spec, with the CPU and memory passes above, all merged (main 4ff9e43), quiet machine (load average
    0.0-0.7), `--seconds 90 --warmup 40 --variants`: **2.36 % of one core** (47 % of the controller; 12 % of it
    in the kernel), **RSS 78.3 MB**, start-up 3.1 s, no cycle missed; engine 1.27 % of a core (transport thread
    about 0.8 of it), analytics 0.28, MQTT 0.20, alarms 0.15, store fan-out 0.15, history 0.08, web 0.07, event
    loop 0.05.  1 battery: 0.23 %, 44.1 MB; 2 x 480: 4.81 %, 111.7 MB; fast_s 1: 9.69 %, 78.6 MB.  The last
    stop measured 4.66 % and 116.0 MB on the same quiet machine.

    Per thread (exact, from /proc/PID/task; printed since session 6), main da4bfed, `--seconds 60 --warmup 30`,
    load average 0.3-1.0: 2.73 % of one core: RTU bus threads 1.38 % (half of it), event loop thread 0.90,
    executor (analytics tick) 0.28, history writer 0.15, MQTT's threads 0.05.  py-spy, which sees a thread only
    while it holds the GIL, had put the whole engine at 1.06 %: most of a bus thread's CPU is its wake-ups and
    system calls (two wake-ups per transaction, about 100 transactions a second), which the GIL samples miss.
    The split per component now takes the bus threads from /proc and lets py-spy split the rest.
    Session 6 (analytics per string in columns, alarms and MQTT cheaper per changed reading, less Python per
    RTU transaction, a block decoded from one tuple per value, the history writer waking once a second), main
    adbf3f6, `--seconds 60 --warmup 75`, load average 0.4-0.8: **1.95 % of one core** (two runs), RSS 78.9-79.2
    MB; bus threads 0.93-0.95, event loop thread 0.73-0.75, analytics' executor 0.07-0.08, history writer
    0.08-0.13, MQTT's threads 0.07.  A transaction in a bus thread costs about 100 us of CPU here, most of it
    its two wake-ups (the reply, the end of the silence after it) and the Python run right after each, with
    cold caches: one thread driving every bus (fewer wake-ups and no GIL hand-offs between buses, each bus a
    generator) measured 20-40 % dearer per transaction, and select() for the silence (one system call less)
    no cheaper.
    Session 7, alarms/history/store pass (branch i18-cpu3 on main 8306170, one run, `--seconds 90 --warmup 40
    --detail 40`, load average 0.5-0.9, 95 busy samples: a component's share +-30 % or worse): 1.62 % of one
    core, RSS 79.2 MB; alarms 0.035 % of a core (the brief's split of main: 0.116), history (``add``) 0.070
    (0.068), the history-writer thread 0.056 (0.089, exact from /proc), store fan-out 0.105 (0.096: get_many
    0.044 and _publish 0.044, within the noise; the readers' column reads, analytics and MQTT, are most of
    it).  bench/recorded_work.py measures the same work without the sampling noise: 6.7 -> 4.7 ms per cycle.
    Session 7, all merged (the RTU transport's straight way, the engine's way for a device in good standing, a
    flag register decoded without the general path, one malloc arena, the alarms/history/store pass), main
    ef5101b, quiet machine (load average 0.0-0.5): the same code measured 1.29 % of one core at 05:20 UTC (with
    the MQTT pass below) and 1.92 % at 05:50 (`--seconds 60`), the session's starting point (8306170, `--tree`)
    1.77 % at 05:35 and 1.95 % at 05:52: this machine's phase moves the total by a third, the bus threads most
    (0.64 -> 1.05 % of a core for the same transactions), far more than this pass's gain on the total (1.92
    against 1.95 % run alternately in the same phase; each change measured on its own: below and in the commit
    messages).  RSS 78.7-78.8 MB (8306170: 79.1-79.2 MB; one malloc arena -3 MB, the new work +2 MB).  An MQTT and
    web live buffer pass (branch i18-cpu4: 0.03 % of a core) was merged and reverted: RSS 80.0-80.2 MB with it.
    1 battery 0.17 %, 43.5 MB; 2 x 480 3.83 %, 113.3 MB; fast_s 1 7.78 %, 79.1 MB (`--seconds 60`, each run beside
    one of the default bank's: the load of a second gateway).
    Session 8: the bus threads' CPU per transaction beside a floor measured in the same run (bench/_rtu_floor.py:
    the same system calls and nothing else, 10 s on the first bus before the gateway starts): 0.74-1.79x the floor,
    median 1.0 (18 runs of main 7855d4a and 4ac6782): at it within its noise; what Python the bus threads run adds
    nothing measurable.  The floor itself moved from 63 to 145 us per transaction within two hours (session 7 measured
    42-45 us with a loop of its own): with about 97 transactions a second, 0.6-1.4 % of a core before anything
    else, which is what moves the total.  Runs one after the other are no A/B here (base and change, alternated,
    measured 1.75-1.88 % against 2.00-2.38 %, the change's way); ``--beside`` runs both at once: the young GC
    generation collected every 10,000 allocations (main 8bbe1f7) against 4ac6782, five pairs, each carrying the
    other's load: 2.18/2.22/2.48/2.18/2.27 % against 2.37/2.40/2.53/2.33/2.37 % (0.91-0.98x; the event loop
    thread 0.77-0.83 against 0.80-0.87 % of a core, the analytics' executor 0.13-0.20 against 0.20-0.25).  Alone,
    in the slow phase of the end of the session (the floor 115-145 us, `--variants --seconds 60 --warmup 30`):
    2.35 % of one core (bus threads 1.28, event loop 0.75, analytics 0.18), RSS 78.6 MB, start-up 2.9 s; 1 battery
    0.22 %, 43.5 MB; 2 x 480 4.48 %, 113.0 MB; fast_s 1 10.43 %, 79.0 MB.  Then batches of PUBLISH_S of wire
    time, published at their end (main 920c306), against 136184b with ``--beside``: 0.97x and 0.96x (the event
    loop thread 0.07-0.08 % of a core lower; two earlier pairs with the readings published every 250 ms: 0.93x).
    Session 10: the floor above was one bus read back to back while the other core idled, a dearer pattern than
    the gateway's.  Measured as the engine works (bench/_rtu_floor.py now: every bus at once, a sweep every
    fast_s) it is 52-70 us per transaction (0.68 % of a core): the bus threads take 1.34x it (94 us), the
    transport alone (its own script, no engine) 59-69 us against 52-59 in the same minutes, so about 8 us is
    its Python and the rest the process around it (GIL hand-overs: 2.2 wake-ups a transaction against 2.0).
    One thread for all four buses in lock step, which halves the wake-ups in theory, took 64-78 against 53-70 us
    (a throwaway prototype: the replies do not come together, 1.47 wake-ups a transaction); one select() for
    the silence and the line check instead of a sleep and a poll, 63-66 against 59-70 us: neither pays.  The
    default bank: 1.87 % of one core, of which the floor 0.68, the bus threads' own 0.23, the event loop thread
    0.64, the analytics' executor 0.16; RSS 78.7 MB.
    Session 11, main a94bf28 and 9c9e81e, load average 0.1-0.9: 1.59-1.67 % of one core (floor 0.44-0.54; the bus
    threads 84-92 us a transaction, 1.68-1.84x it), RSS 78.5-78.9 MB, start-up 2.3-2.4 s; 1 battery 0.17 %, 43.6
    MB; 2 x 480 3.47 %, 112.9 MB; fast_s 1 7.05 %, 78.8 MB.  The event loop thread (0.53 % of a core; 962 samples
    at 1000 a second over 150 s): engine 37 %, MQTT 32 %, alarms 10 %, asyncio's own wake-ups about 10 %.  With
    every face, the alarms, the history and the analytics off (a throwaway copy of this bench): 1.16 % in all,
    the bus threads 78 us a transaction against a floor of 54 (1.43x), the event loop thread 0.31 %: what the
    bus threads cost over the floor is not the other components' doing.

The last line printed is the headline: the default bank's CPU share of one core and its RSS, against the
targets (1.5 % of one core, 80 MB).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from _common import ROOT, SimProcess

CPU_TARGET_PCT = 1.5
RSS_TARGET_MB = 80.0
SLOWER = 20  # the controller's core against one core of this machine, for Python (DOMAIN.md)
TICK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bank(strings: int, cells: int, fast_s: float, tree: Path = ROOT) -> dict:
    """The default config with ``strings`` strings (at most 4, the register map's) of ``cells`` batteries
    (up to 240 on a bus: the charger monitor and the I/O module move to the top addresses), every face on a
    free port; from ``tree``'s config.yaml."""
    data = yaml.safe_load((tree / "config.yaml").read_text())
    data["strings"] = data["strings"][:strings]
    data["buses"] = data["buses"][:strings]
    for s in data["strings"]:
        s["cells"] = cells
        for d in s["devices"]:
            if "count" in d:
                d["count"] = cells
    if cells + 1 >= min(d["address"] for d in data["bank"]["devices"]):  # the cell sensors reach their addresses
        for i, d in enumerate(data["bank"]["devices"]):
            d["address"] = 247 - len(data["bank"]["devices"]) + 1 + i
    data["gateway"]["poll"]["fast_s"] = fast_s
    data["gateway"]["log_level"] = "INFO"
    for name, section in data.items():  # every face on, on a port of its own
        if isinstance(section, dict) and "listen" in section:
            host = section["listen"].rsplit(":", 1)[0]
            kind = socket.SOCK_DGRAM if name == "snmp" else socket.SOCK_STREAM
            section["listen"] = f"{host}:{free_port(kind)}"
            if "enabled" in section:
                section["enabled"] = True
    return data


@contextlib.contextmanager
def on_simulator(data: dict, folder: Path) -> Iterator[Path]:
    """``data``'s sensors in a process of their own (`bmsgw simulate`, state in ``folder``/sim) while the block
    runs; yields the gateway's config file, its buses on the simulator's pseudo-terminals (``data`` changed
    to match)."""
    sim_data = {**data, "gateway": {**data["gateway"], "state_dir": str(folder / "sim")}}
    (folder / "sim.yaml").write_text(yaml.safe_dump(sim_data, sort_keys=False))
    with SimProcess(folder / "sim.yaml") as sim:
        data["simulator"]["enabled"] = False
        for b in data["buses"]:
            b["port"] = sim.ports[b["name"]]
        data["gateway"]["state_dir"] = str(folder / "var")
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        yield config


@dataclass
class Broker:
    """A local mosquitto for the MQTT face (no client subscribes); None when mosquitto is not installed."""
    proc: subprocess.Popen | None = None
    port: int = 0

    @classmethod
    def start(cls, folder: Path) -> Broker:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            return cls()
        port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return cls(proc, port)
            except OSError:
                time.sleep(0.05)
        proc.kill()
        return cls()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def proc_cpu_s(pid: int) -> float:
    return sum(proc_user_system_s(pid))


def proc_user_system_s(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def thread_writes(pid: int) -> dict[int, int]:
    """Write system calls of each of the process's threads, by thread id (/proc/PID/task/TID/io): a bus thread
    writes once per request, so these count its transactions."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            io = (task / "io").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = int(re.search(r"^syscw:\s+(\d+)", io, re.M)[1])
    return out


def rtu_floor(ports: list[str], baud: int, units: range, seconds: float, fast_s: float) -> dict[str, float]:
    """bench/_rtu_floor.py on every bus at once, a sweep every ``fast_s``: CPU seconds and transactions of the bare
    system calls (see its docstring)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "_rtu_floor.py"), ",".join(ports), str(baud),
                          str(units.start), str(units.stop - 1), str(seconds), str(fast_s)],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"bench/_rtu_floor.py failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each of the process's threads, by thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


THREAD_GROUPS = ((re.compile(r"bus-"), "RTU bus threads"), (re.compile(r"MainThread$"), "event loop thread"),
                 (re.compile(r"asyncio_\d+$"), "executor threads (analytics tick)"))


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> the Python thread's name (``py-spy dump``, without pausing the process); {} without py-spy."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        return {}
    out = subprocess.run([str(exe), "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                         timeout=60).stdout
    return {int(m[1]): m[2] for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.M)}


def thread_group(name: str) -> str:
    for pattern, group in THREAD_GROUPS:
        if pattern.match(name):
            return group
    return name or "unnamed threads"


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return (int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024,
            int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024)


# the module (relative to gateway/, without .py) or package -> the component its CPU is counted under
COMPONENTS = {
    "engine": "engine", "modbus": "engine", "scan": "engine", "regmap": "engine",
    "analytics": "analytics", "alarms": "alarms", "history": "history", "strings": "strings",
    "notify": "notify", "points": "store fan-out", "pointmap": "store fan-out", "exposition": "prometheus",
    "net": "face servers (gateway/net)", "sim": "simulator", "simrun": "simulator", "reports": "reports",
}
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*):(?P<line>\d+)\)$")


def component_of(path: str, tree: Path = ROOT) -> str | None:
    """The component a source file belongs to, None for code outside the gateway (stdlib, libraries)."""
    gateway, plugins = str(tree / "gateway") + os.sep, str(tree / "plugins") + os.sep
    if path.startswith(gateway):
        parts = path[len(gateway):].removesuffix(".py").split(os.sep)
        if parts[0] == "outputs" and len(parts) > 1:
            return parts[1]
        return COMPONENTS.get(parts[0], "core")
    if path.startswith(plugins):
        return "device plugins"
    return None


BUS_THREADS = "engine: bus threads"  # the RTU transport's threads, counted from /proc (see measure)
BUS_THREAD_ROOT = os.sep + os.path.join("modbus", "transport.py")


def split_profile(raw: str, tree: Path = ROOT) -> tuple[dict[str, int], dict[str, int]]:
    """py-spy's raw (collapsed) stacks -> samples per component and per function: each stack counts for the
    deepest frame of the gateway's own code on it (a library or the standard library working for the gateway
    counts for the part that called it); "other" for stacks with none (the event loop, a library's thread).
    A bus thread's stacks count for BUS_THREADS whatever their deepest frame."""
    components: dict[str, int] = {}
    functions: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        root = next((FRAME.match(f) for f in frames if "gateway" in f), None)  # the thread's first gateway frame
        if root is not None and root["file"].endswith(BUS_THREAD_ROOT) and root["func"] == "_run":
            where = f"{os.path.relpath(root['file'], tree)}:{frames[-1].split(' (')[0]}"
            components[BUS_THREADS] = components.get(BUS_THREADS, 0) + int(count)
            key = f"{BUS_THREADS}  {where}"
            functions[key] = functions.get(key, 0) + int(count)
            continue
        name, where = "other", ""
        for frame in reversed(frames):
            m = FRAME.match(frame)
            if m is None:
                continue
            found = component_of(m["file"], tree)
            if found == "core" and m["file"].endswith(os.sep + "cli.py"):
                found = "event loop"  # `bmsgw run`'s asyncio.run: the loop's own work between callbacks
            if found is not None:
                name, where = found, f"{os.path.relpath(m['file'], tree)}:{m['func']}"
                break
            if not where:
                where = f"{os.path.basename(m['file'])}:{m['func']}"
        components[name] = components.get(name, 0) + int(count)
        key = f"{name:>14}  {where}"
        functions[key] = functions.get(key, 0) + int(count)
    return components, functions


class Profiler:
    """py-spy (pinned in the lock) recording the gateway for ``seconds``, without pausing it; None when py-spy
    is missing (the bench then prints the total only)."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int, gil: bool, tree: Path) -> None:
        self.tree = tree
        exe = Path(sys.executable).parent / "py-spy"
        self.out = out
        self.proc: subprocess.Popen | None = None
        if exe.exists():
            self.proc = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                          "--rate", str(rate), "--nonblocking", "--format", "raw", "--full-filenames",
                                          *(["--gil"] if gil else []), "--output", str(out)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def result(self) -> tuple[dict[str, int], dict[str, int]] | None:
        if self.proc is None:
            return None
        _, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0 or not self.out.exists():
            print(f"   (py-spy failed: {err.strip()[-300:]})")
            return None
        return split_profile(self.out.read_text(errors="replace"), self.tree)  # (py-spy may print raw bytes)


@dataclass
class Result:
    label: str
    batteries: int
    seconds: float = 0.0
    cpu_s: float = 0.0
    samples: int = 0
    system_s: float = 0.0  # of cpu_s, in the kernel (system calls, wake-ups)
    threads: dict[str, float] = field(default_factory=dict)  # CPU seconds per thread group (exact, /proc)
    components: dict[str, float] = field(default_factory=dict)  # CPU seconds per component
    functions: dict[str, float] = field(default_factory=dict)  # CPU seconds per deepest gateway function
    rss: float = 0.0
    hwm: float = 0.0
    startup_s: float = 0.0
    missed: int = 0
    problems: list[str] = field(default_factory=list)
    loadavg: str = ""
    bus_transactions: int = 0  # in the window, every bus (write system calls of the bus threads)
    floor: dict[str, float] = field(default_factory=dict)  # bench/_rtu_floor.py's result, this run

    @property
    def share(self) -> float:
        return 100.0 * self.cpu_s / self.seconds


def measure(label: str, strings: int, cells: int, fast_s: float, seconds: float, warmup: float,
            keep: Path | None, rate: int, gil: bool, tree: Path = ROOT, floor_s: float = 15.0) -> Result:
    folder = Path(tempfile.mkdtemp(prefix="bmsgw-budget-"))
    result = Result(label, strings * cells)
    broker = Broker.start(folder)
    try:
        data = bank(strings, cells, fast_s, tree)
        if broker.proc is not None:
            data["mqtt"].update(enabled=True, host="127.0.0.1", port=broker.port)
        with on_simulator(data, folder) as config:
            if floor_s > 0:  # before the gateway takes the buses: their cell sensors (units 2.., after the string's)
                buses = data["buses"]
                result.floor = rtu_floor([b["port"] for b in buses], buses[0]["baud"], range(2, 2 + cells), floor_s,
                                         fast_s)
            log_path = folder / "gateway.log"
            with open(log_path, "w") as log:
                started = time.monotonic()
                # `python -m gateway` in the tree measured (another checkout: an A/B on the same machine state)
                proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)], cwd=tree,
                                        stdout=subprocess.DEVNULL, stderr=log)
            try:
                deadline = started + 180
                while True:
                    text = log_path.read_text()
                    if text.count("first poll cycle took") >= len(data["buses"]):
                        result.startup_s = time.monotonic() - started
                        break
                    if proc.poll() is not None:
                        raise RuntimeError(f"bmsgw run exited:\n{text[-3000:]}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no complete poll cycle within 180 s:\n{text[-3000:]}")
                    time.sleep(0.05)
                time.sleep(warmup)
                profiler = Profiler(proc.pid, seconds, folder / "profile.txt", rate, gil, tree)
                (u0, s0), t0, per_thread0 = proc_user_system_s(proc.pid), time.monotonic(), thread_cpu_s(proc.pid)
                writes0 = thread_writes(proc.pid)
                time.sleep(seconds)
                (u1, s1), t1, per_thread1 = proc_user_system_s(proc.pid), time.monotonic(), thread_cpu_s(proc.pid)
                writes1 = thread_writes(proc.pid)
                names = thread_names(proc.pid)
                for tid, cpu in per_thread1.items():
                    group = thread_group(names.get(tid, ""))
                    result.threads[group] = result.threads.get(group, 0.0) + cpu - per_thread0.get(tid, 0.0)
                    if group == "RTU bus threads":
                        result.bus_transactions += writes1.get(tid, 0) - writes0.get(tid, 0)
                c0, c1 = u0 + s0, u1 + s1
                result.system_s = s1 - s0
                profile = profiler.result()
                result.rss, result.hwm = rss_mb(proc.pid)
                result.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            text = log_path.read_text()
            result.seconds = t1 - t0
            result.cpu_s = c1 - c0
            if profile is not None:
                # py-spy sees a thread only while it holds the GIL: the bus threads' system calls and wake-ups
                # (most of their CPU) would be spread over every component.  Their CPU is counted exactly from
                # /proc instead, and the samples split the rest.
                counts, functions = profile
                bus_cpu = result.threads.get("RTU bus threads", 0.0)
                counts.pop(BUS_THREADS, None)
                functions = {k: v for k, v in functions.items() if not k.startswith(BUS_THREADS)}
                busy = sum(counts.values()) or 1
                result.samples = sum(counts.values())
                rest = result.cpu_s - bus_cpu
                result.components = {k: rest * v / busy for k, v in counts.items()}
                if bus_cpu:
                    result.components[BUS_THREADS] = bus_cpu
                result.functions = {k: rest * v / busy for k, v in functions.items()}
            result.missed = sum(int(m) for m in re.findall(r"(\d+) poll cycle\(s\) missed", text))
            result.problems = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line][:5]
    finally:
        broker.stop()
        if keep is not None:
            shutil.copytree(folder, keep / label.replace(" ", "_"), dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    return result


def report(r: Result, detail: int) -> None:
    print(f"== {r.label}: {r.batteries} batteries, {r.seconds:.0f} s of steady state (load average {r.loadavg})")
    print(f"   CPU {r.cpu_s:.2f} s = {r.share:.2f} % of one core here; on a core {SLOWER}x slower "
          f"{r.share * SLOWER:.0f} %; {100 * r.system_s / max(r.cpu_s, 1e-9):.0f} % of it in the kernel")
    if r.threads:
        print("   per thread (exact, /proc/PID/task):")
    for name, cpu in sorted(r.threads.items(), key=lambda kv: -kv[1]):
        if cpu > 0:
            share = 100 * cpu / (r.cpu_s or 1)
            print(f"   {name:>34}: {100 * cpu / r.seconds:6.3f} % of a core ({share:4.1f} % of it)")
    if r.components:
        print(f"   per component (the bus threads from /proc; the rest split by py-spy, {r.samples} busy samples "
              f"of the GIL's holder):")
    for name, cpu in sorted(r.components.items(), key=lambda kv: -kv[1]):
        print(f"   {name:>22}: {100 * cpu / r.seconds:6.3f} % of a core ({100 * cpu / (r.cpu_s or 1):4.1f} % of it)")
    bus_cpu = r.threads.get("RTU bus threads", 0.0)
    if r.bus_transactions and bus_cpu:
        per_tx = 1e6 * bus_cpu / r.bus_transactions
        line = (f"   RTU transactions: {r.bus_transactions / r.seconds:.0f} a second; the bus threads' CPU "
                f"{per_tx:.0f} us each")
        if r.floor.get("transactions"):
            floor_us = 1e6 * r.floor["cpu_s"] / r.floor["transactions"]
            floor_share = 100 * r.bus_transactions * floor_us / 1e6 / r.seconds
            line += (f"; the floor in this run (bench/_rtu_floor.py: the same system calls and nothing else, every "
                     f"bus at once in sweeps, "
                     f"{r.floor['transactions']:.0f} transactions, {r.floor['replies']:.0f} answered) "
                     f"{floor_us:.0f} us: {per_tx / floor_us:.2f}x the floor ({floor_share:.3f} % of a core)")
        print(line)
    print(f"   RSS {r.rss:.1f} MB (peak {r.hwm:.1f} MB); start-up to the first complete poll cycle "
          f"{r.startup_s:.1f} s; poll cycles missed {r.missed}")
    if detail:
        print(f"   the {detail} functions that took most (the deepest frame of the gateway's code):")
        for name, cpu in sorted(r.functions.items(), key=lambda kv: -kv[1])[:detail]:
            print(f"   {100 * cpu / r.seconds:6.3f} %  {name}")
    for line in r.problems:
        print(f"   gateway logged: {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="steady-state window (default 120)")
    ap.add_argument("--warmup", type=float, default=75.0,
                    help="seconds after the first complete poll cycle before the window opens (default 75: past "
                         "the analytics' first forecast run, analytics.jobs_delay_s, which then runs every 6 h)")
    ap.add_argument("--batteries", type=int, choices=(1, 480, 960), default=480,
                    help="1 battery, the default bank (4 x 120) or 2 x 480 (4 x 240: four strings is the register "
                         "map's most, so the buses carry twice the sensors)")
    ap.add_argument("--fast-s", type=float, default=5.0, help="gateway.poll.fast_s (default 5, as shipped)")
    ap.add_argument("--variants", action="store_true",
                    help="after the default bank: 1 battery, 2 x 480 batteries and fast_s 1, each in its own run")
    ap.add_argument("--rate", type=int, default=200, help="py-spy's samples per second (default 200)")
    ap.add_argument("--syscalls", action="store_true",
                    help="count the samples of threads in a system call too (py-spy without --gil): on a loaded "
                         "machine these are mostly a thread waiting for a CPU after waking another process")
    ap.add_argument("--tree", type=Path, default=ROOT,
                    help="the checkout whose gateway is measured (default this one): e.g. a worktree of an older "
                         "commit, for a comparison under the same load (the simulator is always this checkout's)")
    ap.add_argument("--beside", type=Path, default=None, metavar="TREE",
                    help="measure TREE's gateway at the same time, on a simulator of its own, and print both: an A/B "
                         "in the same machine phase (runs one after the other drift apart by more than most changes "
                         "gain); each carries the load of the other")
    ap.add_argument("--detail", type=int, default=0, metavar="N",
                    help="also print the N functions that took most CPU")
    ap.add_argument("--keep", type=Path, default=None, help="keep each run's folder (config, log, profile) here")
    ap.add_argument("--floor-seconds", type=float, default=15.0,
                    help="seconds of bench/_rtu_floor.py on every bus before the gateway starts (a sweep every fast_s, "
                         "as the engine's): the CPU of an RTU transaction's bare system calls in this run, beside the "
                         "bus threads' (0: not measured)")
    args = ap.parse_args()
    shapes = {1: (1, 1), 480: (4, 120), 960: (4, 240)}
    runs = [(f"{args.batteries} batteries, fast_s {args.fast_s:g}", *shapes[args.batteries], args.fast_s)]
    if args.variants:
        runs += [("1 battery", 1, 1, 5.0), ("2 x 480 batteries", 4, 240, 5.0), ("480 batteries, fast_s 1", 4, 120, 1.0)]
    results = []
    for label, strings, cells, fast_s in runs:
        def run(tree: Path, label: str = label, strings: int = strings, cells: int = cells,
                fast_s: float = fast_s) -> Result:
            return measure(label, strings, cells, fast_s, args.seconds, args.warmup, args.keep, args.rate,
                           not args.syscalls, tree.resolve(), args.floor_seconds)

        if args.beside is None:
            r = run(args.tree)
            report(r, args.detail)
        else:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                other = pool.submit(run, args.beside, f"{label} beside")
                r = run(args.tree)
                b = other.result()
            report(r, args.detail)
            print(f"-- at the same time, on a simulator of its own: {args.beside}")
            report(b, args.detail)
            print(f"-- {args.tree}: CPU {r.share:.2f} % of one core against {b.share:.2f} % beside it "
                  f"({r.share / (b.share or 1):.2f}x); RSS {r.rss:.1f} against {b.rss:.1f} MB")
        results.append(r)
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            print(f"{r.label}: CPU {r.share / (base.share or 1):.2f}x, RSS {r.rss / base.rss:.2f}x the first run")
    head = results[0]
    floor = ""
    if head.floor.get("transactions") and head.bus_transactions:
        # (how much of the total this machine's system calls alone took, in this run: what its phase moves)
        floor_share = 100 * head.bus_transactions * head.floor["cpu_s"] / head.floor["transactions"] / head.seconds
        floor = f", {floor_share:.2f} % of it the floor of its RTU transactions' system calls here"
    print(f"controller budget ({head.label}): CPU {head.share:.2f} % of one core (target {CPU_TARGET_PCT} %, "
          f"{head.share * SLOWER:.0f} % of the controller{floor}), RSS {head.rss:.1f} MB (target "
          f"{RSS_TARGET_MB:.0f} MB)")


if __name__ == "__main__":
    main()
