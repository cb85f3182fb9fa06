"""MQTT upload (config section ``mqtt``): the bank's readings and alarms to a broker of the user's choice.

Topics (``<prefix>`` is ``mqtt.topic_prefix``, ``bmsgw`` by default; ``<site>`` is ``site.id``):

  <prefix>/<site>/status                retained; {"state": "online"|"offline", ...}; "offline" is the last will
  <prefix>/<site>/gateway               the gateway's own figures (bus counters, poll duration, upload queue)
  <prefix>/<site>/bank                  charger monitor and room I/O
  <prefix>/<site>/string/<s>            string voltage, current, SOC ...
  <prefix>/<site>/string/<s>/cells      every battery of the string, one array per value (layout: string)
  <prefix>/<site>/string/<s>/cell/<c>   one battery (layout: cell)
  <prefix>/<site>/alarms                alarm raised / cleared events

With ``mqtt.discovery.enabled``, retained Home Assistant discovery configs for those topics as well
(``discovery.py``): announced at the first connection, again when Home Assistant says it is back
(``<discovery prefix>/status`` ``online``) and when the discovery settings change.

Every payload is JSON with ``seq`` (one counter for all queued messages of the gateway: gaps and duplicates
show), ``site`` and ``ts`` (Unix time the message was composed); each value carries its ``unit`` and the
``ts`` it was measured; values that are not GOOD are ``null`` with their ``quality``.  Data and alarms are
published with QoS 1 through the store-and-forward queue (``queue.py``); the status is published directly.

A publish cycle costs what changed (``FeedPayloads``): each topic's document is kept encoded and re-encoded from
the store's change feed, byte for byte what ``PayloadBuilder.messages`` composes from a snapshot (the plain
path, kept for ``tests/test_feed_payloads.py`` and ``bench/mqtt.py``).
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import random
import ssl
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Set as AbstractSet
from itertools import compress, count, repeat
from operator import eq, ne
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ... import __version__
from ...errors import ConfigError
from ...exposition import decimals_for
from ...hookspecs import AlarmEvent, hookimpl
from ...points import PointRef, Quality, Reading
from ...secretfiles import read_secret
from ...service import ReloadResult, Service
from .discovery import RECORD_FILE, DiscoveryPlan, DiscoveryRecord
from .queue import Encoded, MessageQueue

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config
    from ...pointmap import MappedPoint
    from ...points import PointStore

log = logging.getLogger(__name__)
# Home Assistant asks for a random delay before a device answers its birth message with its configs, so that
# the devices of a site do not all answer at once.
BIRTH_JITTER_S = 2.0
# Birth messages closer together than this are answered once (later, not dropped): anyone who may publish on
# the broker cannot make the gateway send its 1 MB of configs over and over.
BIRTH_MIN_INTERVAL_S = 30.0


def _ts(t: float) -> float:
    return round(t, 3)


class _Value:
    """How one mapped point goes into a payload."""

    __slots__ = ("ref", "unit", "places", "states")

    def __init__(self, mp: MappedPoint) -> None:
        self.ref = mp.ref
        self.unit = mp.spec.unit
        self.places = decimals_for(mp.spec.scale, 1.0)
        self.states = dict(mp.spec.states)

    def number(self, r: Reading | None) -> float | None:
        """The value for JSON: None unless GOOD and finite (JSON has no NaN), rounded to the resolution."""
        if r is None or r.quality is not Quality.GOOD or r.value is None or not math.isfinite(r.value):
            return None
        return round(r.value, self.places) if self.places is not None else r.value

    def entry(self, r: Reading) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.number(r)}
        if self.unit:
            out["unit"] = self.unit
        out["ts"] = _ts(r.ts)
        if r.quality is not Quality.GOOD:
            out["quality"] = r.quality.value
        elif self.states and out["value"] is not None:
            out["state"] = self.states.get(int(out["value"]), str(int(out["value"])))
        return out


class PayloadBuilder:
    """The messages of one publish cycle, read from the store through the point map."""

    def __init__(self, gateway: Gateway, prefix: str, layout: str) -> None:
        site = gateway.config.section("site")
        self.site = str(site["id"])
        self.base = f"{prefix.rstrip('/')}/{self.site}"
        self.layout = layout
        self.topology = gateway.topology
        self.scoped: dict[str, dict[str, list[_Value]]] = {"gateway": {}, "bank": {}}
        self.strings: dict[int, dict[str, list[_Value]]] = {s.id: {} for s in self.topology.strings}
        self.cells: dict[int, dict[str, list[_Value | None]]] = {s.id: {} for s in self.topology.strings}
        for mp in gateway.pointmap.entries:
            spec, ref = mp.spec, mp.ref
            if spec.scope in ("gateway", "bank"):
                self.scoped[spec.scope].setdefault(spec.id, []).append(_Value(mp))
            elif spec.scope == "string" and ref.string in self.strings:
                self.strings[ref.string].setdefault(spec.name, []).append(_Value(mp))
            elif spec.scope == "cell" and ref.string in self.cells and ref.cell is not None:
                n = self.topology.string(ref.string).cells
                column = self.cells[ref.string].setdefault(spec.name, [None] * n)
                if 1 <= ref.cell <= n:
                    column[ref.cell - 1] = _Value(mp)

    def topic(self, *parts: Any) -> str:
        return "/".join([self.base, *map(str, parts)])

    @staticmethod
    def _values(groups: dict[str, list[_Value]], snap) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, vals in groups.items():
            if len(vals) == 1 and vals[0].ref.channel is None:
                r = snap.get(vals[0].ref)
                if r is not None:
                    out[key] = vals[0].entry(r)
                continue
            chans = []
            for v in vals:
                r = snap.get(v.ref)
                if r is not None:
                    chans.append({"channel": v.ref.channel, **v.entry(r)})
            if chans:
                out[key] = chans
        return out

    def messages(self, snap: dict[PointRef, Reading], now: float) -> list[tuple[str, dict[str, Any], bool]]:
        """``(topic, document, is_values)`` for every topic that has something to say."""
        out: list[tuple[str, dict[str, Any], bool]] = []
        head = {"site": self.site, "ts": _ts(now)}
        for scope in ("gateway", "bank"):
            values = self._values(self.scoped[scope], snap)
            if values:
                out.append((self.topic(scope), {**head, "values": values}, True))
        for s in self.topology.strings:
            values = self._values(self.strings[s.id], snap)
            if values:
                out.append((self.topic("string", s.id), {**head, "string": s.id, "name": s.name, "values": values},
                            True))
            if self.layout == "cell":
                out.extend(self._cell_messages(s.id, s.cells, snap, head))
            else:
                doc = self._cells_document(s.id, s.cells, snap, head)
                if doc is not None:
                    out.append((self.topic("string", s.id, "cells"), doc, True))
        return out

    def _cells_document(self, sid: int, count: int, snap, head) -> dict[str, Any] | None:
        # one pass per column with comprehensions: this runs for every battery every cycle
        get, good = snap.get, Quality.GOOD
        values: dict[str, list] = {}
        units: dict[str, str] = {}
        quality: dict[str, dict[str, str]] = {}
        stamps: list[float] = []
        for name, column in self.cells[sid].items():
            probe = column[0] if column[0] is not None else next((v for v in column if v is not None), None)
            if probe is None:
                continue
            refs = [v.ref if v is not None else None for v in column]
            readings = [get(ref) if ref is not None else None for ref in refs]
            present = [r for r in readings if r is not None]
            if not present:
                continue
            places, finite = probe.places, math.isfinite
            if places is None:
                values[name] = [r.value if r is not None and r.quality is good and r.value is not None
                                and finite(r.value) else None for r in readings]
            else:
                values[name] = [round(r.value, places) if r is not None and r.quality is good and r.value is not None
                                and finite(r.value) else None for r in readings]
            bad = {str(c): r.quality.value for c, r in enumerate(readings, start=1)
                   if r is not None and r.quality is not good}
            if bad:
                quality[name] = bad
            if probe.unit:
                units[name] = probe.unit
            stamps.append(min(r.ts for r in present))
            stamps.append(max(r.ts for r in present))
        if not values:
            return None
        doc = {**head, "string": sid, "batteries": count, "measured": [_ts(min(stamps)), _ts(max(stamps))],
               "units": units, "values": values}
        if quality:
            doc["quality"] = quality
        return doc

    def _cell_messages(self, sid: int, count: int, snap, head):
        for c in range(1, count + 1):
            values = {}
            for name, column in self.cells[sid].items():
                v = column[c - 1]
                if v is None:  # no such point for this battery
                    continue
                r = snap.get(v.ref)
                if r is not None:
                    values[name] = v.entry(r)
            if values:
                yield self.topic("string", sid, "cell", c), {**head, "string": sid, "cell": c, "values": values}, True

    def alarm(self, event: AlarmEvent) -> tuple[str, dict[str, Any], bool]:
        raised = bool(getattr(event, "active", False))  # the payload keeps its keys: "raised", "text", "metric"
        ts = getattr(event, "ts", None)
        doc = {"site": self.site, "ts": _ts(float(ts) if isinstance(ts, (int, float)) else time.time()),
               "alarm_id": getattr(event, "alarm_id", None), "object": _plain(getattr(event, "object", None)),
               "metric": _plain(getattr(event, "point", None)), "value": _plain(getattr(event, "value", None)),
               "threshold": _plain(getattr(event, "threshold", None)),
               "severity": _plain(getattr(event, "severity", None)), "text": _plain(getattr(event, "message", None)),
               "raised": raised, "state": "raised" if raised else "cleared"}
        return self.topic("alarms"), doc, False


def _dumps(obj: Any) -> str:
    """JSON as the queue encodes a document (compact)."""
    return json.dumps(obj, separators=(",", ":"), default=str)


class _Column:
    """One value of every battery of a string (a column of the cells document), kept as it is encoded."""

    __slots__ = ("name", "key", "refs", "members", "index", "unit", "places", "values", "quality", "low", "high",
                 "present", "text", "bad", "first", "last", "changed", "floats", "raw", "texts", "churn",
                 "last_raw")

    def __init__(self, name: str, key: Any, column: list[_Value | None], probe: _Value) -> None:
        count = len(column)
        self.name = name
        self.key = key  # the topic's
        self.refs = [v.ref if v is not None else None for v in column]
        self.members = frozenset(ref for ref in self.refs if ref is not None)
        self.index = {ref: i for i, ref in enumerate(self.refs) if ref is not None}
        self.unit = probe.unit  # unit and resolution: the same for every battery of the column
        self.places = probe.places
        self.values: list[float | None] = [None] * count
        self.quality: list[str | None] = [None] * count  # the quality of a reading that is not GOOD
        self.low = [math.inf] * count  # reading times (inf / -inf: no reading)
        self.high = [-math.inf] * count
        self.present = 0
        self.text = "[]"
        self.bad: dict[str, str] = {}
        self.first, self.last = math.inf, -math.inf
        self.changed = False  # a value or a quality changed: encode the column again
        self.floats = [float] * count  # the types of a column of float values
        # the bits of the values last read when every battery had a GOOD finite float (b"": otherwise), and then
        # each battery's value as JSON (empty: not made yet)
        self.raw = b""
        self.texts: list[str] = []
        self.churn = False  # most of the values changed at the last read of this kind
        self.last_raw: list[float] = []  # the values whose bits are ``raw``

    def read_all(self, get_many: Callable[[Iterable[PointRef | None]], list[Reading | None]]) -> None:
        """Every battery's reading (most of the column was written): as ``PayloadBuilder`` reads a column."""
        readings = get_many(self.refs)
        present = len(list(filter(None, readings)))  # (count(None) would compare every reading with None)
        if present == len(readings) and self._read_good(readings):
            return
        self.raw = b""
        places, finite, good, inf = self.places, math.isfinite, Quality.GOOD, math.inf
        if places is None:
            values = [r.value if r is not None and r.quality is good and r.value is not None
                      and finite(r.value) else None for r in readings]
        else:
            values = [round(r.value, places) if r is not None and r.quality is good and r.value is not None
                      and finite(r.value) else None for r in readings]
        quality = [r.quality.value if r is not None and r.quality is not good else None for r in readings]
        # most polls read the values read before: then the text stays (unless a zero or a type could be written
        # otherwise: 0.0 and -0.0, 13 and 13.0 are equal)
        if values != self.values or quality != self.quality or 0 in values \
                or list(map(type, values)) != list(map(type, self.values)):
            self.values, self.quality = values, quality
            self.changed = True
        self.low = [r.ts if r is not None else inf for r in readings]
        self.present = present
        # every battery read (the usual case): the earliest and the latest time are one list
        self.high = self.low if self.present == len(readings) else [r.ts if r is not None else -inf
                                                                    for r in readings]

    def _read_good(self, readings: list) -> bool:
        """``read_all`` for a reading of every battery, all GOOD with a finite float (the usual case), in C: the
        values rounded again only when their bits changed (the same bits: the same text, 0.0 and -0.0 told
        apart), only those that changed when most did not.  False (nothing done) for any other column."""
        if not readings:
            return False
        read, qualities, stamps = zip(*readings, strict=True)  # (one pass: values, qualities, times)
        if qualities.count(Quality.GOOD) != len(readings):
            return False
        raw = list(read)
        if list(map(type, raw)) != self.floats or not all(map(math.isfinite, raw)):
            return False
        bits = array("d", raw).tobytes()
        old = self.raw
        if bits != old:
            places = self.places
            # the batteries whose value changed (compared in C; every zero too: 0.0 and -0.0 are equal), when the
            # last read was of this kind too: a few of them are rounded and written again one by one, each
            # battery's text kept (not looked for every other time in a column that changed mostly last time: a
            # computed one, such as the deviations from the average, is new every tick)
            moved = None
            if old and not self.churn:
                moved = list(compress(count(), map(ne, raw, self.last_raw)))
                if 0.0 in raw:
                    moved = sorted({*moved, *compress(count(), map(eq, raw, repeat(0.0)))})
            self.churn = moved is not None and 4 * len(moved) > 3 * len(raw)
            if moved is not None and not self.churn:
                values = self.values
                if not self.texts:
                    self.texts = list(map(float.__repr__, values))  # (floats: checked)
                texts = self.texts
                for i in moved:
                    value = raw[i] if places is None else round(raw[i], places)
                    text = float.__repr__(value)  # (as json writes a float)
                    if text != texts[i]:
                        values[i], texts[i] = value, text
                        self.changed = True
            else:
                values = raw if places is None else list(map(round, raw, repeat(places)))
                # (0.0 and -0.0: equal, written apart)
                if not old or values != self.values or 0 in values:
                    self.values = values
                    self.quality = [None] * len(raw)
                    self.changed = True
                    self.texts = []  # (made again when a few batteries change)
            self.raw = bits
            self.last_raw = raw
        self.low = self.high = list(stamps)
        self.present = len(readings)
        return True

    def read(self, refs: AbstractSet[PointRef], get: Callable[[PointRef], Reading | None]) -> None:
        """The readings of a few batteries.  Most polls read the value read before: then only the column's time
        range moves, its text stays."""
        good, finite, inf, places = Quality.GOOD, math.isfinite, math.inf, self.places
        values, qualities = self.values, self.quality
        for ref in refs:
            r = get(ref)
            if r is None:
                continue
            i = self.index[ref]
            self.raw = b""  # (the bits of a whole column's values: no longer known)
            if self.low[i] == inf:
                self.present += 1
                self.changed = True
            v, q = r.value, r.quality
            if q is good:
                new = (v if places is None else round(v, places)) if v is not None and finite(v) else None
                quality = None
            else:
                new, quality = None, q.value
            old = values[i]
            # 13 and 13.0, 0.0 and -0.0 are equal but not written alike
            if new != old or type(new) is not type(old) or (not new and str(new) != str(old)) \
                    or quality != qualities[i]:
                values[i], qualities[i] = new, quality
                self.changed = True
            self.low[i] = self.high[i] = r.ts

    def refresh(self) -> None:
        if self.changed:
            if self.raw and self.texts:  # each battery's text, kept while a few change at a time
                self.text = f"[{','.join(self.texts)}]"
            else:
                self.text = _dumps(self.values)
            self.bad = {str(c): q for c, q in enumerate(self.quality, start=1) if q is not None}
            self.changed = False
        self.first, self.last = min(self.low), max(self.high)


