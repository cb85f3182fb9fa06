"""The bank as JSON-able data, read from the point store through the point map (no hard-coded point lists)."""
from __future__ import annotations

import math
from collections import defaultdict

from gateway.pointmap import MappedPoint
from gateway.points import PointRef, Reading


def decimals(scale: float) -> int:
    return max(0, min(9, -math.floor(math.log10(scale)))) if 0 < scale < 1 else 0


def point_value(entry: MappedPoint, reading: Reading) -> dict:
    spec = entry.spec
    value = reading.value
    if value is not None:
        if not math.isfinite(value):
            value = None
        elif spec.scale < 1:
            value = round(value, decimals(spec.scale))
        elif value == int(value):
            value = int(value)
    out = {"value": value, "unit": spec.unit, "quality": reading.quality.value, "ts": round(reading.ts, 3)}
    if spec.states and value is not None:
        out["state"] = dict(spec.states).get(int(value), str(int(value)))
    return out


class BankView:
    """Indexes of the point map by string and cell, built once per gateway."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.topology = gateway.topology
        self.store = gateway.store
        self.by_string: dict[int, list[MappedPoint]] = defaultdict(list)
        self.by_cell: dict[tuple[int, int], list[MappedPoint]] = defaultdict(list)
        self.bank: list[MappedPoint] = []
        self.families: dict[str, object] = {}
        for e in gateway.pointmap:
            self.families[e.spec.id] = e.spec
            if e.spec.scope == "cell":
                self.by_cell[(e.ref.string, e.ref.cell)].append(e)
            elif e.spec.scope == "string":
                self.by_string[e.ref.string].append(e)
            elif e.spec.scope == "bank":
                self.bank.append(e)
        # what may be written (Gateway.write decides whether it is carried out): commands and writable points,
        # by their JSON path, which is also their REST path under /api/v1/points/
        self.writable: dict[str, MappedPoint] = {
            e.json_path.lstrip("/"): e for e in (*gateway.pointmap.commands,
                                                 *(e for e in gateway.pointmap if e.spec.writable))}

    def string_ids(self) -> list[int]:
        return [s.id for s in self.topology.strings]

    def has_string(self, sid: int) -> bool:
        return any(s.id == sid for s in self.topology.strings)

    def has_cell(self, sid: int, cell: int) -> bool:
        return any(s.id == sid and 1 <= cell <= s.cells for s in self.topology.strings)

    def _points(self, entries: list[MappedPoint]) -> dict:
        out = {}
        for e in entries:
            r = self.store.get(e.ref)
            if r is not None:
                out[e.spec.name] = point_value(e, r)
        return out

    def string(self, sid: int) -> dict:
        s = self.topology.string(sid)
        b = s.battery
        return {"id": s.id, "name": s.name, "cells": s.cells,
                "battery": {"model": b.model, "nominal_voltage": b.nominal_voltage, "capacity_ah": b.capacity_ah,
                            "chemistry": b.chemistry},
                "points": self._points(self.by_string.get(sid, []))}

    def strings(self) -> list[dict]:
        return [self.string(s.id) for s in self.topology.strings]

    def cell(self, sid: int, cell: int) -> dict:
        return {"string": sid, "cell": cell, "points": self._points(self.by_cell.get((sid, cell), []))}

    def cells(self, sid: int) -> list[dict]:
        return [self.cell(sid, c) for c in range(1, self.topology.string(sid).cells + 1)]

    def io(self) -> list[dict]:
        out = []
        for e in self.bank:
            r = self.store.get(e.ref)
            if r is None:
                continue
            out.append({"point": e.spec.id, "channel": e.ref.channel, "description": e.spec.description,
                        **point_value(e, r)})
        return out

    def commands(self, string: int | None = None) -> list[dict]:
        """The writable points a module here carries out (of one string, or the gateway's and the bank's when
        ``string`` is 0), with what they take and the least role that may write them."""
        owners = self.gateway.commands()
        out = []
        for path, e in self.writable.items():
            spec, cmd = e.spec, owners.get(e.spec.id)
            if cmd is None or (string is not None and (e.ref.string or 0) != string):
                continue
            item = {"path": path, "point": spec.id, **e.ref.keys(), "description": spec.description,
                    "role": cmd.role, "modbus_register": e.address}
            if spec.states:
                item["values"] = {str(v): label for v, label in spec.states}
            elif spec.valid_range:
                item["range"] = list(spec.valid_range)
            out.append(item)
        return out

    def resolve(self, point: str, string: int | None, cell: int | None, channel: int | None) -> MappedPoint | None:
        """The mapped point for API parameters; ``point`` may be a family id or, with string/cell, its name."""
        candidates = [point]
        if cell is not None:
            candidates.append(f"cell.{point}")
        elif string is not None:
            candidates.append(f"string.{point}")
        for pid in candidates:
            entry = self.gateway.pointmap.by_ref.get(PointRef(pid, string, cell, channel))
            if entry is not None:
                return entry
        return None

    def series_families(self, scope: str) -> list[dict]:
        """Families of a scope a trend can show (gauges), for the trend page's picker."""
        seen = {}
        for e in self.gateway.pointmap:
            if e.spec.scope == scope and e.spec.kind == "gauge" and e.spec.id not in seen:
                seen[e.spec.id] = {"id": e.spec.id, "name": e.spec.name, "unit": e.spec.unit,
                                   "description": e.spec.description}
        return list(seen.values())
