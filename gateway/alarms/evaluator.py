"""The alarm state machine: setpoints with hysteresis, on-delay and off-delay, float-voltage suppression.

Pure logic over (value, timestamp) pairs, no I/O and no clock of its own, so it is tested with made-up time.
Each setpoint of each rule on each point is one ``Condition``:

* the condition *sets* when the value goes beyond the setpoint (``> high`` / ``< low``) and *resets* only
  when it comes back past the hysteresis band (``<= high - h`` / ``>= low + h``); inside the band it keeps
  its state, so a value wobbling around the setpoint does not flap;
* the alarm is raised once the condition has been set for ``on_delay_s`` without a break, and cleared once
  it has been reset for ``off_delay_s`` without a break (``tick`` checks these deadlines between readings).
"""
from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..config import fill_defaults
from ..strings.states import StringStates, string_states
from .model import AlarmKey
from .rules import SCHEMA, Rule, RuleSet


@dataclass(slots=True)
class Condition:
    key: AlarmKey
    rule: Rule
    threshold: float
    cond: bool = False  # the latched (hysteresis) condition
    since: float = 0.0  # when ``cond`` last changed
    active: bool = False  # the alarm is raised
    value: float | None = None  # last compared value (value minus reference for reference rules)
    raw: float | None = None  # last value of the point itself
    ts: float = 0.0
    waiting: bool = False  # in the evaluator's pending set
    hysteresis: float = 0.0  # the rule's, plus its relative part of this threshold

    @property
    def delay(self) -> float:
        return self.rule.on_delay_s if self.cond else self.rule.off_delay_s

    @property
    def deadline(self) -> float | None:
        """When a pending change becomes an alarm transition (None when nothing is pending)."""
        if self.cond == self.active:
            return None
        return self.since + self.delay


@dataclass(frozen=True, slots=True)
class Transition:
    key: AlarmKey
    rule: Rule
    raised: bool
    value: float | None
    raw: float | None
    threshold: float
    ts: float


@dataclass(slots=True)
class StringMode:
    """Whether a string is on float, for the float-voltage rules: its ``string.state`` (the string supervision's
    classifier, the one definition of float, charging, discharging and rest)."""

    state: int | None = None  # None: not known (float rules apply)
    left_at: float | None = None  # when it last came back to float
    ohmic_test_at: float | None = None


@dataclass
class FloatPolicy:
    settle_s: float
    ohmic_detect: str
    ohmic_suppress_s: float

    @classmethod
    def from_section(cls, section: dict) -> FloatPolicy:
        """The policy of an ``alarms`` section with its defaults filled in."""
        fd, ot = section["float_detection"], section["ohmic_test"]
        return cls(fd["settle_s"], ot["detect"], ot["suppress_s"])

    @classmethod
    def default(cls) -> FloatPolicy:
        """The schema's defaults (an evaluator built without a configuration)."""
        return cls.from_section(fill_defaults(SCHEMA, {}))


