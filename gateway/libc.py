"""Knobs of the C library that Python does not offer (Linux with glibc), through ctypes; elsewhere each is a no-op
that says so by returning False.

* Timer slack: how late the kernel may wake a thread from its timers.  The RTU inter-frame silence (1.75 ms at
  115200 baud) is slept by each bus's thread with ``time.sleep`` (clock_nanosleep, to the nanosecond), and the
  simulator paces its replies at the wire's speed the same way; the kernel's default slack of 50 us on every such
  wake-up is about 1.5 % of a transaction.
* Malloc arenas: glibc gives each thread that allocates its own arena (up to eight per core), and each keeps
  freed memory of its own.  The gateway's threads (a bus's each, the history writer, the analytics, MQTT) take
  turns on the GIL anyway, so one arena serves them as fast and saves about 3 MB of RSS on the default bank
  (bench/controller_budget.py), on a controller with 512 MB.
"""
from __future__ import annotations

import ctypes

_PR_SET_TIMERSLACK = 29
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # the process's own symbols, the C library's among them


def set_timer_slack(ns: int = 1000) -> bool:
    """Let the kernel wake the calling thread within ``ns`` of its timers (default slack: 50 us)."""
    try:
        return bool(_libc().prctl(_PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def limit_malloc_arenas(count: int = 1) -> bool:
    """Let the C library's allocator make at most ``count`` arenas from now on (before threads start: theirs)."""
    try:
        libc = _libc()
        libc.gnu_get_libc_version  # noqa: B018  (mallopt's M_ARENA_MAX means this only to glibc)
        return bool(libc.mallopt(_M_ARENA_MAX, count) == 1)
    except (OSError, AttributeError):
        return False
