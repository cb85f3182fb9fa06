"""Modbus TCP throughput: requests/s reading 100 registers, sequential, one raw-socket client.

Two servers, each in its own process, measured alternately in the same run:
  * baseline: a stock pymodbus 3.16.1 ModbusTcpServer serving a plain block of 125 registers;
  * bmsgw: ``python -m gateway run`` on the default config (4 strings x 120 batteries), polling live (so the
    store changes while we read) the simulated bank, which runs in a third process (``bmsgw simulate``) as
    real sensors would sit outside the gateway; we read string 1's cell voltages (FC4 at 10000).
  * bmsgw again, same config, after one full scan with polling paused (the store does not change).
The client is a raw socket (pymodbus's client and mbpoll are slower than either server).  The last line
printed is the headline: bmsgw's figure as a ratio of the baseline's.

Also measured: ``--clients`` (20) connections at once, each with one request outstanding, from a client
process of its own, against the stock server and the live gateway.

    .venv/bin/python bench/modbus_tcp.py [--seconds 2] [--rounds 3] [--clients 20]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COUNT = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_pymodbus(port: int) -> None:
    """The baseline: stock pymodbus, a plain data block, unit id 1."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def main():
        device = SimDevice(id=1, simdata=[SimData(0, values=list(range(125)), datatype=DataType.REGISTERS)])
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever()

    asyncio.run(main())


def wait_answering(port: int, address: int, timeout: float = 60.0, need_data: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, address, COUNT))
                reply = recv_exact(s, 9 + 2 * COUNT)
                if not need_data or reply[9:11] != b"\xff\xff":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server on port {port} did not answer within {timeout:.0f} s")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)


def measure(port: int, address: int, seconds: float) -> float:
    """Sequential FC4 reads of COUNT registers for ``seconds``; returns requests/s."""
    expected = 9 + 2 * COUNT
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n, tid = 0, 0
        end = time.perf_counter() + seconds
        start = time.perf_counter()
        while True:
            tid = (tid + 1) & 0xFFFF
            s.sendall(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, address, COUNT))
            reply = recv_exact(s, expected)
            if reply[7] != 4:
                raise SystemExit(f"port {port}: exception answer {reply.hex()}")
            n += 1
            if n % 64 == 0 and time.perf_counter() >= end:
                break
        return n / (time.perf_counter() - start)


def measure_concurrent(port: int, address: int, seconds: float, clients: int) -> float:
    """``clients`` connections at once, each reading sequentially (one request outstanding per connection), in
    a client process of its own (asyncio); returns the total requests/s."""
    out = subprocess.run([sys.executable, __file__, "--client-worker", f"{port},{address},{seconds},{clients}"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def client_worker(spec: str) -> None:
    port, address, seconds, clients = spec.split(",")
    expected = 9 + 2 * COUNT

    async def one(end: float) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n, tid = 0, 0
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            tid = (tid + 1) & 0xFFFF
            writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, int(address), COUNT))
            reply = await reader.readexactly(expected)
            if reply[7] != 4:
                raise SystemExit(f"port {port}: exception answer {reply.hex()}")
            n += 1
        writer.close()
        return n

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        counts = await asyncio.gather(*(one(start + float(seconds)) for _ in range(int(clients))))
        print(sum(counts) / (loop.time() - start))

    asyncio.run(main())


