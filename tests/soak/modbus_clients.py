"""Modbus TCP load for the soak run: N clients, each reading the whole register map in a loop.

Runs in a process of its own so the clients' CPU does not distort the coordinator's timing:

    python -m tests.soak.modbus_clients --port P --ranges '[[0,47],...]' --clients 20 --period 1.0

Most clients are plain asyncio (one request outstanding, every answer checked: transaction id, unit,
function, byte count); ``--pymodbus K`` of them use pymodbus's AsyncModbusTcpClient.  Odd clients read the
input registers (FC4), even ones the holding mirror (FC3).  Each client starts a full pass every ``period``
seconds (a pass longer than that starts the next one at once).  A JSON line with the running totals goes to
stdout every ``--report-s``; the clients stop when stdin is closed, and a last line with the latency
histogram follows.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import struct
import sys
import threading
import time

from tests.soak.stats import Latency

MAX_READ = 125
_MBAP = struct.Struct(">HHHB")
REQUEST_TIMEOUT_S = 5.0


def blocks(ranges: list[list[int]]) -> list[tuple[int, int]]:
    """The served ranges (``[start, end)``) cut into reads of at most 125 registers."""
    out = []
    for start, end in ranges:
        a = start
        while a < end:
            n = min(MAX_READ, end - a)
            out.append((a, n))
            a += n
    return out


class Totals:
    def __init__(self) -> None:
        self.requests = 0
        self.registers = 0
        self.passes = 0
        self.slow_passes = 0  # a pass that took longer than the period
        self.errors = 0
        self.reconnects = 0
        self.error_samples: list[str] = []
        self.latency = Latency()

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(text)

    def as_dict(self, final: bool = False) -> dict:
        out = {"requests": self.requests, "registers": self.registers, "passes": self.passes,
               "slow_passes": self.slow_passes, "errors": self.errors, "reconnects": self.reconnects,
               "error_samples": self.error_samples}
        if final:
            out["latency"] = self.latency.as_dict()
        return out


class RawClient:
    """A minimal Modbus TCP client over asyncio streams: one request at a time, every answer checked."""

    def __init__(self, host: str, port: int, unit: int) -> None:
        self.host, self.port, self.unit = host, port, unit
        self.tid = random.randrange(65536)
        self.reader = self.writer = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None

    async def read(self, function: int, address: int, count: int) -> None:
        self.tid = (self.tid + 1) & 0xFFFF
        self.writer.write(_MBAP.pack(self.tid, 0, 6, self.unit) + struct.pack(">BHH", function, address, count))
        head = await asyncio.wait_for(self.reader.readexactly(7), REQUEST_TIMEOUT_S)
        tid, proto, length, unit = _MBAP.unpack(head)
        body = await asyncio.wait_for(self.reader.readexactly(length - 1), REQUEST_TIMEOUT_S)
        if tid != self.tid or proto != 0 or unit != self.unit:
            raise ValueError(f"answer header tid={tid} proto={proto} unit={unit}, sent tid={self.tid}")
        if body[0] != function:
            code = body[1] if len(body) > 1 else None
            raise ValueError(f"exception {code} for FC{function} {address}+{count}")
        if body[1] != 2 * count or len(body) != 2 + 2 * count:
            raise ValueError(f"FC{function} {address}+{count}: {len(body) - 2} data bytes, byte count {body[1]}")


class PymodbusClient:
    def __init__(self, host: str, port: int, unit: int) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        self.client = AsyncModbusTcpClient(host, port=port, timeout=REQUEST_TIMEOUT_S, retries=0)
        self.unit = unit

    async def connect(self) -> None:
        if not await self.client.connect():
            raise ConnectionError("pymodbus client could not connect")

    async def close(self) -> None:
        self.client.close()

    async def read(self, function: int, address: int, count: int) -> None:
        call = self.client.read_input_registers if function == 4 else self.client.read_holding_registers
        rr = await call(address, count=count, device_id=self.unit)
        if rr.isError():
            raise ValueError(f"FC{function} {address}+{count}: {rr}")
        if len(rr.registers) != count:
            raise ValueError(f"FC{function} {address}+{count}: {len(rr.registers)} registers")


async def client_loop(k: int, args, reads: list[tuple[int, int]], totals: Totals, stop: asyncio.Event) -> None:
    function = 4 if k % 2 else 3
    unit = (0, 1, 255)[k % 3]
    cls = PymodbusClient if k < args.pymodbus else RawClient
    await asyncio.sleep(args.period * k / max(args.clients, 1))  # spread the clients over the period
    client = None
    due = time.monotonic()
    while not stop.is_set():
        try:
            if client is None:
                client = cls(args.host, args.port, unit)
                await client.connect()
            for address, count in reads:
                if stop.is_set():
                    break
                t0 = time.perf_counter()
                await client.read(function, address, count)
                totals.latency.add(time.perf_counter() - t0)
                totals.requests += 1
                totals.registers += count
            else:
                totals.passes += 1
        except (TimeoutError, OSError, ValueError, ConnectionError, asyncio.IncompleteReadError) as exc:
            totals.error(f"client {k} ({cls.__name__}): {type(exc).__name__}: {exc}")
            if client is not None:
                await client.close()
            client = None
            totals.reconnects += 1
            await asyncio.sleep(0.5)
        due += args.period
        delay = due - time.monotonic()
        if delay < 0:
            totals.slow_passes += 1
            due = time.monotonic()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    if client is not None:
        await client.close()


async def main_async(args) -> None:
    reads = blocks(json.loads(args.ranges))
    totals = Totals()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_stdin() -> None:
        sys.stdin.read()  # returns when the coordinator closes the pipe (or dies)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_stdin, daemon=True).start()
    tasks = [asyncio.create_task(client_loop(k, args, reads, totals, stop)) for k in range(args.clients)]

    async def report() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.report_s)
            except TimeoutError:
                print(json.dumps(totals.as_dict()), flush=True)

    await asyncio.gather(report(), *tasks)
    print(json.dumps({**totals.as_dict(final=True), "final": True, "reads_per_pass": len(reads)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ranges", required=True, help="JSON list of [start, end) served register ranges")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--pymodbus", type=int, default=2, help="how many of the clients use pymodbus")
    ap.add_argument("--period", type=float, default=1.0, help="seconds between the starts of two passes")
    ap.add_argument("--report-s", type=float, default=5.0)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