class FeedPayloads:
    """The messages of ``PayloadBuilder.messages``, byte for byte, kept up to date from the store's change feed:
    each topic's document (without its head) is kept encoded and encoded again only when one of its points was
    written; of a string's cells document only the columns written to are read again (a column mostly written
    to at once, as the plain path does; a few batteries of it one by one) and encoded again when a value or a
    quality changed.  Which topics and columns were written is found with set operations on the feed's points."""

    def __init__(self, builder: PayloadBuilder, store: PointStore) -> None:
        self.builder = builder
        self.store = store
        self.generation = -1
        self._order: list[tuple[Any, str]] = []  # (key, topic) in the order messages are sent
        self._compose: dict[Any, Callable[[], str | None]] = {}
        self._tails: dict[Any, str | None] = {}
        self._members: dict[Any, frozenset[PointRef]] = {}  # topic key -> its points (not the cells documents')
        self._columns: list[_Column] = []
        self._cell_points = 0
        b = builder
        for scope in ("gateway", "bank"):
            self._topic(scope, b.topic(scope), b.scoped[scope], {})
        for s in b.topology.strings:
            self._topic(("string", s.id), b.topic("string", s.id), b.strings[s.id], {"string": s.id, "name": s.name})
            if b.layout == "cell":
                for c in range(1, s.cells + 1):
                    groups = {name: [v] for name, column in b.cells[s.id].items() if (v := column[c - 1]) is not None}
                    self._topic(("cell", s.id, c), b.topic("string", s.id, "cell", c), groups,
                                {"string": s.id, "cell": c}, cell=True)
            else:
                self._cells_topic(s.id, s.cells)

    def _topic(self, key: Any, topic: str, groups: dict[str, list[_Value]], fields: dict[str, Any],
               cell: bool = False) -> None:
        """A topic of values (``fields`` come before them); ``cell``: one battery's, every value an entry."""
        store = self.store

        def compose() -> str | None:
            if cell:  # one battery: each value as an entry of its own, channels or not
                values = {}
                for name, (v,) in groups.items():
                    r = store.get(v.ref)
                    if r is not None:
                        values[name] = v.entry(r)
            else:
                values = PayloadBuilder._values(groups, store)
            return _dumps({**fields, "values": values})[1:-1] if values else None

        self._order.append((key, topic))
        self._compose[key] = compose
        self._members[key] = frozenset(v.ref for vals in groups.values() for v in vals)

    def _cells_topic(self, sid: int, count: int) -> None:
        key = ("cells", sid)
        columns: list[_Column] = []
        for name, column in self.builder.cells[sid].items():
            probe = next((v for v in column if v is not None), None)
            if probe is not None:
                columns.append(_Column(name, key, column, probe))
        self._columns.extend(columns)
        self._cell_points += sum(len(col.members) for col in columns)

        def compose() -> str | None:
            cols = [col for col in columns if col.present]
            if not cols:
                return None
            measured = [_ts(min(c.first for c in cols)), _ts(max(c.last for c in cols))]
            units = {c.name: c.unit for c in cols if c.unit}
            values = ",".join(f"{_dumps(c.name)}:{c.text}" for c in cols)
            text = (f'"string":{_dumps(sid)},"batteries":{_dumps(count)},"measured":{_dumps(measured)},'
                    f'"units":{_dumps(units)},"values":{{{values}}}')
            quality = {c.name: c.bad for c in cols if c.bad}
            return text + f',"quality":{_dumps(quality)}' if quality else text

        self._order.append((key, self.builder.topic("string", sid, "cells")))
        self._compose[key] = compose

    def messages(self, now: float) -> list[tuple[str, Encoded, bool]]:
        """``(topic, document, is_values)`` for every topic that has something to say, as ``messages`` gives
        them for the store as it is now."""
        store = self.store
        generation, changed = store.changes_since(self.generation)
        get = store.get
        dirty = set()
        for key, members in self._members.items():
            if changed is None or not changed.isdisjoint(members):
                dirty.add(key)
        # most of the bank written (the first cycle, or the feed no longer reaches back): every column read
        everything = changed is None or len(changed) > self._cell_points // 2
        for col in self._columns:
            written = col.members if everything else changed.intersection(col.members)  # type: ignore[union-attr]
            if not written:
                continue
            if 4 * len(written) > len(col.members):
                col.read_all(store.get_many)
            else:
                col.read(written, get)
            col.refresh()
            dirty.add(col.key)
        self.generation = generation
        tails = self._tails
        for key in dirty:
            tails[key] = self._compose[key]()
        head = _dumps({"site": self.builder.site, "ts": _ts(now)})[:-1] + ","
        return [(topic, Encoded(head + tail + "}"), True) for key, topic in self._order
                if (tail := tails.get(key)) is not None]


