"""Sub-millisecond waits in the event loop, for the RTU inter-frame silence.

``asyncio.sleep`` wakes through epoll, whose timeout is rounded up to whole milliseconds: a 1.75 ms silence
becomes 2-2.5 ms, which costs 5-10 % of a bus's capacity at 115200 baud.  On Linux a timerfd armed with an
absolute CLOCK_MONOTONIC deadline (the clock of ``time.monotonic``) wakes the loop within about 0.1 ms.
Where timerfd is not available (not Linux, no libc), it falls back to ``asyncio.sleep``.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc() -> ctypes.CDLL | Literal[False] | None:
    """None: os has timerfd (3.13+); libc with timerfd_*; False: neither (asyncio.sleep it is)."""
    create = getattr(os, "timerfd_create", None)  # Python 3.13+ has it built in
    if create is not None:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create, libc.timerfd_settime  # noqa: B018 - raise AttributeError when missing
        return libc
    except (OSError, AttributeError):
        return False


_LIBC = _load_libc()


_PR_SET_TIMERSLACK = 29


def set_timer_slack(ns: int = 1000) -> bool:
    """Let the kernel wake the calling thread within ``ns`` of its timers (default slack: 50 us).

    The RTU silence and the simulator's wire-time pacing wake a thread for every transaction; 50 us of slack
    on each is about 1.5 % of a transaction at 115200 baud.  Returns False where prctl is unavailable.
    """
    libc = _LIBC if _LIBC else None
    try:
        libc = libc or ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class PreciseSleeper:
    """``await sleeper.sleep_until(t)``: wake at ``time.monotonic() >= t``, to about 0.1 ms.

    One per transport (one waiter at a time); ``close()`` releases the file descriptor.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[None] | None = None
        self._libc: ctypes.CDLL | None = None  # the timerfd in use: libc's, or (None) the os module's
        # libc's timerfd_settime with its argument types declared and one itimerspec reused: arming is once per
        # transaction, and building the structures and converting the arguments each time cost twice the call
        self._settime: Callable[..., int] | None = None
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)

    def _open(self, loop: asyncio.AbstractEventLoop) -> bool:
        if _LIBC is False:
            return False
        self._libc = _LIBC
        flags = os.O_NONBLOCK | os.O_CLOEXEC
        if _LIBC is None:
            # os.timerfd_* exist from Python 3.13 on; _LIBC is None only where os has them
            fd = os.timerfd_create(time.CLOCK_MONOTONIC, flags=flags)  # type: ignore[attr-defined]  # 3.13+
        else:
            fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, flags)
            if fd < 0:
                return False
            # called holding the GIL (PyDLL): the call returns at once, and releasing the GIL around it let the
            # gateway's other threads take it in the middle of each transaction
            settime = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                        ctypes.c_void_p)(("timerfd_settime", ctypes.PyDLL(_LIBC._name)))
            self._settime = settime
        self._fd = fd
        self._loop = loop
        loop.add_reader(fd, self._fired)
        set_timer_slack()  # this is the event loop's thread
        return True

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except (BlockingIOError, InterruptedError):
            return
        fut = self._future
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _arm(self, deadline: float) -> None:
        sec = int(deadline)
        nsec = int((deadline - sec) * 1e9)
        if self._libc is None:
            initial = sec * 1_000_000_000 + nsec
            os.timerfd_settime_ns(self._fd, flags=os.TFD_TIMER_ABSTIME, initial=initial)  # type: ignore[attr-defined]  # 3.13+
            return
        value = self._spec.it_value  # it_interval stays 0: one shot
        value.tv_sec = sec
        value.tv_nsec = nsec
        settime = self._settime
        if (settime is None or settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0) and \
                self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")  # (again through libc: it keeps errno)

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()
            if not self._open(loop):
                await asyncio.sleep(delay)
                return
        fut = loop.create_future()
        self._future = fut
        self._arm(deadline)
        try:
            await fut
        finally:
            self._future = None

    def close(self) -> None:
        # a sleeper closed while someone waits (the port was lost during the silence) wakes them: they find the
        # port closed; a future nobody will ever resolve would hold the bus's lock for ever
        fut = self._future
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._fd >= 0:
            try:
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.remove_reader(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
                self._loop = None
