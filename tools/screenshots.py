"""Regenerate the README's pictures (docs/images/*.png) from the running demo: the default config's gateway on
the built-in simulator, in a state folder of its own, photographed by Debian's Chromium through Playwright.

    .venv/bin/python tools/screenshots.py [--out docs/images] [--wait 300]

It starts ``bmsgw run`` on a copy of config.yaml (the web face on a free loopback port, the other faces off so
that nothing collides with a gateway already running), waits for the simulator's back-fill to give the
batteries their forecasts, creates the administrator as a first visit from the controller does, and saves
the overview, the first string's page and the forecast page.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 860}
PAGES = [("overview.png", "", "#bars, .card"), ("string.png", "strings/1", "#bars"),
         ("forecast.png", "forecast", "#f-info")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(folder: Path, port: int) -> Path:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data.setdefault("gateway", {})["state_dir"] = str(folder / "state")
    data["web"] = {**data.get("web", {}), "listen": f"127.0.0.1:{port}"}
    for face in ("modbus_tcp", "snmp", "prometheus", "mqtt", "nut", "bacnet"):
        if face in data:
            data[face]["enabled"] = False
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def forecasts(base: str, opener) -> int:
    """Batteries of string 1 showing everything the pictures show: a voltage read by the live poll, a
    deviation from their baseline and a predicted replacement date (0 while the back-fill runs)."""
    try:
        with opener.open(base + "api/v1/strings/1/cells", timeout=10) as r:
            body = json.load(r)
    except OSError:
        return 0
    wanted = ("voltage", "ohmic_baseline_deviation", "eol_date")
    return sum(1 for c in body.get("cells", [])
               if all((c.get("points", {}).get(name) or {}).get("value") is not None for name in wanted))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"),
                    help="where the PNG files go (default: %(default)s)")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for forecasts (default: %(default)s)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bmsgw-shots-") as tmp:
        port = free_port()
        config = demo_config(Path(tmp), port)
        base = f"http://127.0.0.1:{port}/"
        log = open(Path(tmp) / "gateway.log", "w")  # noqa: SIM115 (open for the child's whole life)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_context(viewport=VIEWPORT).new_page()
                password = secrets.token_urlsafe(12)
                deadline = time.monotonic() + 120
                while True:  # the web face answers once the gateway has started
                    try:
                        page.goto(base + "login", timeout=5000)
                        break
                    except Exception:
                        if gw.poll() is not None or time.monotonic() > deadline:
                            print(f"the gateway did not start; its log: {log.name}", file=sys.stderr)
                            return 1
                        time.sleep(1)
                page.goto(base + "setup")
                page.fill("input[name=username]", "admin")
                page.fill("input[name=password]", password)
                page.fill("input[name=password2]", password)
                page.click("button[type=submit]")
                page.wait_for_url(base)
                cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
                opener = urllib.request.build_opener()
                opener.addheaders = [("Cookie", cookies), ("Accept", "application/json")]
                deadline = time.monotonic() + args.wait
                while (n := forecasts(base, opener)) < 120 and time.monotonic() < deadline:
                    print(f"\rwaiting for the back-fill's forecasts ... {deadline - time.monotonic():.0f} s left",
                          end="", file=sys.stderr, flush=True)
                    time.sleep(2)
                print(f"\r{n} batteries of string 1 have a forecast" + " " * 30, file=sys.stderr)
                time.sleep(3 * 5)  # a few poll cycles more: the string summaries follow their batteries
                for name, path, ready in PAGES:
                    page.goto(base + path)
                    page.wait_for_selector(ready)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=str(out / name), full_page=False)
                    print(f"{out / name}", file=sys.stderr)
                browser.close()
        finally:
            gw.terminate()
            gw.wait(timeout=60)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
