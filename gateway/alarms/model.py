"""The records of the alarm system: what an alarm is keyed by, the active alarm, and the event on the hook."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..hookspecs import LEVEL, AlarmEvent  # the record on the hook is part of the contract

SEVERITIES = ("warning", "critical")


@dataclass(frozen=True, slots=True)
class AlarmKey:
    """What one alarm condition watches: a rule's side (high/low) at one severity, on one point or device.

    ``point`` is the point family (``cell.voltage``) or ``device`` for a bank device's communication alarm,
    which carries the device's ``bus:address`` in ``device``.
    """

    rule: str
    side: str  # high | low
    severity: str  # warning | critical
    point: str
    string: int | None = None
    cell: int | None = None
    channel: int | None = None
    device: str = ""

    def __str__(self) -> str:
        where = " ".join(f"{k}={v}" for k, v in (("string", self.string), ("cell", self.cell),
                                                 ("channel", self.channel), ("device", self.device or None))
                         if v is not None)
        return f"{self.rule}/{self.side}/{self.severity} {self.point} {where}".rstrip()


@dataclass(slots=True)
class ActiveAlarm:
    """A row of the active-alarm table.  Mutated only under the manager's lock; readers get copies."""

    alarm_id: int
    key: AlarmKey
    object: str
    metric: str
    unit: str
    severity: str
    threshold: float | None
    value: float | None  # value when it was raised
    raised_ts: float
    text: str
    last_value: float | None = None
    last_ts: float | None = None
    acknowledged_by: str | None = None
    acknowledged_ts: float | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_by is not None

    @property
    def level(self) -> int:
        return LEVEL.get(self.severity, 0)

    def event(self, active: bool, ts: float, value: float | None = None, text: str | None = None) -> AlarmEvent:
        return AlarmEvent(alarm_id=self.alarm_id, object=self.object, point=self.metric,
                          value=self.value if value is None else value, threshold=self.threshold,
                          severity=self.severity, message=self.text if text is None else text, active=active, ts=ts,
                          rule=self.key.rule, unit=self.unit, string=self.key.string, cell=self.key.cell,
                          channel=self.key.channel, raised=self.raised_ts,
                          acknowledged_by=self.acknowledged_by, acknowledged=self.acknowledged_ts)

    def record(self) -> dict[str, Any]:
        """As the gateway hands alarms out (web page, REST, reports): see ``alarm_record``."""
        return alarm_record(self.alarm_id, self.severity, self.text, self.raised_ts, self.metric, self.key.string,
                            self.key.cell, self.key.channel,
                            self.last_value if self.last_value is not None else self.value, self.threshold,
                            None, self.acknowledged_by, self.acknowledged_ts, self.key.rule)

    def to_dict(self) -> dict:
        return {"alarm_id": self.alarm_id, "rule": self.key.rule, "side": self.key.side, "severity": self.severity,
                "object": self.object, "metric": self.metric, "unit": self.unit, "string": self.key.string,
                "cell": self.key.cell, "channel": self.key.channel, "device": self.key.device or None,
                "value": self.value, "threshold": self.threshold, "last_value": self.last_value,
                "raised_ts": self.raised_ts, "text": self.text, "acknowledged": self.acknowledged,
                "acknowledged_by": self.acknowledged_by, "acknowledged_ts": self.acknowledged_ts}

    def copy(self) -> ActiveAlarm:
        return ActiveAlarm(self.alarm_id, self.key, self.object, self.metric, self.unit, self.severity, self.threshold,
                           self.value, self.raised_ts, self.text, self.last_value, self.last_ts,
                           self.acknowledged_by, self.acknowledged_ts)


def alarm_record(alarm_id: int | str, severity: str, text: str, raised_ts: float, metric: str,
                 string: int | None, cell: int | None, channel: int | None, value: float | None,
                 threshold: float | None, cleared_ts: float | None, acknowledged_by: str | None,
                 acknowledged_ts: float | None, rule: str, cleared_message: str | None = None) -> dict[str, Any]:
    """The one shape of an alarm outside the engine (``bmsgw_alarms``, ``bmsgw_alarm_log``, ``/api/v1/alarms``,
    ``AlarmManager.history``, ``bmsgw alarms --json``, reports): ``message`` is the text, ``point`` the point
    family, ``raised``/``cleared``/``acknowledged`` Unix seconds, ``acknowledged_by`` who, ``rule`` the name of
    the rule that raised it, ``cleared_message`` why it ended (None while active)."""
    return {"id": str(alarm_id), "severity": severity, "message": text, "raised": raised_ts,
            "active": cleared_ts is None, "point": metric, "string": string, "cell": cell, "channel": channel,
            "value": value, "threshold": threshold, "cleared": cleared_ts, "acknowledged_by": acknowledged_by,
            "acknowledged": acknowledged_ts, "rule": rule, "cleared_message": cleared_message}


class UnknownAlarm(KeyError):
    """``acknowledge`` was given an id that is not an active alarm."""

    def __str__(self) -> str:
        return f"no active alarm with id {self.args[0]}"
