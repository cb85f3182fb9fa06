"""The C library's knobs (gateway/libc.py) take effect on this platform (Linux, glibc), as on the controllers."""
from __future__ import annotations

import ctypes
import subprocess
import sys
import threading
from pathlib import Path

from gateway.libc import set_timer_slack


def test_a_thread_sets_its_own_timer_slack():
    seen = {}
    main_thread_slack = Path("/proc/self/timerslack_ns").read_text()

    def bus_thread():
        seen["ok"] = set_timer_slack(1000)
        seen["slack"] = ctypes.CDLL(None).prctl(30, 0, 0, 0, 0)  # PR_GET_TIMERSLACK: the calling thread's

    t = threading.Thread(target=bus_thread)
    t.start()
    t.join()
    assert seen == {"ok": True, "slack": 1000}
    assert Path("/proc/self/timerslack_ns").read_text() == main_thread_slack, "the main thread keeps its own"


def test_threads_share_one_malloc_arena_once_limited():
    """Each thread that allocates gets an arena of its own (glibc's malloc_stats lists them); limited to one, they
    all allocate from the main arena."""
    probe = """
import ctypes, sys, threading
from gateway.libc import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas(1)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
threads = [threading.Thread(target=libc.malloc, args=(200_000,)) for _ in range(4)]
for t in threads:
    t.start()
    t.join()
libc.malloc_stats()
"""

    def arenas(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True)
        return sum(line.startswith("Arena ") for line in out.stderr.splitlines())

    assert arenas("limit") == 1
    assert arenas("free") > 1
