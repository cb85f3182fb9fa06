"""One asyncio timer for the earliest of several wall-clock deadlines (alarm delays, digest windows)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class DeadlineTimer:
    def __init__(self, callback: Callable[[], None], slack: float = 0.001) -> None:
        self.callback = callback
        self.slack = slack  # fire this much after the deadline, so ``now >= deadline`` holds
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, loop: asyncio.AbstractEventLoop | None, deadline: float | None) -> None:
        """Fire at ``deadline`` (time.time() seconds) unless an earlier one is armed; None cancels."""
        if loop is None:
            return
        if deadline is None:
            self.cancel()
            return
        if self._handle is not None and self._at is not None and self._at <= deadline:
            return
        self.cancel()
        self._at = deadline
        self._handle = loop.call_later(max(0.0, deadline - time.time()) + self.slack, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None

    def _fire(self) -> None:
        self._handle = self._at = None
        self.callback()
