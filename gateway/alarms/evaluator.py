"""The alarm state machine: setpoints with hysteresis, on-delay and off-delay, float-voltage suppression.

Pure logic over (value, timestamp) pairs, no I/O and no clock of its own, so it is tested with made-up time.
Each setpoint of each rule on each point is one ``Condition``:

* the condition *sets* when the value goes beyond the setpoint (``> high`` / ``< low``) and *resets* only
  when it comes back past the hysteresis band (``<= high - h`` / ``>= low + h``); inside the band it keeps
  its state, so a value wobbling around the setpoint does not flap;
* the alarm is raised once the condition has been set for ``on_delay_s`` without a break, and cleared once
  it has been reset for ``off_delay_s`` without a break (``tick`` checks these deadlines between readings).

Work proportional to what changed (``incremental``, the default): a point whose value is the one last judged
is not judged again (its conditions' states cannot change on the same value), unless something else can change
the verdict: a condition of it is waiting for its delay, the reference point a rule compares it with changed, or
the float suppression of its string started or ended since; and of a point judged, a condition that stays quiet (not
set, not raised, the value not beyond its setpoint) is left as it is.  The delays' deadlines are kept in a heap, so
``next_deadline`` and ``tick`` look at what is due, not at every waiting condition.  ``incremental=False`` is
the plain path (every reading judged, every waiting condition scanned), kept for the differential test.
"""
from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import fill_defaults
from ..points import PointRef
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
    owner: _Slot | None = None  # the point's slot (its count of waiting conditions)
    high: bool = True  # key.side == "high"

    @property
    def delay(self) -> float:
        return self.rule.on_delay_s if self.cond else self.rule.off_delay_s

    @property
    def deadline(self) -> float | None:
        """When a pending change becomes an alarm transition (None when nothing is pending)."""
        if self.cond == self.active:
            return None
        return self.since + self.delay


