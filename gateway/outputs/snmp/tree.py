"""The agent's OID index: every instance it serves, sorted, with the function that gives its value.

Both answer paths read it: pysnmp (through ``controller.IndexController``) and the SNMPv2c fast path
(``fastpath.FastPath``).  A value is ``(tag, python value)`` with the BER tags of ``ber``; a function
returning None means the instance is absent right now (skipped by GETNEXT, noSuchInstance for GET).

Instances whose value depends on one point of the store cache their encoded varbind until the store's change
feed says that point was written, so a walk encodes each value once per poll cycle, not once per request.
"""
from __future__ import annotations

import contextlib
import enum
import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from itertools import pairwise
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from . import ber

if TYPE_CHECKING:
    from ...points import PointStore

Value = tuple[int, object]
ValueFn = Callable[[], Value | None]



class _Unset(enum.Enum):
    """An entry's varbind not encoded yet (None is taken: the instance is absent)."""

    UNSET = enum.auto()


_UNSET = _Unset.UNSET
_oid_of = attrgetter("oid")


class Entry:
    """One instance: its OID is its object type's (``obj``) and its index, both tuples shared with the other
    instances of the section (a column's, a row's), so an instance holds no OID tuple of its own (a full OID
    tuple took about 150 bytes; a bank has tens of thousands of instances)."""

    __slots__ = ("obj", "index", "_oid_tlv", "fn", "enc", "volatile")

    def __init__(self, obj: tuple[int, ...], index: tuple[int, ...], fn: ValueFn, volatile: bool) -> None:
        self.obj = obj
        self.index = index
        self._oid_tlv: bytes | None = None
        self.fn = fn
        self.enc: bytes | None | _Unset = _UNSET
        self.volatile = volatile

    @property
    def oid(self) -> tuple[int, ...]:
        return self.obj + self.index

    @property
    def oid_tlv(self) -> bytes:
        if self._oid_tlv is None:
            self._oid_tlv = ber.encode_oid(self.oid)
        return self._oid_tlv

    def encoded(self) -> bytes | None:
        """The whole varbind TLV, or None when the instance is absent."""
        enc = self.enc
        if enc is _UNSET or self.volatile:
            value = self.fn()
            if value is None:
                enc = None
            else:
                tag, v = value
                if type(v) is int:  # the common case, inlined: ber.encode_value(tag, v)
                    bits = v.bit_length()
                    if not bits & 7:
                        bits += 1
                    body = v.to_bytes((bits + 7) >> 3, "big", signed=True)
                    inner = (self._oid_tlv or self.oid_tlv) + bytes((tag, len(body))) + body
                else:
                    inner = (self._oid_tlv or self.oid_tlv) + ber.encode_value(tag, v)
                enc = bytes((0x30, len(inner))) + inner if len(inner) < 0x80 else ber.tlv(0x30, inner)
            if not self.volatile:
                self.enc = enc
        return enc


class StaticEntry(Entry):
    """An instance whose value never changes (a description, a table's fixed column): the value itself, not
    a closure around it -- tens of thousands of them on a full bank (the entPhysical rows, the names)."""

    __slots__ = ("value",)

    def __init__(self, obj: tuple[int, ...], index: tuple[int, ...], value: Value | None) -> None:
        self.obj = obj
        self.index = index
        self._oid_tlv = None
        self.enc = _UNSET
        self.volatile = False
        self.value = value

    def fn(self) -> Value | None:  # a method where Entry has a per-instance function
        return self.value


class PointEntry(Entry):
    """An instance whose value is one point of the store: ``codec(store_get(ref))``, the codec shared by every
    point of a family.  A closure per instance (the point, the store, the family's scale and range in cells)
    took about 600 bytes; a bank has tens of thousands of them."""

    __slots__ = ("get", "ref", "codec")

    def __init__(self, obj: tuple[int, ...], index: tuple[int, ...], get: Callable[[Any], Any], ref: object,
                 codec: Callable[[Any], Value | None]) -> None:
        self.obj = obj
        self.index = index
        self._oid_tlv = None
        self.enc = _UNSET
        self.volatile = False
        self.get = get
        self.ref = ref
        self.codec = codec

    def fn(self) -> Value | None:  # a method where Entry has a per-instance function
        return self.codec(self.get(self.ref))


class Section:
    """Instances collected by a builder before they go into the index."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.objects: dict[tuple[int, ...], bool] = {}  # the object types (scalars, columns) served
        self.deps: list[tuple[object, Entry]] = []
        self._shared: dict[tuple[int, ...], tuple[int, ...]] = {}  # one tuple for each object type and index
        self._values: dict[tuple[type, Value], Value] = {}

    def _share(self, part: tuple[int, ...]) -> tuple[int, ...]:
        return self._shared.setdefault(part, part)

    def add(self, obj: tuple[int, ...], index: tuple[int, ...], fn: ValueFn, *, volatile: bool = False,
            dep: object | None = None) -> None:
        """``obj`` is the object type's OID (scalar or column), ``index`` the instance part."""
        entry = Entry(self._share(obj), self._share(index), fn, volatile)  # its OID is encoded when first served
        self.entries.append(entry)
        self.objects[obj] = True
        if dep is not None:
            self.deps.append((dep, entry))

    def point(self, obj: tuple[int, ...], index: tuple[int, ...], get: Callable[[Any], Any], ref: object,
              codec: Callable[[Any], Value | None]) -> None:
        """An instance showing the point ``ref`` of the store whose ``get`` is given, encoded by ``codec`` (its
        encoding is cached until the store's change feed says ``ref`` was written)."""
        entry = PointEntry(self._share(obj), self._share(index), get, ref, codec)
        self.entries.append(entry)
        self.objects[obj] = True
        self.deps.append((ref, entry))

    def static(self, obj: tuple[int, ...], index: tuple[int, ...], value: Value | None) -> None:
        if value is not None:  # one tuple for each value: most fixed columns repeat a few values on every row
            with contextlib.suppress(TypeError):  # (an unhashable value keeps its own)
                value = self._values.setdefault((type(value[1]), value), value)  # (1, 1.0 and True apart)
        self.entries.append(StaticEntry(self._share(obj), self._share(index), value))
        self.objects[obj] = True

    def declare(self, obj: tuple[int, ...]) -> None:
        """An object type with no instance yet (rows come and go)."""
        self.objects[obj] = True


