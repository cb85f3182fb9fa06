"""What the network fuzzers share: reading a socket to its end with a deadline, errors logged anywhere, and
the process's memory and file descriptors after the storm."""
from __future__ import annotations

import logging
import os
import socket
import time


def recv_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    """Everything until the server closes; a server that neither answers nor closes in time is a hang."""
    out, end = bytearray(), time.monotonic() + limit_s
    while True:
        left = end - time.monotonic()
        assert left > 0, f"the server neither answered nor closed within {limit_s} s (hang); got {bytes(out[:200])!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


class ErrorLog(logging.Handler):
    """Errors logged anywhere while a fuzzer runs: a face's thread, asyncio's 'Exception in callback', pysnmp."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def new_since(self, n: int) -> list[str]:
        return [r.getMessage() for r in self.records[n:]]

    def __enter__(self) -> ErrorLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
