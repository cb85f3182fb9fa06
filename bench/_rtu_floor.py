"""The floor of an RTU transaction's CPU on this machine, for bench/controller_budget.py.

A bus thread's system calls and wake-ups with nothing else: the inter-frame silence slept, the line checked, the
request written, the reply waited for and read; no CRC, no parsing, no results handed on.  Run against the
simulator's sensors on one bus (a pseudo-terminal), in a process of its own, before the gateway opens that bus.
controller_budget.py prints it beside the gateway's bus threads' CPU per transaction: this machine's share of
theirs (which moves with the machine's phase) against the gateway's own Python.

    .venv/bin/python bench/_rtu_floor.py PORT BAUD FIRST_UNIT LAST_UNIT SECONDS

prints one JSON line: transactions, replies (complete in one read), cpu_s (this thread's, user + system)
"""
from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path

import serial

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.libc import set_timer_slack
from gateway.modbus.rtu import READ_INPUT, expected_length, read_request

SILENCE_S = 0.00175  # above 19200 baud (topology.BusConfig.silence)
TIMEOUT_S = 0.1


def floor(port: str, baud: int, units: range, seconds: float) -> dict[str, float]:
    """A cell sensor's fast read (input registers 0-4) of each unit in turn, back to back, for ``seconds``."""
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
        end = idle_since + seconds
        while time.monotonic() < end:
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
        return {"transactions": transactions, "replies": replies, "cpu_s": time.thread_time() - cpu0}
    finally:
        ser.close()
        os.close(wake_r)
        os.close(wake_w)


def main() -> None:
    port, baud, first, last, seconds = sys.argv[1:6]
    print(json.dumps(floor(port, int(baud), range(int(first), int(last) + 1), float(seconds))))


if __name__ == "__main__":
    main()
