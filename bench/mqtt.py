"""MQTT upload: messages per second to a local Mosquitto, and the catch-up time for one hour of queued data.

The default bank (4 strings x 120 batteries) with every point read; one publish cycle is the message set of
the chosen layout (``string``: 10 messages, one per string with every battery; ``cell``: 490, one per
battery).  Measured in one run against the same broker:

  * throughput: cycles queued as fast as the uploader takes them (from memory: the link is up), until the
    broker acknowledged them all,
    through bmsgw's uploader (queue, sender thread, QoS 1, 64 in flight) vs a bare paho client publishing
    the same payloads from memory with the same window (the baseline);
  * catch-up: one hour of cycles at the default poll period (gateway.poll.fast_s, 5 s) queued on disk while
    the broker is down, then the time from the reconnection until the last one is acknowledged; against
    the bare paho client sending the same hour from memory (its serialising not counted).

Run: .venv/bin/python bench/mqtt.py [--layout string|cell] [--cycles N] [--hour-cycles N]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.outputs.mqtt.face import MqttUploader
from gateway.points import Quality, Reading
from tests.mqtt_peers import Mosquitto
from tests.support import free_port

TYPICAL = {"V": (12.0, 14.0), "C": (20.0, 35.0), "ohm": (0.003, 0.008), "A": (-50.0, 50.0), "%": (50.0, 100.0)}
WINDOW = 64


def gateway(tmp: Path, port: int, layout: str, queue_name: str) -> Gateway:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["gateway"]["state_dir"] = str(tmp / "var")
    data["prometheus"] = {"enabled": False}
    data["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": port, "layout": layout, "interval_s": 86400,
                    "max_inflight": WINDOW, "reconnect_min_s": 1, "reconnect_max_s": 1,
                    "queue": {"file": queue_name, "max_messages": 10_000_000, "max_mb": 4096}}
    path = tmp / f"config-{queue_name}.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = Gateway(path, simulator=False, port_overrides={b["name"]: "(not opened)" for b in data["buses"]})
    rnd = random.Random(1)
    now = time.time()
    batch = []
    for e in gw.pointmap.entries:
        lo, hi = TYPICAL.get(e.spec.unit, (0.0, 100.0))
        batch.append((e.ref, Reading(round(rnd.uniform(lo, hi) / e.spec.scale) * e.spec.scale, Quality.GOOD, now)))
    gw.store.put_many(batch)
    return gw


class Loop:
    """The gateway's event loop in a thread, as under ``bmsgw run``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def cycles(svc: MqttUploader, count: int, period_s: float, start: float):
    """``count`` publish cycles of the live snapshot, stamped ``period_s`` apart from ``start``."""
    snap = svc.gateway.store.snapshot()
    for k in range(count):
        yield [(t, doc, False) for t, doc, _ in svc.builder.messages(snap, start + k * period_s)]


def wait_drained(svc: MqttUploader, total_sent: int, timeout: float = 3600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = svc.queue
        if q.sent >= total_sent and q.pending == 0 and q.inflight == 0:
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"not drained: {svc.queue.stats()}")


