"""Resident memory of `bmsgw run` with 480 batteries (4 strings x 120, the default config's topology).

The gateway polls the simulated bank through pseudo-terminals; the simulator runs in its own process
(`bmsgw simulate`), so the figure is the gateway's alone, as on the controller.  Baseline in the same run:
the same gateway with a single battery, so the ratio shows what the bank itself costs.  Also reported: the
default config as shipped (built-in simulator in the same process).  Target (later): under 64 MB.

    .venv/bin/python bench/memory.py [--settle S]
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from _common import BMSGW, ROOT, SimProcess, write_config


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024
    return rss, hwm


def measure(config: Path, settle: float, buses: int) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        proc = subprocess.Popen([BMSGW, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=log,
                                text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                text = Path(log.name).read_text()
                if text.count("first poll cycle took") >= buses:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"bmsgw run exited:\n{text}")
                time.sleep(0.1)
            else:
                raise RuntimeError("no complete poll cycle within 120 s")
            time.sleep(settle)  # a few more cycles (fast 5 s, slow values on the first cycle)
            return rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def bank(strings: int, cells: int, ports: dict[str, str] | None) -> dict:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["strings"] = data["strings"][:strings]
    for s in data["strings"]:
        s["cells"] = cells
        for d in s["devices"]:
            if "count" in d:
                d["count"] = cells
    data["buses"] = data["buses"][:strings]
    if ports is not None:
        data["simulator"]["enabled"] = False
        for b in data["buses"]:
            b["port"] = ports[b["name"]]
    data["gateway"]["log_level"] = "INFO"
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=12.0, help="seconds to run after the first full cycle")
    args = ap.parse_args()
    results = {}
    for name, strings, cells in (("1 battery (baseline)", 1, 1), ("480 batteries", 4, 120)):
        sim_cfg = write_config(bank(strings, cells, None))
        with SimProcess(sim_cfg) as sim:
            results[name] = measure(write_config(bank(strings, cells, sim.ports)), args.settle, strings)
        print(f"{name:>22}: resident {results[name][0]:.1f} MB (peak {results[name][1]:.1f} MB), gateway alone")
    shipped = write_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    with_sim = measure(shipped, args.settle, 4)
    print(f"{'480, built-in simulator':>22}: resident {with_sim[0]:.1f} MB (peak {with_sim[1]:.1f} MB), "
          f"the default config as shipped")
    base, full = results["1 battery (baseline)"][0], results["480 batteries"][0]
    print(f"480 batteries / 1 battery: {full / base:.2f}x ({(full - base) * 1024 / 479:.0f} kB per battery)")
    print(f"memory: bmsgw run with 480 batteries holds {full:.1f} MB resident ({full / 64:.2f}x the 64 MB target)")


if __name__ == "__main__":
    main()
