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
process of its own (plain sockets on one epoll: an asyncio client costs more per request than the gateway and
set the pace), against the stock server and the live gateway, alternately (which goes first alternates too),
with each server's CPU time per request (read from /proc: on the controller, where the server is the one
short of CPU, that is the figure that counts) and the client's CPU share (near 1.0 means the client set the
pace).  The client's own ceiling is measured at the end against a trivial canned-answer server
(``--client-ceiling`` measures only that).  Figures are medians of the rounds with their range.

    .venv/bin/python bench/modbus_tcp.py [--seconds 2] [--concurrent-seconds 3] [--rounds 5] [--clients 20]

Measured 2026-12-03 on the shared 2-core machine (load average 2-5 during the runs), default options:
20 concurrent clients 4.16x and 4.02x stock pymodbus (per-round ratios 3.29-4.83 and 3.34-4.29); server CPU per
request 31.8 / 39.2 us against pymodbus's 187.5 / 200.9 us (5.9x / 5.2x, spread under 10 %); the epoll client's
ceiling 36,000-40,000 requests/s at 0.4 of a core (the asyncio client it replaced: about 7,000, below the
gateway's 14,000-16,000: the earlier 2.66x was the client's limit).  Sequential, polling live: 2.46x and 3.71x
(rounds spread +-30-50 % under that load: one client's round trips wait on the scheduler), CPU per request 5.2x.
With the RTU transport in a thread per bus (the event loop no longer wakes several times per sensor
transaction), load average 0.75-2.0: sequential 4.01x polling live (12,308 vs 3,070 requests/s) and 4.14x with
the store not changing; 20 concurrent clients 4.75x (per round 4.15-6.79); CPU per request 4.63x / 6.16x.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


def wait_answering(port: int, address: int, timeout: float = 60.0, need_data: bool = False,
                   log: Path | None = None) -> None:
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
    raise SystemExit(f"server on port {port} did not answer within {timeout:.0f} s" +
                     (f"; its log ends:\n{log.read_text()[-2000:]}" if log and log.exists() else ""))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)


def measure(port: int, address: int, seconds: float, server_pid: int, cpu_us: list[float]) -> float:
    """Sequential FC4 reads of COUNT registers for ``seconds``; returns requests/s, and appends the server's CPU
    microseconds per request to ``cpu_us``."""
    before = cpu_seconds(server_pid)
    rate, elapsed = _measure(port, address, seconds)
    cpu_us.append(1e6 * (cpu_seconds(server_pid) - before) / max(1.0, rate * elapsed))
    return rate


def _measure(port: int, address: int, seconds: float) -> tuple[float, float]:
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
        elapsed = time.perf_counter() - start
        return n / elapsed, elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Concurrent:
    """One concurrent measurement: total requests/s, the client process's CPU share of one core (near 1.0: the
    client, not the server, set the pace), and the server's CPU microseconds per request."""

    rate: float
    client_cpu: float
    server_us: float


