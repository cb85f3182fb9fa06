"""Cost of the NUT face's answers for the full default bank (4 strings x 120 batteries, every point GOOD).

Measured in one run, over a real socket on 127.0.0.1 to the face's own server (the bounded server, the line
lexer, the answer), one request at a time (send a line, read its answer):
  * the baseline: ``NETVER`` (a constant answer: the socket and loop round trip alone);
  * ``GET VAR bank ups.status`` (what upsmon asks every POLLFREQ seconds: the string states, charge, run time
    and alarms of every string);
  * ``LIST VAR bank`` (what ``upsc bank@host`` asks) and ``LIST VAR string1`` (620 variables: a string with its
    120 batteries under experimental.battery.N.*).

Round trips are wall-clock medians, the cases interleaved round by round (other load on the machine inflates
them); the CPU time of the answer alone (no socket), the headline, is not.  The controller is about 20x slower
than one core here.
Run: .venv/bin/python bench/nut.py [--rounds N]
"""
from __future__ import annotations

import argparse
import asyncio
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

from gateway.app import Gateway
from gateway.outputs.nut.face import NutService
from gateway.points import PointRef

CASES = (b"NETVER", b"GET VAR bank ups.status", b"LIST VAR bank", b"LIST VAR string1")


def offline_gateway(tmp: Path, port: int) -> Gateway:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["gateway"]["state_dir"] = str(tmp / "var")
    data["nut"]["listen"] = f"127.0.0.1:{port}"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return Gateway(path, simulator=False, port_overrides={b["name"]: "(not opened)" for b in data["buses"]})


def fill(gw: Gateway) -> None:
    """Every point GOOD, the strings floating (string.state from the classifier's own codes)."""
    from gateway.strings import string_states

    floating = string_states(gw.catalog).floating
    for entry in gw.pointmap:
        gw.store.put(entry.ref, 1.0)
    for s in gw.topology.strings:
        gw.store.put(PointRef("string.state", s.id), float(floating))


def round_trip(sock: socket.socket, request: bytes, last_line: bytes) -> float:
    t0 = time.perf_counter()
    sock.sendall(request + b"\n")
    got = b""
    while not got.endswith(last_line):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError(f"closed while answering {request!r}")
        got += chunk
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        gw = offline_gateway(Path(tmp), port)
        fill(gw)
        svc = NutService(gw, gw.config.section("nut"))
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(svc.server.start())
            loop.call_soon(started.set)
            loop.run_forever()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started.wait(10)
        ends = {b"NETVER": b"\n", b"GET VAR bank ups.status": b"\n", b"LIST VAR bank": b"END LIST VAR bank\n",
                b"LIST VAR string1": b"END LIST VAR string1\n"}
        times: dict[bytes, list[float]] = {c: [] for c in CASES}
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for case in CASES:  # warm up
                round_trip(sock, case, ends[case])
            for _ in range(args.rounds):
                for case in CASES:
                    times[case].append(round_trip(sock, case, ends[case]))

        class Conn:
            peer, closed, username, password, verified, tls, tracking = "bench", False, None, None, None, False, False

        cpu: dict[bytes, float] = {}
        for case in CASES:
            t0 = time.process_time()
            for _ in range(args.rounds):
                svc.answer(Conn(), case)  # type: ignore[arg-type]
            cpu[case] = (time.process_time() - t0) / args.rounds
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        base = statistics.median(times[b"NETVER"])
        size = len(svc.answer(Conn(), b"LIST VAR string1"))  # type: ignore[arg-type, arg-type]
        print(f"{'request':28} {'round trip ms':>14} {'x NETVER':>9} {'answer CPU ms':>14}")
        for case in CASES:
            med = statistics.median(times[case])
            print(f"{case.decode():28} {med * 1000:14.3f} {med / base:9.1f} {cpu[case] * 1000:14.3f}")
        listing, poll = cpu[b"LIST VAR string1"], cpu[b"GET VAR bank ups.status"]
        print(f"LIST VAR string1 (620 variables, {size} bytes): {listing * 1000:.2f} ms CPU to answer "
              f"({listing / poll:.0f}x GET VAR bank ups.status's {poll * 1000:.3f} ms)")

if __name__ == "__main__":
    main()