def bare_paho(port: int, docs, count_prep: bool = True) -> tuple[float, int]:
    """Seconds for a bare paho client (QoS 1, the same window of unacknowledged messages) to serialise
    every document of ``docs`` (an iterable of (topic, doc)) and get it acknowledged: the same work as the
    uploader, without its queue.  ``count_prep`` False leaves out the time spent producing and serialising
    the documents (for the catch-up, whose messages were serialised when they were queued).
    Returns (seconds, messages)."""
    window = threading.BoundedSemaphore(WINDOW)
    idle = threading.Event()
    state = {"sent": 0, "acked": 0}
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-paho")
    client.max_inflight_messages_set(WINDOW)

    def on_publish(c, u, mid, rc, props):
        state["acked"] += 1
        window.release()
        if state["acked"] == state["sent"]:
            idle.set()

    client.on_publish = on_publish
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    prep = 0.0
    t0 = time.monotonic()
    it = iter(docs)
    seq = 0
    while True:
        p0 = time.monotonic()
        item = next(it, None)
        if item is None:
            break
        topic, doc = item
        seq += 1
        payload = json.dumps({"seq": seq, **doc}, separators=(",", ":"), default=str).encode()
        prep += time.monotonic() - p0
        window.acquire()
        idle.clear()
        state["sent"] += 1
        client.publish(topic, payload, qos=1)
    while state["acked"] < state["sent"]:
        idle.wait(1)
    elapsed = time.monotonic() - t0 - (0.0 if count_prep else prep)
    client.disconnect()
    client.loop_stop()
    return elapsed, state["sent"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", choices=["string", "cell"], default="string")
    ap.add_argument("--cycles", type=int, default=0, help="cycles for the throughput run (default: ~5000 messages)")
    ap.add_argument("--hour-cycles", type=int, default=0,
                    help="cycles in 'one hour' (default: 3600 / gateway.poll.fast_s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        port = free_port()
        broker = Mosquitto(tmp / "broker", port=port)
        broker.start()
        loop = Loop()
        try:
            # -- throughput with the link up --------------------------------------------------------------------
            gw = gateway(tmp, port, args.layout, "throughput.sqlite")
            svc = MqttUploader(gw, gw.config.section("mqtt"))
            loop.run(svc.start())
            while not svc.connected:
                time.sleep(0.01)
            per_cycle = len(next(cycles(svc, 1, 0, time.time())))
            n_cycles = args.cycles or max(1, 5000 // per_cycle)
            batches = list(cycles(svc, n_cycles, 5.0, time.time()))
            sent0 = svc.queue.sent
            t0 = time.monotonic()
            for items in batches:  # as fast as the uploader takes them, without spilling to disk
                while svc.queue.memory_pending > 1000:
                    time.sleep(0.001)
                svc.queue.put_many(items)
                svc._wake()
            t1 = wait_drained(svc, sent0 + n_cycles * per_cycle)
            ours_s = t1 - t0
            n_msgs = n_cycles * per_cycle
            loop.run(svc.stop())
            docs = [(t, doc) for items in batches for t, doc, _ in items]
            size = sum(len(json.dumps(doc, separators=(",", ":"))) for _, doc in docs)
            bare_s, _ = bare_paho(port, docs)

            # -- one hour queued on disk while the broker is down, then the catch-up ------------------------------
            fast_s = float(gw.config.data["gateway"]["poll"]["fast_s"]) or 5.0
            hour = args.hour_cycles or int(3600 / fast_s)
            broker.stop()
            gw2 = gateway(tmp, port, args.layout, "hour.sqlite")
            svc2 = MqttUploader(gw2, gw2.config.section("mqtt"))
            loop.run(svc2.start())
            q0 = time.monotonic()
            total = 0
            start = time.time() - 3600
            for items in cycles(svc2, hour, fast_s, start):
                total += len(svc2.queue.put_many(items))
            queue_s = time.monotonic() - q0
            on_disk = svc2.queue.stats()
            disk_bytes = on_disk["waiting_bytes"]
            disk_mb = (tmp / "var" / "hour.sqlite").stat().st_size / 1e6
            broker.start()
            while not svc2.connected:
                time.sleep(0.005)
            c0 = time.monotonic()
            c1 = wait_drained(svc2, total)
            catchup_s = c1 - c0
            loop.run(svc2.stop())
            hour_docs = ((t, doc) for items in cycles(svc2, hour, fast_s, start) for t, doc, _ in items)
            bare_hour_s, _ = bare_paho(port, hour_docs, count_prep=False)
            hour_mb = disk_bytes / 1e6
        finally:
            loop.close()
            broker.stop()

    print(f"layout {args.layout}: {per_cycle} messages per cycle, {size / n_msgs / 1024:.1f} KiB per message "
          "on average")
    print(f"throughput, bare paho serialising from memory (baseline): {n_msgs / bare_s:9.0f} msg/s  "
          f"{size / bare_s / 1e6:6.1f} MB/s  1.00x")
    print(f"throughput, bmsgw uploader (queue + QoS 1):               {n_msgs / ours_s:9.0f} msg/s  "
          f"{size / ours_s / 1e6:6.1f} MB/s  {bare_s / ours_s:.2f}x")
    span = hour * fast_s
    what = "one hour" if span == 3600 else f"{span / 60:g} min"
    print(f"{what} = {hour} cycles at {fast_s:g} s = {total} messages, {hour_mb:.1f} MB of JSON payloads; "
          f"queued on disk in "
          f"{queue_s:.1f} s ({on_disk['on_disk']} rows, file {disk_mb:.1f} MB)")
    print(f"catch-up, bare paho from memory, serialising not counted (baseline): {bare_hour_s:7.1f} s   1.00x")
    print(f"catch-up, bmsgw from disk after reconnect:                           {catchup_s:7.1f} s   "
          f"{bare_hour_s / catchup_s:.2f}x")
    print(f"MQTT ({args.layout} layout, {gw.topology.cell_count} batteries): {n_msgs / ours_s:.0f} msg/s to a local "
          f"mosquitto ({bare_s / ours_s:.2f}x bare paho); {what} of queued data ({total} messages, {hour_mb:.0f} MB) "
          f"caught up in {catchup_s:.1f} s after reconnect ({span / catchup_s:.0f}x real time, "
          f"{bare_hour_s / catchup_s:.2f}x bare paho)")


if __name__ == "__main__":
    main()
