"""SNMP walk throughput: bmsgw's agent against Debian's snmpd, measured in the same run.

The gateway runs the default bank (4 strings x 120 batteries) on the simulator, polling as usual; the values
the analytics would derive (SOC, SOH, baseline, forecasts) are filled in so every column of the cell table has
a value.  ``snmpbulkwalk -Cr50`` walks the whole cell table (every column, 480 rows) from:

- bmsgw, SNMPv2c (the fast path answers),
- bmsgw, SNMPv2c with the fast path off (pysnmp answers), and SNMPv3 authPriv (pysnmp answers),
- Debian's snmpd walking a comparable number of its own objects: its largest in-memory table,
  hrSWInstalledTable (the installed packages, thousands of varbinds, no system calls per row), repeated
  until it has returned as many varbinds as the cell table; its whole tree is measured too, for information
  (slower: TCP connection and process tables are read from /proc per request).

Each figure is the median of several runs, in varbinds per second of wall time (the same client, the same
options, MIB loading off), with the gateway still polling; the runs interleave all cases so a busy machine
slows them alike, and each ratio is the median of the per-run ratios.  The CPU this process (the gateway)
spends per walk is printed too (it includes the background polling of those seconds, and for "all values
new" the store update that precedes each walk).  The last line is the headline: the fast path's rate as a
multiple of snmpd's table walk.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.outputs.snmp.agent import SnmpAgent
from gateway.points import Quality, Reading
from tests.snmp_support import free_udp_port, net_snmp_env
from tests.support import GatewayThread, write_config

RUNS = 5
REPS = 50
USER = {"name": "bench", "auth": "sha256", "auth_key": "bench-auth-key", "priv": "aes128", "priv_key": "bench-priv-key"}


def client_env(tmp: Path) -> dict:
    return dict(net_snmp_env(tmp), MIBS="", MIBDIRS=str(tmp))  # no MIB loading: the same cost for every walk


def walk(auth: list[str], port: int, oid: str, env: dict) -> tuple[int, float]:
    """(varbinds, seconds) of one snmpbulkwalk."""
    cmd = ["snmpbulkwalk", *auth, "-On", "-Oq", f"-Cr{REPS}", "-t", "5", "-r", "0", f"udp:127.0.0.1:{port}", oid]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return len(proc.stdout.splitlines()), elapsed


def sample(auth, port, oid, env, at_least: int = 0, before=None) -> tuple[float, int]:
    """(varbinds/s, varbinds per walk) of one measurement: walks repeated until ``at_least`` varbinds.
    ``before()`` runs before each walk (not timed)."""
    total, seconds, n = 0, 0.0, 0
    while True:
        if before is not None:
            before()
        n, s = walk(auth, port, oid, env)
        total, seconds = total + n, seconds + s
        if total >= at_least:
            return total / seconds, n


def start_snmpd(tmp: Path) -> tuple[subprocess.Popen, int]:
    snmpd = shutil.which("snmpd") or "/usr/sbin/snmpd"
    if not Path(snmpd).exists():
        raise SystemExit("snmpd is not installed (apt-get install snmpd; it is in the Makefile's APT_PACKAGES)")
    port = free_udp_port()
    conf = tmp / "snmpd.conf"
    conf.write_text("rocommunity public 127.0.0.1\nsysLocation bench\nsysContact bench\n")
    env = client_env(tmp)
    proc = subprocess.Popen([snmpd, "-f", "-C", "-c", str(conf), "-Lf", str(tmp / "snmpd.log"), "-p",
                             str(tmp / "snmpd.pid"), f"udp:127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        probe = subprocess.run(["snmpget", "-v2c", "-c", "public", "-t", "0.5", "-r", "0", f"udp:127.0.0.1:{port}",
                                ".1.3.6.1.2.1.1.3.0"], capture_output=True, env=env)
        if probe.returncode == 0:
            return proc, port
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("snmpd did not answer")


def fill_derived(gw) -> None:
    """Stand in for the analytics: give every derived cell point a value, so every column is walked."""
    now = time.time()
    batch = []
    for e in gw.pointmap:
        if e.spec.scope == "cell" and e.spec.source == "derived" and e.spec.id != "cell.comm_status":
            lo, hi = e.spec.valid_range or (0.0, 50.0)
            batch.append((e.ref, Reading(min(max(1.0, lo), hi), Quality.GOOD, now)))
    gw.store.put_many(batch)


def new_poll_cycle(gt) -> None:
    """Every cell value changes, as after a poll cycle: every cached varbind of the cell table is stale."""
    gw = gt.gateway

    async def put():
        now = time.time()
        snap = gw.store.snapshot()
        gw.store.put_many([(ref, Reading((r.value or 0.0) + 0.001, r.quality, now))
                           for ref, r in snap.items() if ref.cell is not None])
    gt.call(put())


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bmsgw-snmp-bench-"))
    try:
        port, slow_port = free_udp_port(), free_udp_port()
        path = write_config(tmp, {"snmp": {"listen": f"127.0.0.1:{port}", "v2c": {"community": "public"},
                                           "v3_users": [USER]},
                                  "gateway": {"poll": {"fast_s": 5, "slow_s": 300}}})
        env = client_env(tmp)
        with GatewayThread(path) as gt:
            gw = gt.gateway
            fill_derived(gw)
            cfg = {**gw.config.section("snmp"), "listen": f"127.0.0.1:{slow_port}", "fast_path": False}
            slow = SnmpAgent(gw, cfg)
            gt.call(slow.start())
            cell_table = ".1.3.6.1.4.1.32473.1.6"
            v2c = ["-v2c", "-c", "public"]
            v3 = ["-v3", "-l", "authPriv", "-u", USER["name"], "-a", "SHA-256", "-A", USER["auth_key"], "-x", "AES",
                  "-X", USER["priv_key"]]
            snmpd, snmpd_port = start_snmpd(tmp)
            try:
                cases = {  # label: (auth, port, OID, before each walk)
                    "snmpd": (v2c, snmpd_port, ".1.3.6.1.2.1.25.6.3", None),
                    "tree": (v2c, snmpd_port, ".1", None),
                    "fast": (v2c, port, cell_table, None),
                    "cold": (v2c, port, cell_table, lambda: new_poll_cycle(gt)),
                    "pysnmp": (v2c, slow_port, cell_table, None),
                    "v3": (v3, port, cell_table, None),
                }
                cells = walk(v2c, port, cell_table, env)[0]
                rates = {label: [] for label in cases}
                counts, cpu = {}, dict.fromkeys(cases, 0.0)
                for auth, where, oid, _b in cases.values():  # warm-up
                    walk(auth, where, oid, env)
                # interleaved: every run measures each case once, so a busy machine slows all of them alike
                for _ in range(RUNS):
                    for label, (auth, where, oid, before) in cases.items():
                        cpu0 = time.process_time()
                        r, counts[label] = sample(auth, where, oid, env, cells if label == "snmpd" else 0, before)
                        cpu[label] += time.process_time() - cpu0
                        rates[label].append(r)
            finally:
                snmpd.terminate()
                snmpd.wait(10)
            gt.call(slow.stop())
        med = {label: statistics.median(r) for label, r in rates.items()}
        ratio = {label: statistics.median(a / b for a, b in zip(rates[label], rates["snmpd"], strict=True))
                 for label in rates}
        print(f"cell table: {cells} varbinds per walk ({gw.topology.cell_count} batteries, every column); snmpd: "
              f"hrSWInstalledTable {counts['snmpd']} varbinds per walk, repeated to >= {cells}; "
              f"snmpbulkwalk -Cr{REPS}; medians of {RUNS} interleaved runs (ratio: median of the per-run ratios)")
        names = {"tree": f"snmpd, its whole tree ({counts['tree']})", "snmpd": "snmpd, hrSWInstalledTable",
                 "pysnmp": "bmsgw v2c, pysnmp path", "v3": "bmsgw v3 authPriv (pysnmp)",
                 "cold": "bmsgw v2c, fast path, all values new", "fast": "bmsgw v2c, fast path"}
        for label in ("tree", "snmpd", "pysnmp", "v3", "cold", "fast"):
            line = f"{names[label]:38} {med[label]:9.0f} varbinds/s  {ratio[label]:5.2f}x"
            if label not in ("tree", "snmpd"):
                line += f"   bmsgw process CPU {cpu[label] / RUNS * 1000:5.0f} ms/walk"
            print(line)
        print(f"snmp_walk: bmsgw fast path {med['fast']:.0f} varbinds/s = {ratio['fast']:.2f}x snmpd "
              f"({med['snmpd']:.0f} varbinds/s; goal >= 0.5x, floor 0.25x); pysnmp path {ratio['pysnmp']:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
