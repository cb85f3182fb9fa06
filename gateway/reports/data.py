"""What a report needs, gathered from the history, the analytics state and (through a hook) the alarm log."""
from __future__ import annotations

import datetime as dt
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..analytics import open_state, state_path
from ..analytics.ieee1188 import schedule
from ..analytics.state import StateDB
from ..history import HistoryDB, db_path, open_history

if TYPE_CHECKING:
    from ..app import Gateway
    from ..topology import StringConfig

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def fmt_ts(ts: float | None, with_time: bool = False) -> str:
    if ts is None:
        return "-"
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return d.strftime("%Y-%m-%d %H:%M UTC" if with_time else "%Y-%m-%d")


def parse_when(text: str) -> float:
    """A date (YYYY-MM-DD, UTC midnight), an ISO date-time, or unix seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: expected YYYY-MM-DD, an ISO date-time or unix seconds") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


@dataclass
class ReportContext:
    gateway: Gateway
    start: float
    end: float
    now: float = field(default_factory=time.time)
    history: HistoryDB | None = None
    state: StateDB | None = None
    alarms: list[dict] | None = None  # None: no alarm log kept by any plugin

    @classmethod
    def open(cls, gateway: Gateway, start: float, end: float, strings: list[int] | None = None) -> ReportContext:
        if end <= start:
            raise ValueError("--to must be after --from")
        ctx = cls(gateway, start, end)
        if db_path(gateway.config).exists():
            ctx.history = open_history(gateway.config, readonly=True)
        if state_path(gateway.config).exists():
            ctx.state = open_state(gateway.config, readonly=True)
        string = strings[0] if strings and len(strings) == 1 else None
        try:
            ctx.alarms = gateway.pm.hook.bmsgw_alarm_log(config=gateway.config, start=start, end=end, string=string)
        except Exception:
            log.exception("the alarm log could not be read")
            ctx.alarms = None
        return ctx

    def close(self) -> None:
        if self.history is not None:
            self.history.close()
        if self.state is not None:
            self.state.close()

    @property
    def site(self) -> str:
        return self.gateway.config.section("site")["name"]

    def strings(self, only: list[int] | None = None) -> list[StringConfig]:
        out = [s for s in self.gateway.topology.strings if not only or s.id in only]
        if only and len(out) != len(set(only)):
            known = ", ".join(str(s.id) for s in self.gateway.topology.strings)
            raise ValueError(f"no such string in {only}; configured: {known}")
        return out

    # -- history ---------------------------------------------------------------------------------------------
    def cell_snapshot(self, point: str, string: int) -> dict[int, float]:
        """Each battery's value at the end of the period: the mean of its last stored day (or less)."""
        if self.history is None:
            return {}
        for span in (3600.0, 86400.0, 7 * 86400.0):
            start = max(self.start, self.end - span)
            cells = self.history.query_string(point, string, start=start, end=self.end, now=self.now)
            if cells:
                return {c: statistics.fmean(s.mean[-min(len(s), 12):]) for c, s in cells.items() if s.mean}
        return {}

    def trend(self, point: str, string: int | None = None, channel: int | None = None):
        if self.history is None:
            return None
        s = self.history.query(point, string, None, channel, start=self.start, end=self.end, max_points=400,
                               now=self.now)
        return s if s.t else None

    def string_value(self, point: str, string: int) -> float | None:
        """The last stored value of a string point at the end of the period."""
        if self.history is None:
            return None
        found = self.history.latest(point, string, before=self.end, window_s=min(self.end - self.start, 86400.0))
        if found is not None:
            return found[1]
        s = self.trend(point, string)
        return s.mean[-1] if s else None

    # -- analytics state -------------------------------------------------------------------------------------
    def events(self, string: int) -> list[dict]:
        if self.state is None:
            return []
        return self.state.events(string, "discharge", self.start, self.end)

    def forecasts(self, string: int) -> dict[tuple[int, int], dict]:
        return self.state.forecasts(string) if self.state is not None else {}

    def baselines(self) -> dict:
        return self.state.baselines() if self.state is not None else {}

    def replacements(self, string: int) -> list:
        if self.state is None:
            return []
        return [r for r in self.state.replacements(string) if self.start <= r.ts <= self.end]

    def maintenance(self, s: StringConfig) -> list[dict]:
        cfg = self.gateway.config.section("analytics")
        monitored = {e.ref.point for e in self.gateway.pointmap.entries
                     if e.spec.source == "measured" and (e.ref.string in (None, s.id))}
        log_entries = self.state.maintenance() if self.state is not None else []
        tests = [e for e in (self.state.events(s.id, "discharge") if self.state is not None else [])
                 if e.get("capacity_test")]
        last_test = max((e["end"] for e in tests), default=None)
        soh = tests[-1]["soh_pct"] if tests else None
        install = cfg["install_dates"].get(str(s.id)) or cfg.get("install_date")
        age = (self.end - parse_when(install)) / (365.25 * 86400) if install else None
        return schedule(self.end, log_entries, monitored, last_test, age, cfg["design_life_years"], soh, s.id)
