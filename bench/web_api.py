"""REST API cost on the default bank (4 strings x 120 batteries): how long one request for a string's 120
batteries takes, in JSON and in XML, against the cheapest call (/api/v1/status) measured in the same run.

    .venv/bin/python bench/web_api.py
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests

from tests.support import GatewayThread, free_port, write_config

ROUNDS = 40


def timed(session: requests.Session, url: str, headers: dict) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        r = session.get(url, headers=headers, timeout=30)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        path = write_config(Path(tmp), overrides={"web": {"listen": f"127.0.0.1:{port}"}})
        with GatewayThread(path) as gt:
            ctx = gt.gateway.service("web").ctx
            token = ctx.users.add_token("bench", "viewer")[1]
            hdr = {"Authorization": f"Bearer {token}"}
            base = f"http://127.0.0.1:{port}/api/v1/"
            s = requests.Session()
            cases = [("status", base + "status", hdr),
                     ("one battery", base + "strings/1/cells/37", hdr),
                     ("120 batteries, JSON", base + "strings/1/cells", hdr),
                     ("120 batteries, XML", base + "strings/1/cells", {**hdr, "Accept": "application/xml"}),
                     ("4 strings", base + "strings", hdr),
                     ("1 h trend of a battery (memory)", base + "strings/1/cells/37/history?point=voltage", hdr)]
            results = [(name, timed(s, url, h)) for name, url, h in cases]
            size = len(s.get(base + "strings/1/cells", headers=hdr, timeout=30).content)
    baseline = results[0][1]
    print(f"{'request':<34} {'median ms':>10} {'x status':>9}")
    for name, t in results:
        print(f"{name:<34} {t * 1000:>10.2f} {t / baseline:>9.1f}")
    print(f"120-battery JSON body: {size / 1024:.0f} KiB")
    cells = dict(results)["120 batteries, JSON"]
    print(f"headline: a string's 120 batteries over REST (JSON) take {cells * 1000:.1f} ms per request, "
          f"{cells / baseline:.1f}x the /status call")


if __name__ == "__main__":
    main()
