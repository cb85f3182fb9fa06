"""Power loss, the long run: SIGKILL at random moments, many times, and everything acknowledged is still there.

1. The history writer and config saver (tests/powerloss.py, the same child the test suite kills 30 times):
   ``--kills`` kills (default 200), each followed by ``PRAGMA integrity_check`` and a check of every row the
   writer ever acknowledged, to the value, and of the config file (a whole version, never older than the last
   save that returned).
2. The real gateway: ``bmsgw run`` on the simulator with the web API, killed ``--gateway-kills`` times (default
   20) while the history commits every 0.2 s and a client PUTs a new config to /api/v1/config as fast as it is
   answered.  After each kill: integrity_check of every database in the state folder, every commit the
   gateway logged as durable (``history: commit N durable: ... R raw rows (t A..B)``) still has its rows, and
   the config file is valid and is the last acknowledged save or the one in flight.
3. The price of durability: a history commit with ``synchronous=FULL`` (what the writer uses) against
   ``NORMAL`` on this disk, same rows.

    .venv/bin/python bench/power_loss.py [--kills 200] [--gateway-kills 20]

The last line is the headline.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml

from bench._common import BMSGW
from gateway.history.db import EPOCH, HistoryDB, encode_vector
from tests.powerloss import PowerLoss

COMMIT = re.compile(r"history: commit (\d+) durable: (\d+) values, (\d+) raw rows(?: \(t (\d+)\.\.(\d+)\))?")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. the child ------------------------------------------------------------------------------------------------
def child_kills(kills: int, folder: Path) -> dict:
    run = PowerLoss(folder / "child", seed=7, max_delay_s=1.0)
    t0 = time.monotonic()
    for i in range(kills):
        run.cycle()
        if (i + 1) % 50 == 0:
            print(f"  {i + 1} kills, {run.tally.raw_rows} raw rows verified", flush=True)
    t = run.tally
    return {"kills": t.kills, "acks": t.acks, "raw_rows": t.raw_rows, "roll_rows": t.roll_rows, "saves": t.saves,
            "mid_save": t.killed_mid_save, "seconds": time.monotonic() - t0}


# -- 2. the real gateway ------------------------------------------------------------------------------------------
class GatewayKills:
    def __init__(self, folder: Path, seed: int = 11) -> None:
        self.folder = folder
        self.rng = random.Random(seed)
        self.port = free_port()
        data = {
            "site": {"name": "v0", "id": "bench"},
            # DEBUG in the file too: a config save applies the file's log level
            "gateway": {"state_dir": str(folder / "var"), "log_level": "DEBUG", "poll": {"fast_s": 0.5, "slow_s": 5}},
            "simulator": {"enabled": True, "wire_time": False},
            "buses": [{"name": "bus1", "port": "sim", "baud": 115200, "timeout_ms": 100, "retries": 1}],
            "strings": [{"id": 1, "cells": 16, "devices": [{"profile": "bm-smd", "bus": "bus1", "address": 1},
                                                          {"profile": "bm-bcs-12", "bus": "bus1", "address": 2,
                                                           "count": 16}]}],
            "bank": {"devices": [{"profile": "btek-cmu", "bus": "bus1", "address": 200}]},
            "history": {"flush_s": 0.2, "raw": {"interval_s": 1, "intervals": {}}},
            "web": {"listen": f"127.0.0.1:{self.port}"},
            "modbus_tcp": {"listen": f"127.0.0.1:{free_port()}"},
            "snmp": {"listen": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"},
            "prometheus": {"listen": f"127.0.0.1:{free_port()}"},
        }
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "config.yaml"
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.token = subprocess.run([BMSGW, "token", "add", "bench", "--role", "admin", "-c", str(self.config)],
                                    capture_output=True, text=True, check=True).stdout.strip()
        self.version = 0  # site.name "v<n>" of the last save the API acknowledged
        self.attempted = 0
        self.commits: list[tuple[int, int, int]] = []  # (rows, t first, t last) of every durable commit
        self.kills = self.saves = self.checks = 0

    def _api(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v1{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def _saver(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                doc = self._api("GET", "/config")["config"]
                n = self.attempted + 1
                doc["site"]["name"] = f"v{n}"
                self.attempted = n
                if self._api("PUT", "/config", {"config": doc}).get("saved"):
                    self.version = max(self.version, n)
                    self.saves += 1
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                time.sleep(0.02)  # the gateway is starting or was just killed

    def cycle(self) -> None:
        log = self.folder / f"run{self.kills}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([BMSGW, "--log-level", "DEBUG", "run", "-c", str(self.config)],
                                    stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while b"history: commit" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bmsgw run did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        stop = threading.Event()
        saver = threading.Thread(target=self._saver, args=(stop,), daemon=True)
        saver.start()
        time.sleep(self.rng.uniform(0.3, 4.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        stop.set()
        saver.join(30)
        self.kills += 1
        for m in COMMIT.finditer(log.read_text(errors="replace")):
            if m.group(4):
                self.commits.append((int(m.group(3)), int(m.group(4)), int(m.group(5))))
        self.check()

    def check(self) -> None:
        var = self.folder / "var"
        for db_file in sorted(var.glob("*.sqlite")):
            db = sqlite3.connect(db_file, timeout=30)
            try:
                ok = db.execute("PRAGMA integrity_check").fetchall()
            finally:
                db.close()
            if ok != [("ok",)]:
                raise SystemExit(f"{db_file}: integrity_check says {ok}")
        db = sqlite3.connect(var / "history.sqlite", timeout=30)
        try:
            for rows, a, b in self.commits:
                have = db.execute("SELECT count(*) FROM raw WHERE t >= ? AND t <= ?",
                                  (a - EPOCH, b - EPOCH)).fetchone()[0]
                if have < rows:
                    raise SystemExit(f"a durable commit of {rows} raw rows (t {a}..{b}) has {have} after the kill")
        finally:
            db.close()
        doc = yaml.safe_load(self.config.read_text())
        name = doc["site"]["name"]
        n = int(name[1:])
        if not self.version <= n <= self.attempted:
            raise SystemExit(f"config says {name}; acknowledged v{self.version}, attempted v{self.attempted}")
        self.checks += 1


# -- 3. the price of FULL -----------------------------------------------------------------------------------------
def commit_cost(folder: Path, commits: int = 200) -> tuple[float, float]:
    """Median ms per history commit (10 rows of 120 cells) with synchronous=FULL and with NORMAL."""
    out = []
    for mode in ("FULL", "NORMAL"):
        db = HistoryDB(folder / f"cost-{mode}.sqlite")
        c = db.conn()
        c.execute(f"PRAGMA synchronous={mode}")
        blob = encode_vector([13500 + i for i in range(120)])
        times = []
        t = 1_790_000_000
        for k in range(commits):
            rows = [(t + k * 60, sid, blob) for sid in range(1, 11)]
            t0 = time.perf_counter()
            db.write(rows)
            times.append(time.perf_counter() - t0)
        db.close()
        out.append(statistics.median(times) * 1000)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=200, help="kills of the writer/saver child")
    ap.add_argument("--gateway-kills", type=int, default=20, help="kills of bmsgw run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bmsgw-powerloss-") as tmp:
        folder = Path(tmp)
        print(f"1. history writer + config saver child, {args.kills} SIGKILLs at random moments", flush=True)
        c = child_kills(args.kills, folder)
        print(f"   {c['kills']} kills in {c['seconds']:.0f} s: {c['acks']} commits acknowledged, {c['raw_rows']} raw "
              f"and {c['roll_rows']} roll-up rows verified to the value after every kill; {c['saves']} config saves "
              f"returned, {c['mid_save']} kills landed mid-save; 0 torn files, 0 lost rows", flush=True)
        print(f"2. bmsgw run on the simulator, {args.gateway_kills} SIGKILLs during history commits and "
              f"PUT /api/v1/config", flush=True)
        g = GatewayKills(folder / "gw")
        t0 = time.monotonic()
        for _ in range(args.gateway_kills):
            g.cycle()
        rows = sum(r for r, _, _ in g.commits)
        print(f"   {g.kills} kills in {time.monotonic() - t0:.0f} s: {len(g.commits)} durable commits "
              f"({rows} raw rows) "
              f"all present, every database passes integrity_check, {g.saves} config saves acknowledged, "
              f"the file always the last acknowledged or the one in flight", flush=True)
        full, normal = commit_cost(folder)
        print(f"3. one history commit: synchronous=FULL {full:.2f} ms vs NORMAL {normal:.2f} ms "
              f"({full / normal:.1f}x; the writer commits once a minute by default)")
        print(f"power loss: {c['kills'] + g.kills} SIGKILLs survived ({c['kills']} writer/saver, {g.kills} bmsgw run), "
              f"0 acknowledged writes lost: {c['raw_rows'] + rows} raw rows, {c['saves'] + g.saves} config saves "
              f"verified; durability costs {full / normal:.1f}x NORMAL per commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