def measure_concurrent(port: int, address: int, seconds: float, clients: int, server_pid: int | None) -> Concurrent:
    """``clients`` connections at once, each reading sequentially (one request outstanding per connection), from
    a client process of its own; the server's CPU time is read around the run."""
    before = cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run([sys.executable, __file__, "--client-worker", f"{port},{address},{seconds},{clients}"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    used = cpu_seconds(server_pid) - before if server_pid else 0.0
    rate, client_cpu, elapsed = map(float, out.stdout.split())
    return Concurrent(rate, client_cpu, 1e6 * used / max(1.0, rate * elapsed))


def client_worker(spec: str) -> None:
    """The concurrent client: plain non-blocking sockets on one epoll, no asyncio (whose streams cost more CPU
    per request than the servers measured: the client would set the pace).  Prints requests/s, the share of one
    core this process used meanwhile, and the seconds measured."""
    port, address, seconds, clients = spec.split(",")
    expected = 9 + 2 * COUNT
    # every connection's request i carries transaction id i; answers are checked by length and function code
    frames = [struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, int(address), COUNT) for tid in range(256)]
    socks: dict[int, socket.socket] = {}
    pending: dict[int, int] = {}  # bytes of the current answer still to come, per connection
    sent: dict[int, int] = {}
    for _ in range(int(clients)):
        s = socket.create_connection(("127.0.0.1", int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = s
    poller = select.epoll()
    for fd in socks:
        poller.register(fd, select.EPOLLIN)
    n = 0
    cpu0, start = time.process_time(), time.perf_counter()
    end = start + float(seconds)
    for fd, s in socks.items():
        s.send(frames[0])
        pending[fd], sent[fd] = expected, 1
    while True:
        for fd, _ in poller.poll():
            s = socks[fd]
            data = s.recv(65536)
            if not data:
                raise SystemExit(f"port {port}: connection closed")
            left = pending[fd]
            if left == expected and data[7] != 4:
                raise SystemExit(f"port {port}: exception answer {data.hex()}")
            left -= len(data)
            if left > 0:
                pending[fd] = left
                continue
            if left < 0:
                raise SystemExit(f"port {port}: {-left} bytes more than one answer")
            n += 1
            s.send(frames[sent[fd] & 0xFF])
            sent[fd] += 1
            pending[fd] = expected
        if n & 63 == 0 and time.perf_counter() >= end:
            break
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    for s in socks.values():
        s.close()
    print(n / elapsed, cpu / elapsed, elapsed)


def serve_trivial(port: int) -> None:
    """The cheapest server this machine can run in Python, to find the client's own ceiling: every 12-byte
    request gets a canned answer (its transaction id copied), on one epoll."""
    answer = bytearray(struct.pack(">HHHBBB", 0, 0, 3 + 2 * COUNT, 1, 4, 2 * COUNT) + bytes(2 * COUNT))
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                c, _ = listener.accept()
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[c.fileno()] = c
                poller.register(c.fileno(), select.EPOLLIN)
                continue
            c = conns[fd]
            try:
                data = c.recv(65536)
            except OSError:  # reset by the client
                data = b""
            if not data:
                poller.unregister(fd)
                del conns[fd]
                c.close()
                continue
            for i in range(0, len(data) - 11, 12):  # the bench's requests are exactly 12 bytes
                answer[0:2] = data[i:i + 2]
                c.send(answer)


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
    for section, body in data.items():
        if section != "modbus_tcp" and isinstance(body, dict) and "listen" in body:
            body["listen"] = f"127.0.0.1:{free_port()}"
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "WARNING", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp / "gateway.log").open("w"))


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """Median, then the range of the rounds and their relative spread: ``12,345 (11,900-12,800, +-3.6 %)``."""
    med = statistics.median(values)
    half = (max(values) - min(values)) / 2 / med * 100 if med else 0.0
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}}, +-{half:.1f} %)"