@dataclass(slots=True, eq=False)
class _Slot:
    """The conditions of every rule on one point, and what the last full judgement of the point saw."""

    rules: list[tuple[Rule, list[Condition]]] = field(default_factory=list)
    last: float | None = None  # the value last judged (None: never, or judge again)
    references: tuple[str, ...] = ()  # the reference points its rules compare with (cell temperature: ambient)
    reference_values: tuple[float | None, ...] | None = None  # their values at the last judgement
    float_only: bool = False  # a rule is suppressed off float: judge again when the suppression starts or ends
    suppressed: bool = False  # the string's float suppression at the last judgement
    waiting: int = 0  # conditions waiting for their delay: judge every reading (as the plain path does)
    judged_at: float | None = None  # the reading time of the last judgement
    seen_at: float | None = None  # ... of the last reading, judged or not
    plain: bool = True  # no reference point and no float-only rule: the same value alone means the same verdict
    # A new value of a point whose conditions are all at rest (none set, none raised: ``idle``, as the last
    # judgement left them) stays quiet while it is within [low, high] (every setpoint on its side), and its
    # difference from its reference point (if it has one) within [ref_low, ref_high], when each of its rules
    # compares the value itself or that difference (``ranged``: no state match, no average, at most one reference)
    ranged: bool = False
    idle: bool = False
    low: float = -math.inf
    high: float = math.inf
    ref_low: float = -math.inf
    ref_high: float = math.inf


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
    def __init__(self, rules: RuleSet, policy: FloatPolicy | None = None, states: StringStates | None = None,
                 incremental: bool = True) -> None:
        self.rules = rules
        self.policy = policy or FloatPolicy.default()
        self.codes = states or string_states()
        self.incremental = incremental
        self.conditions: dict[AlarmKey, Condition] = {}
        self.pending: set[AlarmKey] = set()
        self.strings: dict[int, StringMode] = {}
        self._ohmic: dict[tuple[int, int], float] = {}
        self._slots: dict[tuple, _Slot] = {}
        self._ref_slots: dict[PointRef, _Slot] = {}  # the same slots by store point (no device)
        # (deadline, order, condition) of every condition that started waiting; stale entries (the condition
        # stopped waiting) are dropped when they come up
        self._deadlines: list[tuple[float, int, Condition]] = []
        self._order = itertools.count()
        self._pending_float: set[AlarmKey] = set()  # waiting conditions of float-only rules (tick cancels them)
        self.judged = 0  # readings judged (the others were the value last judged)
        self._samples: dict[tuple, deque[float]] = {}  # (N, point, string, cell, channel) -> last N new values
        # per string: from which reading time nothing suppresses its float rules (as its mode is now): most
        # readings are judged against this one number instead of the whole ``suppressed``; dropped when the
        # string's mode changes
        self._applies_from: dict[int, float] = {}
        self.epoch = 0  # bumped when the slots are made anew (``restore``): a caller's own map of them is stale

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
        self._applies_from.pop(string, None)

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
        self._applies_from.pop(string, None)

    def _float_applies_from(self, string: int, st: StringMode) -> float:
        """The reading time from which ``suppressed`` says None for the string's present mode (inf: not on float);
        before it, ``suppressed`` decides (an ohmic test after the reading does not suppress it, for one)."""
        if st.state is not None and st.state != self.codes.floating:
            t = float("inf")
        else:
            t = -float("inf")
            if st.left_at is not None:
                t = max(t, st.left_at + self.policy.settle_s)
            if st.ohmic_test_at is not None:
                t = max(t, st.ohmic_test_at + self.policy.ohmic_suppress_s)
            t += 1.0  # clear of the boundary, where ``suppressed``'s own arithmetic may round the other way
        self._applies_from[string] = t
        return t

    def suppressed(self, string: int | None, ts: float) -> str | None:
        """Why float-voltage rules of ``string`` are suppressed at ``ts`` (None: they apply)."""
        st = self.strings.get(string) if string is not None else None
        if st is None:
            return None
        applies_from = self._applies_from.get(string)  # type: ignore[arg-type]  # (st: string is not None)
        if applies_from is None:
            applies_from = self._float_applies_from(string, st)  # type: ignore[arg-type]
        if ts >= applies_from:
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
        if not slot.rules:
            return []
        if self.incremental and self._unchanged(slot, string, value, ts, reference):
            slot.seen_at = ts
            return []
        return self._judge(slot, point, string, cell, channel, value, ts, reference)

    def update_ref(self, ref: PointRef, value: float, ts: float,
                   reference: Callable[[str], float | None] | None = None) -> list[Transition]:
        """``update`` for a point of the store (no device), looked up by its ref."""
        slot = self._ref_slots.get(ref)
        if slot is None:
            slot = self._ref_slots[ref] = self._slots.get((ref.point, ref.string, ref.cell, ref.channel, "")) \
                or self._slot(ref.point, ref.string, ref.cell, ref.channel, "")
        if not slot.rules:
            return []
        # most readings: the value last judged of a point with nothing waiting (checked here, not in a call)
        if value == slot.last and self.incremental and not slot.waiting and (
                slot.plain or self._context_unchanged(slot, ref.string, ts, reference)):
            slot.seen_at = ts
            return []
        return self._judge(slot, ref.point, ref.string, ref.cell, ref.channel, value, ts, reference)

    def _unchanged(self, slot: _Slot, string: int | None, value: float, ts: float,
                   reference: Callable[[str], float | None] | None) -> bool:
        """The point's verdict cannot change: the same value as last judged, nothing waiting on it, its
        reference points' values and its string's float suppression as they were."""
        if value != slot.last or slot.waiting:
            return False
        return slot.plain or self._context_unchanged(slot, string, ts, reference)

    def _context_unchanged(self, slot: _Slot, string: int | None, ts: float,
                           reference: Callable[[str], float | None] | None) -> bool:
        """The reference points' values and the string's float suppression are as the last judgement saw them."""
        if slot.references and (reference is None or slot.reference_values != tuple(map(reference, slot.references))):
            return False
        return not slot.float_only or (self.suppressed(string, ts) is not None) == slot.suppressed

    def _judge(self, slot: _Slot, point: str, string: int | None, cell: int | None, channel: int | None,
               value: float, ts: float, reference: Callable[[str], float | None] | None) -> list[Transition]:
        out: list[Transition] = []
        self.judged += 1
        if slot.seen_at != slot.judged_at:
            self.catch_up(slot)
        slot.last, slot.judged_at, slot.seen_at = value, ts, ts
        if slot.float_only:
            slot.suppressed = self.suppressed(string, ts) is not None
        if slot.references and reference is not None:
            slot.reference_values = tuple(map(reference, slot.references))
        quiet = self.incremental
        if quiet and slot.idle and slot.ranged and slot.low <= value <= slot.high:
            if not slot.references:
                return out  # every condition stays quiet (the loop below would pass over each)
            # (the loop below passes over a reference rule while its reference point has no usable value)
            ref_value = slot.reference_values[0] if reference is not None and slot.reference_values else None
            if ref_value is None or slot.ref_low <= value - ref_value <= slot.ref_high:
                return out
        for rule, conds in slot.rules:
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
            if rule.float_only and slot.suppressed:
                for c in conds:
                    if c.cond and not c.active:  # a pending raise is cancelled
                        c.cond, c.since = False, ts
                        self._unpend(c)
                continue
            for c in conds:
                if quiet and not c.cond and not c.active and (compared <= c.threshold if c.high
                                                              else compared >= c.threshold):
                    continue  # stays quiet: nothing to record (its last value shows only once it is set)
                t = self._step(c, compared, value, ts)
                if t is not None:
                    out.append(t)
        if slot.ranged:
            slot.idle = not any(c.cond or c.active for _rule, conds in slot.rules for c in conds)
        return out

    @staticmethod
    def catch_up(slot: _Slot) -> None:
        """Readings of the point were passed over since its last judgement (the same value): the conditions that
        judgement compared count them, as if each had been judged (their value was last read then)."""
        judged_at, seen_at = slot.judged_at, slot.seen_at
        for _rule, conds in slot.rules:
            for c in conds:
                if c.ts == judged_at:
                    c.ts = seen_at  # type: ignore[assignment]

    def _slot(self, point, string, cell, channel, device) -> _Slot:
        """The conditions of every rule on one point, made once (readings arrive every few seconds)."""
        slot = _Slot()
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
                c.high = side == "high"
                c.owner = slot
                if c.waiting:
                    slot.waiting += 1
                conds.append(c)
            slot.rules.append((rule, conds))
            if rule.reference and rule.reference not in slot.references:
                slot.references += (rule.reference,)
            slot.float_only = slot.float_only or rule.float_only
        slot.plain = not slot.references and not slot.float_only
        slot.ranged = len(slot.references) <= 1 and all(r.match_state is None and r.average <= 1
                                                        for r, _ in slot.rules)
        own = [c for rule, cs in slot.rules if not rule.reference for c in cs]  # compare the value itself
        referred = [c for rule, cs in slot.rules if rule.reference for c in cs]  # its difference from the reference
        slot.low = max((c.threshold for c in own if not c.high), default=-math.inf)
        slot.high = min((c.threshold for c in own if c.high), default=math.inf)
        slot.ref_low = max((c.threshold for c in referred if not c.high), default=-math.inf)
        slot.ref_high = min((c.threshold for c in referred if c.high), default=math.inf)
        slot.idle = not any(c.cond or c.active for c in own + referred)
        self._slots[(point, string, cell, channel, device)] = slot
        return slot

    def last_seen(self, c: Condition) -> float:
        """When the condition's value was last read: a reading of the same value not judged again counts for
        the conditions the last judgement compared (not those it passed over: a float rule suppressed then)."""
        slot = c.owner
        if slot is not None and slot.seen_at is not None and c.ts == slot.judged_at:
            return slot.seen_at
        return c.ts

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
            self._pending_float.discard(c.key)
            if c.owner is not None:
                c.owner.waiting -= 1

    def _pend(self, c: Condition) -> None:
        c.waiting = True
        self.pending.add(c.key)
        if c.owner is not None:
            c.owner.waiting += 1
        if self.incremental:
            if c.rule.float_only:
                self._pending_float.add(c.key)
            heapq.heappush(self._deadlines, (c.since + c.delay, next(self._order), c))

    def _settle(self, c: Condition, now: float) -> Transition | None:
        if c.cond == c.active:
            self._unpend(c)
            return None
        if now - c.since >= c.delay:
            c.active = c.cond
            self._unpend(c)
            return Transition(c.key, c.rule, c.active, c.value, c.raw, c.threshold, now)
        if not c.waiting:
            self._pend(c)
        return None

    def tick(self, now: float) -> list[Transition]:
        """Raise or clear the conditions whose delay has run out by ``now``; cancel the pending raises of
        float-only rules whose string is no longer on float."""
        if not self.incremental:
            return self._tick_all(now)
        out = []
        for key in list(self._pending_float):
            c = self.conditions[key]
            if c.cond and not c.active and self.suppressed(key.string, now):
                c.cond, c.since = False, now
                self._unpend(c)
                if c.owner is not None:
                    c.owner.last = None  # its state changed without a reading: judge the next one
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, c = heapq.heappop(heap)
            if not c.waiting or c.deadline != deadline or self.conditions.get(c.key) is not c:
                continue  # stopped waiting (or waits for another deadline, with an entry of its own)
            t = self._settle(c, now)
            if t is not None:
                out.append(t)
        return out

    def _tick_all(self, now: float) -> list[Transition]:
        """The plain tick: every waiting condition."""
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
        if not self.incremental:
            deadlines = [d for k in self.pending if (d := self.conditions[k].deadline) is not None]
            return min(deadlines) if deadlines else None
        heap = self._deadlines
        while heap:
            deadline, _, c = heap[0]
            if c.waiting and c.deadline == deadline and self.conditions.get(c.key) is c:
                return deadline
            heapq.heappop(heap)
        return None

    # -- restart and clean-up ------------------------------------------------------------------------------
    def restore(self, key: AlarmKey, value: float | None, since: float) -> Condition | None:
        """An alarm that was active when the gateway stopped: active again, until its condition resets."""
        rule = self.rules.rule(key.rule, key.string)
        if rule is None or not rule.enabled:
            return None
        for side, severity, threshold in rule.conditions():
            if side == key.side and severity == key.severity:
                c = Condition(key, rule, threshold, cond=True, since=since, active=True, value=value, ts=since,
                              hysteresis=rule.hysteresis + rule.hysteresis_rel * abs(threshold), high=side == "high")
                old = self.conditions.get(key)
                if old is not None:
                    self._unpend(old)
                self.conditions[key] = c
                self._slots.clear()
                self._ref_slots.clear()
                self.epoch += 1
                return c
        return None


__all__ = ["Condition", "Evaluator", "FloatPolicy", "StringMode", "Transition"]
