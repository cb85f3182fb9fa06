"""Timer slack: how late the kernel may wake a thread from its timers.

The RTU inter-frame silence (1.75 ms at 115200 baud) is slept by each bus's thread with ``time.sleep``
(clock_nanosleep on Linux, to the nanosecond), and the simulator paces its replies at the wire's speed the same
way; the kernel's default slack of 50 us on every such wake-up is about 1.5 % of a transaction.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_PR_SET_TIMERSLACK = 29


def set_timer_slack(ns: int = 1000) -> bool:
    """Let the kernel wake the calling thread within ``ns`` of its timers (default slack: 50 us).

    Returns False where prctl is unavailable (not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
