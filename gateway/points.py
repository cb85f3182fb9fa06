"""The point model: what a measured value is, and the live snapshot of the whole bank.

A *point family* (``PointSpec``) is a kind of value, e.g. ``cell.voltage``; a *point* (``PointRef``) is one
instance of it in the topology, e.g. string 2, cell 37.  Readings are immutable records; the store swaps
whole records, so readers on other threads never see a half-written value.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import FrozenInstanceError, dataclass
from operator import itemgetter
from typing import NamedTuple

log = logging.getLogger(__name__)

SCOPES = ("gateway", "bank", "string", "cell")


class Quality(enum.Enum):
    GOOD = "GOOD"
    STALE = "STALE"  # last good value is older than the staleness limit
    COMM_FAIL = "COMM_FAIL"  # the device did not answer its last poll
    OUT_OF_RANGE = "OUT_OF_RANGE"  # decoded, but outside the sensor's measuring range

    @property
    def usable(self) -> bool:
        return self is Quality.GOOD


@dataclass(frozen=True, slots=True)
class PointSpec:
    """A point family as the northbound faces see it.

    ``unit`` is the SI unit of ``value`` in the store.  ``dtype``/``scale`` say how the value is encoded
    in Modbus registers (register = round(value / scale)); ``slot`` fixes its place in the point map.
    """

    id: str
    scope: str
    unit: str
    description: str
    slot: int
    dtype: str = "uint16"  # northbound encoding: int16 uint16 int32 uint32
    scale: float = 1.0
    valid_range: tuple[float, float] | None = None
    poll: str = "fast"
    kind: str = "gauge"  # gauge | counter | state
    source: str = "measured"  # measured (by a device profile) | derived (computed by the gateway)
    channels: int = 0  # bank/gateway scope: number of channels (0 = a single value)
    metric: str | None = None  # Prometheus name override
    states: tuple[tuple[int, str], ...] = ()  # for kind=state: value -> label
    writable: bool = False

    @property
    def width(self) -> int:
        return 2 if self.dtype in ("int32", "uint32") else 1

    @property
    def name(self) -> str:
        """The id without its scope prefix: ``cell.voltage`` -> ``voltage``."""
        head, _, rest = self.id.partition(".")
        return rest if head == self.scope and rest else self.id


class PointRef(NamedTuple):
    """One point in the topology.  ``string``/``cell``/``channel`` are 1-based or None.

    Every store, index and feed is a dict keyed by PointRef, and every reading written or read is such a
    lookup: a named tuple hashes and compares in C, where a dataclass called a Python ``__hash__`` and
    ``__eq__`` on each (and took four times as long to create).  Immutable, hashable, picklable; equal only to
    a ref with the same four fields (a plain tuple of them too, which nothing uses as a key)."""

    point: str
    string: int | None = None
    cell: int | None = None
    channel: int | None = None

    def keys(self) -> dict[str, int]:  # not a mapping: the topology keys that are set
        out = {}
        if self.string is not None:
            out["string"] = self.string
        if self.cell is not None:
            out["cell"] = self.cell
        if self.channel is not None:
            out["channel"] = self.channel
        return out

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")  # as the frozen dataclass it was said

    def __str__(self) -> str:
        parts = [self.point]
        for key, val in self.keys().items():
            parts.append(f"{key}={val}")
        return " ".join(parts)


class Reading(NamedTuple):
    """A point's value, its quality and when it was read.  A named tuple: hundreds are made every second, and a
    tuple is built in C (a frozen dataclass sets each field through object.__setattr__)."""

    value: float | None
    quality: Quality
    ts: float  # wall-clock seconds (time.time())


_REF_OF = itemgetter(0)  # the ref of an item (ref, reading)
_POINT_OF = itemgetter(0)  # the family of a ref (PointRef.point)

Listener = Callable[[list[tuple[PointRef, Reading]]], None]
# An ingest transform: (ref, reading, fresh) -> the items to store instead.  ``fresh`` is False when only the
# quality of a stored reading changes (``mark``): the value is the one the transform returned before.
Transform = Callable[[PointRef, Reading, bool], list[tuple[PointRef, Reading]]]


class PointStore:
    """The live snapshot of the bank.

    Writers (the engine, analytics) call ``put_many`` from the event loop; readers on any thread call
    ``get``/``snapshot``.  Two ways to follow changes:

    - the change feed, for faces that answer requests from a cached image (a register image, encoded
      varbinds): ``generation, changed = store.changes_since(seen)`` at request time gives the points written
      since generation ``seen`` -- work proportional to what changed, nothing done while nobody asks;
    - listeners (``subscribe``), for consumers that must see every batch as it comes (alarms, history): called
      after each batch in the writer's context, they must be quick (queue the work, do not do I/O).

    An ingest transform (``add_transform``) sees every reading of one point family before it is stored and
    says what is stored instead: the string supervision stores the offset-corrected string current, with the
    measured one beside it, so that every reader (faces, history, alarms, analytics) sees one current; the
    feed and the listeners get what was stored.
    """

    # The change feed keeps the refs of the last batches, at most this many refs per point in the store (and
    # at least MIN_FEED refs): a reader further behind reads everything again, which is correct, only slower.
    FEED_PER_POINT = 4
    MIN_FEED = 4096

    def __init__(self) -> None:
        self._readings: dict[PointRef, Reading] = {}
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._transforms: dict[str, Transform] = {}
        self.generation = 0  # bumped on every batch; lets readers cache renderings per generation
        self._feed: deque[tuple[int, tuple[PointRef, ...]]] = deque()
        self._feed_refs = 0

    def add_transform(self, point: str, transform: Transform) -> None:
        """Pass every reading of family ``point`` through ``transform`` before it is stored (one per family)."""
        if point in self._transforms and self._transforms[point] is not transform:
            raise ValueError(f"{point} already has an ingest transform")
        self._transforms[point] = transform

    def remove_transform(self, point: str) -> None:
        self._transforms.pop(point, None)

    def _transformed(self, batch: list[tuple[PointRef, Reading]], fresh: bool) -> list[tuple[PointRef, Reading]]:
        transforms = self._transforms
        out: list[tuple[PointRef, Reading]] = []
        for item in batch:
            fn = transforms.get(item[0].point)
            if fn is None:
                out.append(item)
            else:
                out.extend(fn(item[0], item[1], fresh))
        return out

    def put(self, ref: PointRef, value: float | None, quality: Quality = Quality.GOOD, ts: float | None = None) -> None:
        self.put_many([(ref, Reading(value, quality, time.time() if ts is None else ts))])

    def put_many(self, items: Iterable[tuple[PointRef, Reading]]) -> None:
        batch = list(items)
        if not batch:
            return
        refs = tuple(map(_REF_OF, batch))
        # most batches hold no reading of a transformed family (a cell sensor's, the analytics'): that is found in
        # C from the refs the change feed keeps anyway, where the transform loop is Python per reading
        if self._transforms and not self._transforms.keys().isdisjoint(map(_POINT_OF, refs)):
            batch = self._transformed(batch, True)
            refs = tuple(map(_REF_OF, batch))
        self._publish(batch, refs)

    def _publish(self, batch: list[tuple[PointRef, Reading]], refs: tuple[PointRef, ...] | None = None) -> None:
        """Store ``batch`` (``refs``: its refs in order, when the caller has them), then call the listeners."""
        if not batch:
            return
        if refs is None:
            refs = tuple(map(_REF_OF, batch))
        with self._lock:
            self._readings.update(batch)
            self.generation += 1
            feed = self._feed
            feed.append((self.generation, refs))
            self._feed_refs += len(refs)
            limit = max(self.MIN_FEED, self.FEED_PER_POINT * len(self._readings))
            while self._feed_refs > limit and len(feed) > 1:
                self._feed_refs -= len(feed.popleft()[1])
        for listener in self._listeners:
            try:
                listener(batch)
            except Exception:  # a faulty consumer must not stop polling
                log.exception("point store listener %r failed", listener)

    def mark(self, refs: Iterable[PointRef], quality: Quality) -> list[PointRef]:
        """Set the quality of existing readings, keeping their last value; returns the refs changed."""
        batch = []
        with self._lock:
            for ref in refs:
                old = self._readings.get(ref)
                if old is not None and old.quality is not quality:
                    batch.append((ref, Reading(old.value, quality, old.ts)))
        changed = [ref for ref, _ in batch]
        if self._transforms and batch:
            batch = self._transformed(batch, False)
        self._publish(batch)
        return changed

    def changes_since(self, generation: int) -> tuple[int, set[PointRef] | None]:
        """``(current generation, the points written after generation)``; the set is None when ``generation``
        is older than the feed keeps (or unknown, e.g. -1): the caller then reads everything.  Any thread."""
        with self._lock:
            current = self.generation
            if generation >= current:
                return current, set()
            feed = self._feed
            if generation < 0 or not feed or feed[0][0] > generation + 1:
                return current, None
            changed: set[PointRef] = set()
            for gen, refs in reversed(feed):
                if gen <= generation:
                    break
                changed.update(refs)
            return current, changed

    def get(self, ref: PointRef) -> Reading | None:
        return self._readings.get(ref)

    def get_many(self, refs: Iterable[PointRef | None]) -> list[Reading | None]:
        """The readings of ``refs`` in order (None for a point not in the store, and for a None in ``refs``): one
        pass in C, where a column of a bank read with ``get`` is a Python call per battery.  Any thread."""
        return list(map(self._readings.get, refs))  # type: ignore[arg-type]  # (None is never a key)

    def value(self, ref: PointRef) -> float | None:
        """The value when it is usable (GOOD), else None."""
        reading = self._readings.get(ref)
        if reading is None or reading.quality is not Quality.GOOD:
            return None
        return reading.value

    def snapshot(self) -> dict[PointRef, Reading]:
        with self._lock:
            return dict(self._readings)

    def __iter__(self) -> Iterator[tuple[PointRef, Reading]]:
        return iter(self.snapshot().items())

    def __len__(self) -> int:
        return len(self._readings)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