class Evaluator:
    def __init__(self, rules: RuleSet, policy: FloatPolicy | None = None, states: StringStates | None = None) -> None:
        self.rules = rules
        self.policy = policy or FloatPolicy.default()
        self.codes = states or string_states()
        self.conditions: dict[AlarmKey, Condition] = {}
        self.pending: set[AlarmKey] = set()
        self.strings: dict[int, StringMode] = {}
        self._ohmic: dict[tuple[int, int], float] = {}
        self._slots: dict[tuple, list[tuple[Rule, list[Condition]]]] = {}
        self._samples: dict[tuple, deque[float]] = {}  # (N, point, string, cell, channel) -> last N new values

    def carry_over(self, old: Evaluator) -> None:
        """What the evaluator learnt that does not depend on the rules (string modes, the last ohmic values),
        taken from the evaluator it replaces at a config reload."""
        self.strings = old.strings
        self._ohmic = old._ohmic
        self._samples = old._samples  # the last ohmic tests the averaged rules judge

    # -- string mode ---------------------------------------------------------------------------------------
    def observe_state(self, string: int, state: float | None, ts: float) -> None:
        """A ``string.state`` value of the string (None: not known)."""
        st = self.strings.setdefault(string, StringMode())
        code = None if state is None else int(state)
        if code == self.codes.unknown:
            code = None
        floating = code is None or code == self.codes.floating
        was_floating = st.state is None or st.state == self.codes.floating
        if floating and not was_floating:
            st.left_at = ts
        st.state = code

    def observe_ohmic(self, string: int, cell: int, value: float, ts: float) -> None:
        if self.policy.ohmic_detect == "off":
            return
        prev = self._ohmic.get((string, cell))
        self._ohmic[(string, cell)] = value
        if prev is not None and prev != value:
            self.ohmic_test(string, ts)

    def ohmic_test(self, string: int, ts: float) -> None:
        """The string's sensors ran an ohmic test at ``ts``: float-voltage rules rest for a while."""
        self.strings.setdefault(string, StringMode()).ohmic_test_at = ts

    def suppressed(self, string: int | None, ts: float) -> str | None:
        """Why float-voltage rules of ``string`` are suppressed at ``ts`` (None: they apply)."""
        st = self.strings.get(string) if string is not None else None
        if st is None:
            return None
        if st.state is not None and st.state != self.codes.floating:
            return self.codes.name(st.state)
        if st.left_at is not None and ts - st.left_at < self.policy.settle_s:
            return "settling after a discharge or recharge"
        if st.ohmic_test_at is not None and 0 <= ts - st.ohmic_test_at < self.policy.ohmic_suppress_s:
            return "ohmic test"
        return None

    # -- evaluation ----------------------------------------------------------------------------------------
    def update(self, point: str, string: int | None, cell: int | None, channel: int | None, value: float, ts: float,
               reference: Callable[[str], float | None] | None = None, device: str = "") -> list[Transition]:
        """A new usable value of a point; returns the alarm transitions it causes right away.
        ``reference(point id)`` gives the value of a reference point (ambient temperature) when a rule needs it."""
        slot = self._slots.get((point, string, cell, channel, device))
        if slot is None:
            slot = self._slot(point, string, cell, channel, device)
        if not slot:
            return []
        out: list[Transition] = []
        for rule, conds in slot:
            compared = value
            if rule.match_state is not None:
                compared = 1.0 if round(value) == rule.match_state else 0.0
            if rule.average > 1:
                judged = self._median(rule.average, point, string, cell, channel, value)
                if judged is None:
                    continue  # no verdict from fewer tests
                compared = judged
            if rule.reference:
                ref = reference(rule.reference) if reference is not None else None
                if ref is None:
                    continue
                compared = value - ref
            if rule.float_only and self.suppressed(string, ts):
                for c in conds:
                    if c.cond and not c.active:  # a pending raise is cancelled
                        c.cond, c.since = False, ts
                        self._unpend(c)
                continue
            for c in conds:
                t = self._step(c, compared, value, ts)
                if t is not None:
                    out.append(t)
        return out

    def _slot(self, point, string, cell, channel, device) -> list[tuple[Rule, list[Condition]]]:
        """The conditions of every rule on one point, made once (readings arrive every few seconds)."""
        slot = []
        for rule in self.rules.rules_for(point, string):
            if rule.channel is not None and rule.channel != channel:
                continue
            conds = []
            for side, severity, threshold in rule.conditions():
                key = AlarmKey(rule.id, side, severity, point, string, cell, channel, device)
                c = self.conditions.get(key)
                if c is None:
                    c = self.conditions[key] = Condition(key, rule, threshold)
                c.hysteresis = rule.hysteresis + rule.hysteresis_rel * abs(threshold)
                conds.append(c)
            slot.append((rule, conds))
        self._slots[(point, string, cell, channel, device)] = slot
        return slot

    def _median(self, n: int, point: str, string, cell, channel, value: float) -> float | None:
        """The median of the last ``n`` new values of a point (a value repeated, as a held ohmic test result is
        on every poll, counts once), None until there are ``n``."""
        key = (n, point, string, cell, channel)
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=n)
        if not samples or samples[-1] != value:
            samples.append(value)
        return statistics.median(samples) if len(samples) == n else None

    def _step(self, c: Condition, value: float, raw: float, ts: float) -> Transition | None:
        t = c.threshold
        h = c.hysteresis
        if c.key.side == "high":
            beyond, back = value > t, value <= t - h
        else:
            beyond, back = value < t, value >= t + h
        c.value, c.raw, c.ts = value, raw, ts
        if beyond and not c.cond:
            c.cond, c.since = True, ts
        elif back and c.cond:
            c.cond, c.since = False, ts
        return self._settle(c, ts)

    def _unpend(self, c: Condition) -> None:
        if c.waiting:
            c.waiting = False
            self.pending.discard(c.key)

    def _settle(self, c: Condition, now: float) -> Transition | None:
        if c.cond == c.active:
            self._unpend(c)
            return None
        if now - c.since >= c.delay:
            c.active = c.cond
            self._unpend(c)
            return Transition(c.key, c.rule, c.active, c.value, c.raw, c.threshold, now)
        if not c.waiting:
            c.waiting = True
            self.pending.add(c.key)
        return None

    def tick(self, now: float) -> list[Transition]:
        """Raise or clear the conditions whose delay has run out by ``now``."""
        out = []
        for key in list(self.pending):
            c = self.conditions[key]
            if c.rule.float_only and c.cond and not c.active and self.suppressed(key.string, now):
                c.cond, c.since = False, now
                self._unpend(c)
                continue
            t = self._settle(c, now)
            if t is not None:
                out.append(t)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for k in self.pending if (d := self.conditions[k].deadline) is not None]
        return min(deadlines) if deadlines else None

    # -- restart and clean-up ------------------------------------------------------------------------------
    def restore(self, key: AlarmKey, value: float | None, since: float) -> Condition | None:
        """An alarm that was active when the gateway stopped: active again, until its condition resets."""
        rule = self.rules.rule(key.rule, key.string)
        if rule is None or not rule.enabled:
            return None
        for side, severity, threshold in rule.conditions():
            if side == key.side and severity == key.severity:
                c = Condition(key, rule, threshold, cond=True, since=since, active=True, value=value, ts=since,
                              hysteresis=rule.hysteresis + rule.hysteresis_rel * abs(threshold))
                self.conditions[key] = c
                self._slots.clear()
                return c
        return None


__all__ = ["Condition", "Evaluator", "FloatPolicy", "StringMode", "Transition"]
