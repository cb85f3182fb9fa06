"""Scrape cost of /metrics for the full default bank (4 strings x 120 batteries, every series of the map).

Measured in one run, on the same series and values:
  * bmsgw's fast path (``gateway.exposition``: prefixes built once, rendered once per store generation),
    cold (every reading replaced since the last scrape) and after a typical fast poll cycle;
  * ``generate_latest`` over bmsgw's custom collector (the reference implementation, byte-identical);
  * the baseline: ``generate_latest`` on a plain prometheus-client registry (Gauge/Counter with labels)
    holding the same series.

Times are CPU time of this process (medians, the cases interleaved round by round), so other load on the
machine does not count.  Run: .venv/bin/python bench/prometheus_scrape.py [--rounds N]
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from gateway.app import Gateway
from gateway.exposition import BankCollector, exposition_for, render_metrics
from gateway.outputs.prometheus.face import PrometheusService
from gateway.points import Quality, Reading

TYPICAL = {"V": (12.0, 14.0), "C": (20.0, 35.0), "ohm": (0.003, 0.008), "A": (-50.0, 50.0), "%": (50.0, 100.0),
           "s": (0.0, 100000.0), "unix_s": (1.7e9, 2.0e9)}


def offline_gateway(tmp: Path) -> Gateway:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["gateway"]["state_dir"] = str(tmp / "var")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return Gateway(path, simulator=False, port_overrides={b["name"]: "(not opened)" for b in data["buses"]})


def readings(gw: Gateway, rnd: random.Random, only_fast: bool = False):
    now = time.time()
    out = []
    for e in gw.pointmap.entries:
        if only_fast and (e.spec.poll != "fast" or e.spec.source == "derived") and e.spec.scope != "gateway":
            continue
        lo, hi = TYPICAL.get(e.spec.unit, (0.0, 1000.0))
        raw = round(rnd.uniform(lo, hi) / e.spec.scale)
        out.append((e.ref, Reading(raw * e.spec.scale, Quality.GOOD, now)))
    return out


def plain_registry(gw: Gateway, snapshot) -> CollectorRegistry:
    """The same series the gateway exports, as an exporter would keep them in ordinary metric objects."""
    prometheus_client.disable_created_metrics()
    registry = CollectorRegistry()
    exp = exposition_for(gw)
    metrics = {}
    for fam in exp.model.families:
        ctx = exp.context(snapshot)
        for labels, _, value in fam.samples(ctx):
            names = [k for k, _ in labels]
            m = metrics.get(fam.name)
            if m is None:
                cls = Counter if fam.mtype == "counter" else Gauge
                m = metrics[fam.name] = cls(fam.name, fam.help, names, registry=registry)
            child = m.labels(*[v for _, v in labels]) if names else m
            if fam.mtype == "counter":
                child.inc(value)
            else:
                child.set(value)
    return registry


def interleaved(cases: dict, rounds: int) -> dict[str, float]:
    """Median CPU milliseconds of each case, the cases taking turns in every round (so a neighbour's load
    on the machine hits them alike).  A case is (setup or None, timed function)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (setup, fn) in cases.items():
            if setup is not None:
                setup()
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def http_scrapes(gw: Gateway, rounds: int) -> tuple[float, float]:
    """The face's own HTTP server answering GET /metrics for the unchanged store (so no render): median CPU ms
    of this process (server and client) and median wall ms per scrape, over one client connection that
    is kept alive when the server allows it (as Prometheus does)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = PrometheusService(gw, {**gw.config.section("prometheus"), "listen": f"127.0.0.1:{port}"})
    asyncio.run_coroutine_threadsafe(service.start(), loop).result(30)
    cpu, wall = [], []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        for _ in range(rounds + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
            assert resp.status == 200 and body
        conn.close()
    finally:
        asyncio.run_coroutine_threadsafe(service.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return statistics.median(cpu[1:]) * 1000, statistics.median(wall[1:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gw = offline_gateway(Path(tmp))
        rnd = random.Random(1)
        batches = [readings(gw, rnd) for _ in range(2)]  # alternate: every reading is new at each scrape
        gw.store.put_many(batches[0])
        exp = exposition_for(gw)
        snapshot = gw.store.snapshot()
        body = render_metrics(gw)[0]
        collector_registry = CollectorRegistry()
        collector_registry.register(BankCollector(exp, lambda: exp.context(snapshot)))
        reference = generate_latest(collector_registry)
        assert body == reference, "the fast path must be byte-identical to generate_latest of the collector"
        plain = plain_registry(gw, snapshot)
        plain_body = generate_latest(plain)
        series = body.count(b"\n") - 2 * body.count(b"# TYPE")
        assert plain_body.count(b"\n") - 2 * plain_body.count(b"# TYPE") == series, "same series in the baseline"

        turn = {"all": 0, "fast": 0}

        def new_poll_everything():  # every reading differs from the ones the last scrape saw
            turn["all"] += 1
            gw.store.put_many(batches[turn["all"] % 2])

        fast_batches = [readings(gw, rnd, only_fast=True) for _ in range(2)]

        def new_fast_cycle():  # a fast poll cycle: voltages, temperatures, currents, bus counters
            turn["fast"] += 1
            gw.store.put_many(fast_batches[turn["fast"] % 2])

        figures = interleaved({
            "baseline": (None, lambda: generate_latest(plain)),
            "collector": (None, lambda: generate_latest(collector_registry)),
            "cold": (new_poll_everything, lambda: render_metrics(gw)),
            "typical": (new_fast_cycle, lambda: render_metrics(gw)),
            "cached": (None, lambda: render_metrics(gw)),
        }, args.rounds)
        baseline, collector, cold, typical, cached = (figures[k] for k in
                                                      ("baseline", "collector", "cold", "typical", "cached"))
        gz = len(exp.render(gzipped=True))
        http_cpu, http_wall = http_scrapes(gw, args.rounds * 3)

    print(f"series: {series} ({gw.topology.cell_count} batteries, {len(gw.pointmap)} mapped points); "
          f"body {len(body) / 1024:.0f} KiB, gzip {gz / 1024:.0f} KiB; "
          f"plain registry body {len(plain_body) / 1024:.0f} KiB")
    print(f"baseline generate_latest, plain registry:      {baseline:8.2f} ms   1.00x")
    print(f"generate_latest, bmsgw custom collector:       {collector:8.2f} ms   {baseline / collector:.2f}x")
    print(f"bmsgw fast path, every reading new:            {cold:8.2f} ms   {baseline / cold:.2f}x")
    print(f"bmsgw fast path, after a fast poll cycle:      {typical:8.2f} ms   {baseline / typical:.2f}x")
    print(f"bmsgw fast path, unchanged store (cached):     {cached:8.4f} ms   (no render)")
    print(f"GET /metrics over HTTP from the face's server (cached body): {http_cpu:.2f} ms CPU, "
          f"{http_wall:.2f} ms wall per scrape")
    print(f"scrape of {gw.topology.cell_count} batteries ({series} series, {len(body) / 1024:.0f} KiB): fast path "
          f"{cold:.1f} ms (every reading new) vs generate_latest on a plain registry {baseline:.1f} ms: "
          f"{baseline / cold:.1f}x faster")


if __name__ == "__main__":
    main()