def _connection_settings(cfg: dict) -> dict:
    """What a new connection is needed for: everything but the discovery settings."""
    return {k: v for k, v in cfg.items() if k != "discovery"}


def _plain(v: Any) -> Any:
    """An event attribute as JSON: numbers and text as they are, enums by value, anything else as text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, enum.Enum):
        return _plain(v.value)
    return str(v)


class MqttService(Service):
    """The MQTT face: an uploader to the broker, replaced by a new one when its settings change."""

    name = "mqtt"
    # alarms: the names of the dry contacts (alarms.di) name their Home Assistant entities
    sections = ("mqtt", "site", "alarms")
    face = True

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        self.gateway = gateway
        self.uploader = MqttUploader(gateway, cfg)

    async def start(self) -> None:
        await self.uploader.start()

    async def stop(self) -> None:
        await self.uploader.stop()

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Broker, credentials, TLS, topics, layout, intervals: the uploader disconnects (its queue is on
        disk: nothing is lost) and a new one connects with the new settings.  A new queue file waits for a
        restart.  Home Assistant discovery (``mqtt.discovery``, the contact names of ``alarms.di``) changes on
        the running connection: the configs are announced again and those no longer announced cleared."""
        cfg = config.section("mqtt")
        result = ReloadResult()
        old = self.uploader
        if "site" not in changed and _connection_settings(cfg) == _connection_settings(old.cfg):
            note = await asyncio.to_thread(old.set_discovery, cfg)
            if note:
                result.notes.append(note)
            return result
        if cfg["queue"]["file"] != old.cfg["queue"]["file"]:
            result.restart.append("mqtt.queue.file")
            cfg = {**cfg, "queue": {**cfg["queue"], "file": old.cfg["queue"]["file"]}}
        new = MqttUploader(self.gateway, cfg)
        await old.stop(reason="reconfigured")
        await new.start()
        self.uploader = new
        result.notes.append(f"mqtt: reconnecting to {new.endpoints()[0]}")
        return result

    def status(self) -> dict:
        return self.uploader.status()

    def endpoints(self) -> list[str]:
        return self.uploader.endpoints()

    @hookimpl
    def bmsgw_alarm_event(self, event: AlarmEvent) -> None:
        self.uploader.alarm(event)


