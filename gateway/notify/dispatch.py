"""Delivery: one worker thread per notifier, retries with exponential back-off, a record of what failed.

The event loop only puts jobs in a queue (``submit``); the worker calls the notifier's blocking
``deliver``.  A failed job is retried after ``backoff_s * 2**(attempt-1)`` seconds (at most
``max_backoff_s``) while other jobs go on; after ``attempts`` tries, or at once for a permanent error, it is
logged as not delivered.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .base import DeliveryError, Item, Notifier, describe_item

log = logging.getLogger(__name__)

MAX_QUEUE = 2000


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_s: float = 5.0
    max_backoff_s: float = 600.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))


@dataclass
class Job:
    recipient: str | None
    item: Item
    attempt: int = 0
    queued: float = field(default_factory=time.time)
    last_error: str = ""

    def what(self) -> str:
        return describe_item(self.item) + (f" to {self.recipient}" if self.recipient else "")


_STOP = object()


class Worker:
    def __init__(self, notifier: Notifier, policy: RetryPolicy) -> None:
        self.notifier = notifier
        self.policy = policy
        self.queue: queue.Queue = queue.Queue()
        self._retries: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"notify-{notifier.name}", daemon=True)
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        self.dropped = 0
        self.failures: deque[dict] = deque(maxlen=50)
        self.last_delivery: float | None = None
        self.idle = threading.Event()
        self.idle.set()

    def start(self) -> None:
        self.thread.start()

    def submit(self, recipient: str | None, item: Item) -> None:
        """Queue an item (any thread; never blocks).  A full queue drops the oldest job, and says so."""
        if self.queue.qsize() >= MAX_QUEUE:
            try:
                old = self.queue.get_nowait()
                if isinstance(old, Job):
                    self._give_up(old, "dropped: the queue is full (the notifier cannot keep up)")
                    self.dropped += 1
            except queue.Empty:
                pass
        self.idle.clear()
        self.queue.put(Job(recipient, item))

    def pending(self) -> int:
        return self.queue.qsize() + len(self._retries)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for up to ``timeout`` seconds), then stop; whatever is left is logged."""
        self.queue.put(_STOP)
        if self.thread.is_alive():
            self.thread.join(timeout)
        self._stop.set()
        left = []
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, Job):
                left.append(job)
        left += [j for _, _, j in self._retries]
        self._retries.clear()
        for job in left:
            self._give_up(job, "not delivered: the gateway stopped" + (f" (last error: {job.last_error})"
                                                                      if job.last_error else ""))
        try:
            self.notifier.close()
        except Exception:
            log.exception("closing notifier %s failed", self.notifier.name)

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = None
            if self._retries:
                timeout = max(0.0, self._retries[0][0] - time.monotonic())
            try:
                job = self.queue.get(timeout=timeout)
            except queue.Empty:
                job = None
            if job is _STOP:
                return
            if job is not None:
                self._attempt(job)
            now = time.monotonic()
            while self._retries and self._retries[0][0] <= now and not self._stop.is_set():
                _, _, due = heapq.heappop(self._retries)
                self._attempt(due)
                now = time.monotonic()
            if self.queue.empty() and not self._retries:
                self.idle.set()

    def _attempt(self, job: Job) -> None:
        job.attempt += 1
        try:
            self.notifier.deliver(job.recipient, job.item)
        except DeliveryError as exc:
            self._failed(job, str(exc), exc.permanent)
            return
        except Exception as exc:  # a notifier bug: treat as a failure that may pass
            log.exception("notifier %s failed on %s", self.notifier.name, job.what())
            self._failed(job, f"{type(exc).__name__}: {exc}", False)
            return
        self.delivered += 1
        self.last_delivery = time.time()
        if job.attempt > 1:
            log.info("%s: delivered %s on attempt %d", self.notifier.name, job.what(), job.attempt)

    def _failed(self, job: Job, error: str, permanent: bool) -> None:
        job.last_error = error
        if permanent or job.attempt >= self.policy.attempts:
            why = "permanent error" if permanent else f"{job.attempt} attempts"
            self._give_up(job, f"could not deliver after {why}: {error}")
            return
        delay = self.policy.delay(job.attempt)
        self.retried += 1
        log.warning("%s: %s failed (attempt %d of %d): %s; trying again in %.3g s", self.notifier.name, job.what(),
                    job.attempt, self.policy.attempts, error, delay)
        heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), job))

    def _give_up(self, job: Job, reason: str) -> None:
        self.failed += 1
        self.failures.append({"ts": time.time(), "notifier": self.notifier.name, "what": job.what(),
                              "attempts": job.attempt, "reason": reason})
        log.error("%s: %s: %s", self.notifier.name, job.what(), reason)

    def status(self) -> dict:
        return {"delivered": self.delivered, "failed": self.failed, "retried": self.retried, "dropped": self.dropped,
                "pending": self.pending(), "last_delivery": self.last_delivery,
                "last_failure": self.failures[-1] if self.failures else None}
