"""The active-alarm table of BMSGW-MIB, kept from the alarm events the alarm engine announces."""
from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, replace
from typing import Any

from ...pointmap import PointMap
from ...points import PointRef
from . import ber
from .mib import ALARM_COLUMNS, NOTIFICATION_COLUMNS, SEVERITIES
from .sections import AgentData, alarm_prefix, text
from .tree import OidIndex, Section

_COL = {name: col for col, (name, *_rest) in enumerate(ALARM_COLUMNS, start=1)}
_SEVERITY_WORDS = {"info": "info", "notice": "info", "warning": "warning", "minor": "warning",
                   "major": "critical", "alarm": "critical", "critical": "critical"}


def field(event: Any, name: str, default: Any = None) -> Any:
    """An event attribute, whether the event is an object or a mapping."""
    if isinstance(event, dict):
        return event.get(name, default)
    return getattr(event, name, default)


def severity_code(value: Any) -> int:
    if isinstance(value, int) and value in SEVERITIES.values():
        return value
    word = _SEVERITY_WORDS.get(str(getattr(value, "value", value)).lower(), "warning")
    return SEVERITIES[word]


def format_number(value: Any, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    out = f"{value:.6g}" if isinstance(value, (int, float)) else str(value)
    return f"{out} {unit}".strip()[:64]


def date_and_time(wall: float) -> bytes:
    t = dt.datetime.fromtimestamp(wall, dt.UTC)
    return (t.year.to_bytes(2, "big") + bytes((t.month, t.day, t.hour, t.minute, t.second, t.microsecond // 100000))
            + b"+\x00\x00")


@dataclass(frozen=True)
class AlarmRow:
    index: int
    alarm_id: str
    object: str
    metric: str
    value: str
    threshold: str
    severity: int
    text: str
    raised_ticks: int
    raised_wall: float
    variable: tuple[int, ...]

    def values(self) -> dict[str, tuple[int, Any]]:
        return {
            "bmsgwAlarmId": (ber.OCTETS, text(self.alarm_id)),
            "bmsgwAlarmObject": (ber.OCTETS, text(self.object)),
            "bmsgwAlarmMetric": (ber.OCTETS, text(self.metric)),
            "bmsgwAlarmValue": (ber.OCTETS, text(self.value)),
            "bmsgwAlarmThreshold": (ber.OCTETS, text(self.threshold)),
            "bmsgwAlarmSeverity": (ber.INTEGER, self.severity),
            "bmsgwAlarmText": (ber.OCTETS, text(self.text)),
            "bmsgwAlarmRaisedTime": (ber.TIMETICKS, self.raised_ticks),
            "bmsgwAlarmRaisedDate": (ber.OCTETS, date_and_time(self.raised_wall)),
            "bmsgwAlarmVariable": (ber.OID, self.variable),
        }


class AlarmTable:
    """Rows by alarm id; each change rebuilds the index's dynamic (alarm) subtree."""

    def __init__(self, data: AgentData, index: OidIndex, pointmap: PointMap, catalog=None) -> None:
        self.data = data
        self.index = index
        self.pointmap = pointmap
        self.catalog = catalog
        self.prefix = alarm_prefix(data.base)
        self.rows: dict[str, AlarmRow] = {}
        self.last_changed = 0
        self._next = 1
        self.index.set_dynamic(self._section())

    def column_oid(self, name: str) -> tuple[int, ...]:
        return self.prefix + (2, 1, _COL[name])

    def _variable(self, event: Any, metric: str) -> tuple[int, ...]:
        ref = field(event, "ref")
        if not isinstance(ref, PointRef):
            return (0, 0)
        entry = self.pointmap.by_ref.get(ref)
        return self.data.base + (1,) + entry.oid if entry else (0, 0)

    def _unit(self, event: Any, metric: str) -> str:
        unit = field(event, "unit")
        if unit is not None:
            return str(unit)
        spec = self.catalog.get(metric) if self.catalog is not None else None
        return spec.unit if spec is not None and spec.unit not in ("", "unix_s") else ""

    def apply(self, event: Any) -> tuple[AlarmRow, bool]:
        """Record a raised or cleared alarm; returns the row (for the notification) and whether raised."""
        alarm_id = str(field(event, "id", field(event, "alarm_id", "")))
        raised = bool(field(event, "active", True))
        metric = str(field(event, "point", "") or "")  # the column keeps its MIB name: bmsgwAlarmMetric
        unit = self._unit(event, metric)
        wall = field(event, "ts") or time.time()
        old = self.rows.get(alarm_id)
        row = AlarmRow(
            index=old.index if old else self._next,
            alarm_id=alarm_id,
            object=str(field(event, "object", "") or ""),
            metric=metric,
            value=format_number(field(event, "value"), unit),
            threshold=format_number(field(event, "threshold"), unit),
            severity=severity_code(field(event, "severity", "warning")),
            text=str(field(event, "message", "") or ""),
            raised_ticks=old.raised_ticks if old and raised else self.data.stamp(wall),
            raised_wall=old.raised_wall if old and raised else float(wall),
            variable=self._variable(event, metric),
        )
        if raised:
            if old is None:
                self._next += 1
            self.rows[alarm_id] = row
        else:
            if old is not None:
                row = replace(row, raised_ticks=old.raised_ticks, raised_wall=old.raised_wall,
                              severity=row.severity if field(event, "severity") is not None else old.severity)
            self.rows.pop(alarm_id, None)
        self.last_changed = self.data.ticks()
        self.index.dynamic_changed(self._section)
        return row, raised

    def _section(self) -> Section:
        sec = Section()
        sec.add(self.prefix + (1,), (0,), lambda: (ber.TIMETICKS, self.last_changed), volatile=True)
        for name, *_rest in ALARM_COLUMNS:
            sec.declare(self.column_oid(name))
        for row in self.rows.values():
            for name, value in row.values().items():
                sec.static(self.column_oid(name), (row.index,), value)
        return sec

    def notification_varbinds(self, row: AlarmRow) -> list[tuple[tuple[int, ...], tuple[int, Any]]]:
        values = row.values()
        return [(self.column_oid(name) + (row.index,), values[name]) for name in NOTIFICATION_COLUMNS]