class OidIndex:
    """Sorted instances from several sections; dynamic subtrees (the alarm tables) can be replaced."""

    def __init__(self, sections: Iterable[Section], dynamic_prefixes: Iterable[tuple[int, ...]],
                 store: PointStore | None = None) -> None:
        """``dynamic_prefixes``: the subtrees whose rows come and go (the first is the default of
        ``set_dynamic``/``dynamic_changed``); ``store``: the point store whose
        change feed tells which cached encodings are out of date (the dependencies of the sections' entries
        are its PointRefs)."""
        self.store = store
        self._seen = -1  # the store generation the cached encodings are valid for
        self.objects: set[tuple[int, ...]] = set()
        deps: dict[object, list[Entry]] = {}
        static: list[Entry] = []
        for sec in sections:
            static.extend(sec.entries)
            self.objects.update(sec.objects)
            for dep, entry in sec.deps:
                deps.setdefault(dep, []).append(entry)
        # a tuple per point (most have one instance; a list took twice the memory)
        self.deps: dict[object, tuple[Entry, ...]] = {dep: tuple(entries) for dep, entries in deps.items()}
        static.sort(key=_oid_of)
        for a, b in pairwise(static):
            if a.oid == b.oid:
                raise ValueError(f"OID {'.'.join(map(str, a.oid))} is served twice")
        self._static = static
        self._prefixes = [tuple(p) for p in dynamic_prefixes]
        self._prefix = self._prefixes[0]  # the default subtree of set_dynamic / dynamic_changed
        for prefix in self._prefixes:
            if any(e.oid[:len(prefix)] == prefix for e in static):
                raise ValueError("static instances inside the dynamic subtree")
        self._dynamic: dict[tuple[int, ...], list[Entry]] = {p: [] for p in self._prefixes}
        self.entries: list[Entry] = []
        self._pending: dict[tuple[int, ...], Callable[[], Section]] = {}
        self._merge()

    def dynamic_changed(self, build: Callable[[], Section], prefix: tuple[int, ...] | None = None) -> None:
        """The rows of a dynamic subtree changed: ``build()`` gives them when next needed (a burst of changes,
        e.g. an alarm storm, costs one rebuild)."""
        self._pending[self._prefix if prefix is None else prefix] = build

    def refresh(self) -> None:
        """Called before answering a request: forget the encodings of the points written since the last
        request (the store's change feed; all of them when the feed does not reach back that far), and
        rebuild the dynamic rows when they changed."""
        store = self.store
        if store is not None and store.generation != self._seen:
            self._seen, changed = store.changes_since(self._seen)
            if changed is None:
                for entries in self.deps.values():
                    for entry in entries:
                        entry.enc = _UNSET
            else:
                deps = self.deps
                for ref in changed:
                    for entry in deps.get(ref, ()):
                        entry.enc = _UNSET
        if self._pending:
            pending, self._pending = self._pending, {}
            for prefix, build in pending.items():
                self._set(build(), prefix)
            self._merge()

    def set_dynamic(self, section: Section, prefix: tuple[int, ...] | None = None) -> None:
        self._set(section, self._prefix if prefix is None else prefix)
        self._merge()

    def _set(self, section: Section, prefix: tuple[int, ...]) -> None:
        if prefix not in self._dynamic:
            raise ValueError(f"{prefix} is not a dynamic subtree of this index")
        entries = sorted(section.entries, key=_oid_of)
        for e in entries:
            if e.oid[:len(prefix)] != prefix:
                raise ValueError(f"dynamic OID {e.oid} outside {prefix}")
        self.objects.update(section.objects)
        self._dynamic[prefix] = entries

    def _merge(self) -> None:
        self.entries = list(heapq.merge(self._static, *self._dynamic.values(), key=_oid_of))

    def invalidate(self, dep: object) -> None:
        for entry in self.deps.get(dep, ()):
            entry.enc = _UNSET

    def __len__(self) -> int:
        return len(self.entries)

    # -- lookups shared by both answer paths --------------------------------------------------------------
    def exact(self, oid: tuple[int, ...]) -> int | None:
        entries = self.entries
        i = bisect_left(entries, oid, key=_oid_of)
        if i < len(entries) and entries[i].oid == oid:
            return i
        return None

    def after(self, oid: tuple[int, ...]) -> int:
        """The position of the first instance after ``oid`` (len(self) at the end)."""
        return bisect_right(self.entries, oid, key=_oid_of)

    def missing_tag(self, oid: tuple[int, ...]) -> int:
        """noSuchInstance when an object type of this agent is a prefix of ``oid``, else noSuchObject."""
        objects = self.objects
        for k in range(len(oid), 0, -1):
            if oid[:k] in objects:
                return ber.NO_SUCH_INSTANCE
        return ber.NO_SUCH_OBJECT

    def value(self, i: int) -> Value | None:
        return self.entries[i].fn()

    def get(self, oid: tuple[int, ...]) -> Value:
        i = self.exact(oid)
        if i is not None:
            value = self.entries[i].fn()
            if value is not None:
                return value
            return ber.NO_SUCH_INSTANCE, None
        return self.missing_tag(oid), None