def client_ceiling(seconds: float, clients: int, rounds: int) -> list[Concurrent]:
    """The concurrent client against the trivial server: the most it can ask of any server on this machine."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-trivial", str(port)])
    try:
        wait_answering(port, 0)
        return [measure_concurrent(port, 0, seconds, clients, proc.pid) for _ in range(rounds)]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one sequential measurement")
    ap.add_argument("--concurrent-seconds", type=float, default=3.0, help="length of one concurrent measurement")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per server (median reported)")
    ap.add_argument("--clients", type=int, default=20, help="connections of the concurrent measurement (default 20)")
    ap.add_argument("--client-ceiling", action="store_true",
                    help="only measure the concurrent client against a trivial server (its own ceiling), and exit")
    ap.add_argument("--serve-pymodbus", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-trivial", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_pymodbus:
        serve_pymodbus(args.serve_pymodbus)
        return 0
    if args.serve_trivial:
        serve_trivial(args.serve_trivial)
        return 0
    if args.client_worker:
        client_worker(args.client_worker)
        return 0
    load_before = os.getloadavg()
    if args.client_ceiling:
        runs = client_ceiling(args.concurrent_seconds, args.clients, args.rounds)
        print(f"load average {load_before[0]:.2f}, cpus={os.cpu_count()}")
        print(f"client alone, {args.clients} connections against a trivial server: "
              f"{spread([r.rate for r in runs])} requests/s, client CPU {spread([r.client_cpu for r in runs], '.2f')} "
              f"of a core, trivial server {spread([r.server_us for r in runs], '.1f')} us/request")
        return 0

    base_port, ours_port, quiet_port = free_port(), free_port(), free_port()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base_proc = subprocess.Popen([sys.executable, __file__, "--serve-pymodbus", str(base_port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(base_proc)
            sim, ports = start_simulator(Path(tmp))
            procs.append(sim)
            ours_proc = start_bmsgw(Path(tmp), ours_port, ports)
            procs.append(ours_proc)
            quiet_proc = start_bmsgw(Path(tmp), quiet_port, None)
            procs.append(quiet_proc)
            wait_answering(base_port, 0)
            wait_answering(ours_port, 10000, timeout=240, need_data=True, log=Path(tmp) / "gateway.log")
            wait_answering(quiet_port, 10000, timeout=240, need_data=True, log=Path(tmp) / "quiet" / "gateway.log")
            base, ours, quiet = [], [], []
            base_us: list[float] = []
            ours_us: list[float] = []
            quiet_us: list[float] = []
            base_c: list[Concurrent] = []
            ours_c: list[Concurrent] = []
            for i in range(args.rounds + 1):  # the first round warms up and is not counted
                # alternate which server goes first, so that a drift in the machine's load favours neither
                pair = [(base_c, base_port, 0, base_proc.pid), (ours_c, ours_port, 10000, ours_proc.pid)]
                for runs, port, address, pid in pair if i % 2 else pair[::-1]:
                    runs.append(measure_concurrent(port, address, args.concurrent_seconds, args.clients, pid))
                base.append(measure(base_port, 0, args.seconds, base_proc.pid, base_us))
                quiet.append(measure(quiet_port, 10000, args.seconds, quiet_proc.pid, quiet_us))
                ours.append(measure(ours_port, 10000, args.seconds, ours_proc.pid, ours_us))
            for runs in (base, quiet, ours, base_c, ours_c, base_us, quiet_us, ours_us):
                del runs[0]
            ceiling = client_ceiling(args.concurrent_seconds, args.clients, 2)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    load_after = os.getloadavg()
    b, o, q = statistics.median(base), statistics.median(ours), statistics.median(quiet)

    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; cpus={os.cpu_count()}")
    print(f"sequential: one raw-socket client, FC4 reads of {COUNT} registers, {args.rounds} rounds x "
          f"{args.seconds:g} s; median (range, +-half range)")
    print(f"  baseline stock pymodbus 3.16.1 server, plain data block: {spread(base)} requests/s, "
          f"server {spread(base_us, '.1f')} CPU us/request")
    print(f"  bmsgw modbus_tcp, default config, store not changing:    {spread(quiet)} requests/s, "
          f"server {spread(quiet_us, '.1f')} CPU us/request")
    print(f"  bmsgw modbus_tcp, default config, polling live:          {spread(ours)} requests/s, "
          f"server {spread(ours_us, '.1f')} CPU us/request (polling included)")
    print(f"  CPU per request, pymodbus / bmsgw polling live: "
          f"{statistics.median(base_us) / statistics.median(ours_us):.2f}")
    print("  (all servers run during every round: the live gateway's polling and the simulator load the machine "
          "for all)")
    ratios = [oc.rate / bc.rate for bc, oc in zip(base_c, ours_c, strict=True)]
    cpu_ratios = [bc.server_us / oc.server_us for bc, oc in zip(base_c, ours_c, strict=True) if oc.server_us]
    print(f"{args.clients} concurrent clients (one epoll client process), {args.rounds} rounds x "
          f"{args.concurrent_seconds:g} s, the two servers alternately:")
    print(f"  stock pymodbus:      {spread([r.rate for r in base_c])} requests/s, "
          f"server {spread([r.server_us for r in base_c], '.1f')} CPU us/request, "
          f"client CPU {spread([r.client_cpu for r in base_c], '.2f')} of a core")
    print(f"  bmsgw polling live:  {spread([r.rate for r in ours_c])} requests/s, "
          f"server {spread([r.server_us for r in ours_c], '.1f')} CPU us/request (polling included), "
          f"client CPU {spread([r.client_cpu for r in ours_c], '.2f')} of a core")
    print(f"  client alone against a trivial server: {spread([r.rate for r in ceiling])} requests/s "
          f"(its ceiling), client CPU {spread([r.client_cpu for r in ceiling], '.2f')} of a core")
    print(f"  ratio per round (bmsgw / pymodbus): {spread(ratios, '.2f')}; "
          f"CPU per request, pymodbus / bmsgw: {spread(cpu_ratios, '.2f')}")
    print(f"store not changing: {q / b:.2f}x the baseline")
    print(f"{args.clients} concurrent clients: {statistics.median(ratios):.2f}x the stock pymodbus server")
    print(f"modbus_tcp 100-register reads, polling live: {o / b:.2f}x the stock pymodbus server "
          f"({o:,.0f} vs {b:,.0f} requests/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
