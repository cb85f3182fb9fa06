"""The floor of an RTU transaction's CPU on this machine, for bench/controller_budget.py.

A bus thread's system calls and wake-ups with nothing else: the inter-frame silence slept, the line checked, the
request written, the reply waited for and read; no CRC, no parsing, no results handed on.  Run against the
simulator's sensors, in a process of its own, before the gateway opens the buses, in the gateway's pattern:
every bus at once, each in a thread of its own, a sweep of its cell sensors (back to back) every ``fast_s``
seconds.  (The pattern matters as much as the calls: one bus read back to back, with the other core idle, cost
87-145 us per transaction in the same session as 53-63 us in this pattern; the bus threads' CPU is only
comparable to a floor measured the way they work.)  controller_budget.py prints it beside the gateway's bus
threads' CPU per transaction: this machine's share of theirs (which moves with the machine's phase) against
the gateway's own Python and the rest of the process around it.

    .venv/bin/python bench/_rtu_floor.py PORT[,PORT...] BAUD FIRST_UNIT LAST_UNIT SECONDS [FAST_S]

prints one JSON line: transactions, replies (complete in one read), cpu_s (the bus threads', user + system)
"""
from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from pathlib import Path

import serial

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.libc import set_timer_slack
from gateway.modbus.rtu import READ_INPUT, expected_length, read_request

SILENCE_S = 0.00175  # above 19200 baud (topology.BusConfig.silence)
TIMEOUT_S = 0.1


def sweep_bus(port: str, baud: int, units: range, seconds: float, fast_s: float, out: list[tuple[int, int, float]],
              start: float) -> None:
    """A cell sensor's fast read (input registers 0-4) of each unit in turn, back to back, every ``fast_s``
    seconds from ``start`` (each bus's sweep starts with the others', as the engine's cycles do), for
    ``seconds``; appends (transactions, replies, this thread's CPU seconds) to ``out``."""
    ser = serial.Serial()
    ser.port, ser.baudrate, ser.timeout, ser.write_timeout, ser.exclusive = port, baud, 0, 0, True
    ser.open()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # watched as the bus thread watches its wake-up pipe
    try:
        fd = ser.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        requests = [read_request(unit, READ_INPUT, 0, 5) for unit in units]
        expected = expected_length(requests[0])
        set_timer_slack()
        transactions = replies = 0
        idle_since = time.monotonic()
        cpu0 = time.thread_time()
        end, slot = start + seconds, start
        while slot < end:
            wait = slot - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for request in requests:
                wait = idle_since + SILENCE_S - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                poller.poll(0)
                os.write(fd, request)
                if poller.poll(TIMEOUT_S * 1000.0) and len(os.read(fd, 4096)) == expected:
                    replies += 1
                idle_since = time.monotonic()
                transactions += 1
            slot += fast_s
        out.append((transactions, replies, time.thread_time() - cpu0))
    finally:
        ser.close()
        os.close(wake_r)
        os.close(wake_w)


def floor(ports: list[str], baud: int, units: range, seconds: float, fast_s: float) -> dict[str, float]:
    out: list[tuple[int, int, float]] = []
    start = time.monotonic() + 0.2  # every thread open and waiting
    threads = [threading.Thread(target=sweep_bus, args=(port, baud, units, seconds, fast_s, out, start))
               for port in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(out) != len(ports):
        raise SystemExit("a bus thread failed (see above)")
    return {"transactions": sum(o[0] for o in out), "replies": sum(o[1] for o in out),
            "cpu_s": sum(o[2] for o in out)}


def main() -> None:
    ports, baud, first, last, seconds = sys.argv[1:6]
    fast_s = float(sys.argv[6]) if len(sys.argv) > 6 else 5.0
    print(json.dumps(floor(ports.split(","), int(baud), range(int(first), int(last) + 1), float(seconds), fast_s)))


if __name__ == "__main__":
    main()