def start_simulator(tmp: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """``bmsgw simulate`` on the default config; returns the process and each bus's pseudo-terminal."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "--config", str(ROOT / "config.yaml")],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    ports = {}
    while len(ports) < len(data["buses"]):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("bmsgw simulate stopped before printing its ports")
        name, _, rest = line.partition(": ")
        ports[name] = rest.split()[0]
    return proc, ports


def start_bmsgw(tmp: Path, port: int, ports: dict[str, str] | None) -> subprocess.Popen:
    """``ports``: poll those pseudo-terminals live; None: the in-process simulator, one scan, then quiet."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    if ports is None:
        tmp = tmp / "quiet"
        data["simulator"].update(enabled=True, wire_time=False)
        data["gateway"]["poll"].update(fast_s=3600, slow_s=86400)
    else:
        data["simulator"]["enabled"] = False
        for bus in data["buses"]:
            bus["port"] = ports[bus["name"]]
    tmp.mkdir(exist_ok=True)
    data["gateway"]["state_dir"] = str(tmp / "var")
    data["gateway"]["log_level"] = "WARNING"
    data["modbus_tcp"] = {**data.get("modbus_tcp", {}), "listen": f"127.0.0.1:{port}"}
    # two gateways run side by side: each face on a port of its own (a taken port refuses start-up)
    for section in ("web", "prometheus", "snmp"):
        data[section] = {**data.get(section, {}), "listen": f"127.0.0.1:{free_port()}"}
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "WARNING", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one measurement")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per server (median reported)")
    ap.add_argument("--clients", type=int, default=20, help="connections of the concurrent measurement (default 20)")
    ap.add_argument("--serve-pymodbus", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_pymodbus:
        serve_pymodbus(args.serve_pymodbus)
        return 0
    if args.client_worker:
        client_worker(args.client_worker)
        return 0

    base_port, ours_port, quiet_port = free_port(), free_port(), free_port()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-pymodbus", str(base_port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            sim, ports = start_simulator(Path(tmp))
            procs.append(sim)
            procs.append(start_bmsgw(Path(tmp), ours_port, ports))
            procs.append(start_bmsgw(Path(tmp), quiet_port, None))
            wait_answering(base_port, 0)
            wait_answering(ours_port, 10000, timeout=120, need_data=True)
            wait_answering(quiet_port, 10000, timeout=120, need_data=True)
            base, ours, quiet, base_c, ours_c = [], [], [], [], []
            for _ in range(args.rounds + 1):  # the first round warms up and is not counted
                base.append(measure(base_port, 0, args.seconds))
                quiet.append(measure(quiet_port, 10000, args.seconds))
                ours.append(measure(ours_port, 10000, args.seconds))
                base_c.append(measure_concurrent(base_port, 0, args.seconds, args.clients))
                ours_c.append(measure_concurrent(ours_port, 10000, args.seconds, args.clients))
            del base[0], quiet[0], ours[0], base_c[0], ours_c[0]
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    b, o, q = statistics.median(base), statistics.median(ours), statistics.median(quiet)
    def listed(rates: list[float]) -> str:
        return ", ".join(f"{x:,.0f}" for x in rates)

    print(f"client: raw socket, sequential FC4 reads of {COUNT} registers, {args.rounds} rounds x {args.seconds:g} s, "
          f"cpus={os.cpu_count()}")
    print(f"baseline stock pymodbus 3.16.1 server, plain data block: {b:,.0f} requests/s  (rounds: {listed(base)})")
    print(f"bmsgw modbus_tcp, default config, store not changing:    {q:,.0f} requests/s  (rounds: {listed(quiet)})")
    print(f"bmsgw modbus_tcp, default config, polling live:          {o:,.0f} requests/s  (rounds: {listed(ours)})")
    print("(all servers run during every round: the live gateway's polling and the simulator load the machine "
          "for all)")
    bc, oc = statistics.median(base_c), statistics.median(ours_c)
    print(f"{args.clients} concurrent clients (one client process, asyncio): stock pymodbus {bc:,.0f} requests/s "
          f"(rounds: {listed(base_c)}), bmsgw polling live {oc:,.0f} requests/s (rounds: {listed(ours_c)}): "
          f"{oc / bc:.2f}x")
    print(f"store not changing: {q / b:.2f}x the baseline")
    print(f"modbus_tcp 100-register reads, polling live: {o / b:.2f}x the stock pymodbus server "
          f"({o:,.0f} vs {b:,.0f} requests/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