class MqttUploader:
    """Connects to the broker (paho's network thread), queues a message set every interval (asyncio task),
    and sends the queue in order from a sender thread, at most ``max_inflight`` unacknowledged at a time."""

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        self.gateway = gateway
        self.cfg = cfg
        src = str(gateway.config.path)
        tls = cfg["tls"]
        self.tls = bool(tls["enabled"])
        self.host = cfg["host"]
        self.port = cfg["port"] or (8883 if self.tls else 1883)
        self.builder = PayloadBuilder(gateway, cfg["topic_prefix"], cfg["layout"])
        self.payloads = FeedPayloads(self.builder, gateway.store)
        self.status_topic = self.builder.topic("status")
        interval = float(cfg["interval_s"]) or float(gateway.config.data["gateway"]["poll"]["fast_s"])
        self.interval = max(interval, 0.1)
        self.window = int(cfg["max_inflight"])
        for key in ("ca_file", "cert_file", "key_file"):
            if self.tls and tls[key] and not gateway.config.resolve(tls[key]).is_file():
                raise ConfigError(src, f"mqtt.tls.{key}", f"file {gateway.config.resolve(tls[key])} does not exist")
        if self.tls and tls["key_file"] and not tls["cert_file"]:
            raise ConfigError(src, "mqtt.tls.cert_file", "a client key needs its certificate")
        self.password = cfg["password"] or None
        if cfg["password_file"]:
            try:
                self.password = read_secret(gateway.config.resolve(cfg["password_file"]), "mqtt.password_file")
            except ConfigError as exc:
                raise ConfigError(src, exc.path, exc.message) from None
        if self.password and not cfg["username"]:
            raise ConfigError(src, "mqtt.username", "a password needs a user name")
        qcfg = cfg["queue"]
        self.queue = MessageQueue(gateway.config.state_dir / qcfg["file"], max_messages=qcfg["max_messages"],
                                  max_bytes=int(qcfg["max_mb"] * (1 << 20)))
        self.record = DiscoveryRecord(gateway.config.state_dir / RECORD_FILE)
        self.plan = self._discovery_plan(cfg)
        self.client = self._make_client()
        self.connected = False
        self.last_error = ""
        self._cv = threading.Condition()
        self._mids: dict[int, int] = {}  # paho message id -> queue seq
        self._early: set[int] = set()  # acknowledged before we saw the message id
        self._own: set[int] = set()  # status messages (not from the queue)
        self._resync = False
        # Home Assistant discovery: when the next announcement is due (monotonic), whether one completed since
        # this uploader started, the message ids of the configs the broker has not acknowledged yet, and the
        # announcement they belong to (recorded on disk once all are acknowledged)
        self._announce_at: float | None = None
        self._announced_at = -math.inf  # when the last announcement started (monotonic)
        self.birth_min_interval_s = BIRTH_MIN_INTERVAL_S
        self._announced = False
        self._discovery_mids: set[int] = set()
        self._round: tuple[set[str], int, int] | None = None
        self._round_done: tuple[set[str], int, int] | None = None
        self.discovery_stats = {"announcements": 0, "configs": 0, "cleared": 0}
        self._stopping = False
        self._sender: threading.Thread | None = None
        self._producer: asyncio.Task | None = None

    def _discovery_plan(self, cfg: dict) -> DiscoveryPlan | None:
        dcfg = cfg["discovery"]
        return DiscoveryPlan(self.gateway, dcfg, self.builder, self.status_topic) if dcfg["enabled"] else None

    # -- the client ------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        protocol = mqtt.MQTTv5 if cfg["protocol"] == "5" else mqtt.MQTTv311
        client_id = cfg["client_id"] or f"bmsgw-{self.builder.site}"
        kwargs: dict[str, Any] = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": client_id,
                                  "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = True
        client = mqtt.Client(**kwargs)
        # paho reports every failed reconnection attempt as an error; the service logs the state changes
        # itself, so paho's own lines go to DEBUG
        paho_log = logging.getLogger(__name__ + ".paho")
        client.on_log = lambda _c, _u, _level, buf: paho_log.debug("%s", buf)
        if cfg["username"]:
            client.username_pw_set(cfg["username"], self.password)
        if self.tls:
            tls, res = cfg["tls"], self.gateway.config.resolve
            client.tls_set(ca_certs=str(res(tls["ca_file"])) if tls["ca_file"] else None,
                           certfile=str(res(tls["cert_file"])) if tls["cert_file"] else None,
                           keyfile=str(res(tls["key_file"])) if tls["key_file"] else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            if tls["insecure"]:
                client.tls_insecure_set(True)
        client.will_set(self.status_topic, self._status_payload("offline", reason="connection lost"), qos=1,
                        retain=True)
        client.max_inflight_messages_set(self.window + 4)  # room for the status messages
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=max(1, round(cfg["reconnect_min_s"])),
                                   max_delay=max(1, round(cfg["reconnect_max_s"])))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _status_payload(self, state: str, **extra: Any) -> bytes:
        site = self.gateway.config.section("site")
        doc = {"state": state, "site": self.builder.site, "site_name": site["name"], "version": __version__,
               "ts": _ts(time.time()), **extra}
        if state == "offline" and extra.get("reason") == "connection lost":
            doc.pop("ts")  # the will is registered long before it is sent
        return json.dumps(doc, separators=(",", ":")).encode()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            msg = f"broker {self.host}:{self.port} refused the connection: {reason_code}"
            if msg != self.last_error:
                log.error("mqtt: %s", msg)
            self.last_error = msg
            return
        log.info("mqtt: connected to %s:%d", self.host, self.port)
        self.last_error = ""
        info = client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        plan = self.plan
        if plan is not None:
            client.subscribe(plan.birth_topic, qos=1)
        with self._cv:
            self._own.add(info.mid)
            self.connected = True
            self.queue.set_link(True)
            self._resync = self.queue.inflight > 0  # paho re-sends those first; new ones wait for their acks
            # Discovery (or clearing what an earlier run announced) once per uploader: the configs are retained,
            # and Home Assistant's birth message asks for them again after it or the broker restarted.  An
            # announcement cut by a disconnection is finished by paho, which re-sends what was not acknowledged.
            if not self._announced and self._round is None:
                self._announce_at = time.monotonic()
            self._cv.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        msg = f"cannot reach the broker at {self.host}:{self.port}"
        if msg != self.last_error:
            log.warning("mqtt: %s; queueing on disk and retrying", msg)
        self.last_error = msg

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cv:
            was = self.connected
            self.connected = False
            self._cv.notify_all()
        if was and not self._stopping:
            self.last_error = f"connection lost: {reason_code}"
            log.warning("mqtt: lost the connection to %s:%d (%s); queueing on disk", self.host, self.port,
                        reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        """Home Assistant's birth message (``<prefix>/status`` ``online``, published each time it connects):
        announce again after a short random delay.  A retained copy comes with every new subscription: the
        announcement at connection time covers it."""
        plan = self.plan
        if plan is None or msg.topic != plan.birth_topic or msg.retain or msg.payload.strip() != b"online":
            return
        with self._cv:
            if self._announce_at is not None:  # an announcement is due already: it answers this birth too
                return
            now = time.monotonic()
            self._announce_at = max(now + random.uniform(0, BIRTH_JITTER_S),
                                    self._announced_at + self.birth_min_interval_s)
            delay = self._announce_at - now
            self._cv.notify_all()
        log.info("mqtt: Home Assistant is online (%s): announcing the discovery configs again in %.1f s", msg.topic,
                 delay)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # called by paho's network thread with its own locks held: only memory work here
        with self._cv:
            if mid in self._own:
                self._own.discard(mid)
                return
            if mid in self._discovery_mids:
                self._discovery_mids.discard(mid)
                if not self._discovery_mids and self._round is not None:
                    self._round_done, self._round = self._round, None
                    self._cv.notify_all()
                return
            seq = self._mids.pop(mid, None)
            if seq is None:
                self._early.add(mid)
                return
            self.queue.ack(seq)
            self._cv.notify_all()

    # -- the sender thread -----------------------------------------------------------------------------------
    def _announce_due(self) -> bool:
        return self.connected and self._announce_at is not None and time.monotonic() >= self._announce_at

    def _send_loop(self) -> None:
        q = self.queue
        while True:
            with self._cv:
                while True:
                    if self._stopping:
                        return
                    if self._resync and q.inflight == 0:
                        self._resync = False
                    if not self.connected and q.link_up:
                        break
                    if q.has_deletes or self._round_done is not None or self._announce_due():
                        break
                    if self.connected and not self._resync and q.inflight < self.window and q.pending:
                        break
                    wait = 1.0
                    if self.connected and self._announce_at is not None:
                        wait = min(wait, max(0.0, self._announce_at - time.monotonic()))
                    self._cv.wait(wait)
                connected, room = self.connected, self.window - q.inflight
                ready = connected and not self._resync
                announce = self._announce_due()
                if announce:
                    self._announce_at = None
                    self._announced_at = time.monotonic()
                done, self._round_done = self._round_done, None
            if done is not None:
                self._announced_all(*done)
            if announce:
                self._announce()
            if not connected and q.link_up:
                q.set_link(False)  # what waits in memory goes to disk
            q.flush()
            if not ready or room <= 0:
                continue
            for m in q.take(room):
                info = self.client.publish(m.topic, m.payload, qos=1, retain=m.retain)
                with self._cv:
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                        q.ack(m.seq)
                    else:
                        self._mids[info.mid] = m.seq

    # -- Home Assistant discovery (in the sender thread) ------------------------------------------------------
    def _announce(self) -> None:
        """Publish every config (retained) and clear, with an empty retained payload, every config topic the
        record holds that is no longer announced (a string removed, another prefix, discovery switched off).
        The record first grows to hold both; it shrinks to the new set once the broker acknowledged all."""
        plan = self.plan
        try:
            configs = plan.configs() if plan is not None else {}
        except Exception:
            log.exception("mqtt: composing the Home Assistant discovery configs failed")
            return
        previous = self.record.load()
        stale = sorted(previous - configs.keys())
        if not configs and not stale:
            with self._cv:
                self._announced = True
            return
        try:
            if not previous >= configs.keys():
                self.record.save(previous | configs.keys())
        except OSError as exc:
            log.warning("mqtt: cannot record the discovery topics in %s: %s", self.record.path, exc)
        mids = set()
        for topic, payload in [*configs.items(), *((t, b"") for t in stale)]:
            mids.add(self.client.publish(topic, payload, qos=1, retain=True).mid)
        with self._cv:
            early = mids & self._early  # acknowledged before we knew the message ids
            self._early -= early
            self._discovery_mids |= mids - early
            self._round = (set(configs), len(configs), len(stale))
            if not self._discovery_mids:
                self._round_done, self._round = self._round, None
                self._cv.notify_all()

    def _announced_all(self, topics: set[str], configs: int, cleared: int) -> None:
        """The broker acknowledged an announcement: the record keeps only what is announced now."""
        try:
            self.record.save(topics)
        except OSError as exc:
            log.warning("mqtt: cannot record the discovery topics in %s: %s", self.record.path, exc)
        with self._cv:
            self._announced = True
        stats = self.discovery_stats
        stats["announcements"] += 1
        stats["configs"], stats["cleared"] = configs, cleared
        plan = self.plan
        where = f"under {plan.prefix}/" if plan is not None else "(discovery is off)"
        log.info("mqtt: Home Assistant discovery: %d configs announced %s, %d cleared", configs, where, cleared)

    def set_discovery(self, cfg: dict) -> str | None:
        """A reload that changed only ``mqtt.discovery`` (or the dry contacts' names): announce the new configs
        on the running connection, clear the old ones (another prefix, discovery off).  Returns a note for the
        reload's answer, None when Home Assistant sees no difference."""
        old, new = self.plan, self._discovery_plan(cfg)
        self.cfg = cfg
        if (old is None and new is None) or (old is not None and new is not None
                                             and old.configs() == new.configs()):
            self.plan = new
            return None
        self.plan = new
        if self.connected:
            if old is not None and (new is None or new.birth_topic != old.birth_topic):
                self.client.unsubscribe(old.birth_topic)
            if new is not None and (old is None or new.birth_topic != old.birth_topic):
                self.client.subscribe(new.birth_topic, qos=1)
        with self._cv:
            self._announced = False
            self._announce_at = time.monotonic()
            self._cv.notify_all()
        if new is None:
            return "mqtt: Home Assistant discovery is off; its configs are cleared from the broker"
        return f"mqtt: Home Assistant discovery configs announced again under {new.prefix}/"

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # -- the producer ----------------------------------------------------------------------------------------
    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval
        retain = bool(self.cfg["retain_values"])
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.interval
            if next_at < loop.time():  # fell behind (a slow disk): skip, do not burst
                next_at = loop.time() + self.interval
            try:
                msgs = self.payloads.messages(time.time())
                items = [(topic, doc, retain and is_values) for topic, doc, is_values in msgs]
                if items:
                    await asyncio.to_thread(self.queue.put_many, items)
                    self._wake()
                self._publish_figures()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mqtt: composing the messages failed")

    def _publish_figures(self) -> None:
        q = self.queue
        ts = time.time()
        self.gateway.store.put_many([
            (PointRef("gateway.mqtt_connected"), Reading(1.0 if self.connected else 0.0, Quality.GOOD, ts)),
            (PointRef("gateway.mqtt_queued"), Reading(float(q.pending + q.inflight), Quality.GOOD, ts)),
            (PointRef("gateway.mqtt_sent"), Reading(float(q.sent), Quality.GOOD, ts)),
            (PointRef("gateway.mqtt_dropped"), Reading(float(q.dropped), Quality.GOOD, ts)),
        ])

    def alarm(self, event: AlarmEvent) -> None:
        """Queue an alarm event (written to disk at once: an alarm must survive a power cut)."""
        try:
            self.queue.put_many([self.builder.alarm(event)], durable=True)
        except Exception:
            log.exception("mqtt: queueing alarm %s failed", getattr(event, "alarm_id", "?"))
            return
        self._wake()

    # -- Service ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.queue.open)
        self._stopping = False
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        self.client.connect_async(self.host, self.port, keepalive=self.cfg["keepalive_s"])
        self.client.loop_start()
        self._publish_figures()
        self._producer = asyncio.create_task(self._produce(), name="mqtt-producer")
        log.info("mqtt: publishing to %s every %gs (topics %s/...)", self.endpoints()[0], self.interval,
                 self.builder.base)

    async def stop(self, reason: str = "stopped") -> None:
        if self._producer is not None:
            self._producer.cancel()
            await asyncio.gather(self._producer, return_exceptions=True)
            self._producer = None
        await asyncio.to_thread(self._shutdown, reason)

    def _shutdown(self, reason: str = "stopped", grace_s: float = 2.0) -> None:
        deadline = time.monotonic() + grace_s
        with self._cv:  # a short grace for what is queued and in flight
            while self.connected and (self.queue.pending or self.queue.inflight) and time.monotonic() < deadline:
                self._cv.wait(0.1)
            self._stopping = True
            self._cv.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=5)
        if self.connected:
            info = self.client.publish(self.status_topic, self._status_payload("offline", reason=reason), qos=1,
                                       retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic()))
        self.client.disconnect()
        self.client.loop_stop()
        self.queue.close()

    def endpoints(self) -> list[str]:
        return [f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"]

    def status(self) -> dict:
        out = {"broker": self.endpoints()[0], "connected": self.connected, "topics": self.builder.base + "/#",
               **self.queue.stats()}
        if self.last_error:
            out["last_error"] = self.last_error
        plan = self.plan
        if plan is not None:
            out["discovery"] = {"prefix": plan.prefix, "node_id": plan.node, "announced": self._announced,
                                **self.discovery_stats}
        return out
