"""The alarm manager: evaluates the rules on every batch the store publishes, keeps the active-alarm table,
logs to SQLite, publishes the alarm-level points and calls ``bmsgw_alarm_event`` on every raise and clear.

Threads: the store listener only queues the batch and schedules the evaluation on the gateway's event loop,
so polling never waits for it; the log is written by its own thread.  ``acknowledge`` and the readers
(``active``, ``history``) may be called from any thread (web server, Modbus server).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..points import PointRef, Quality, Reading
from ..strings.states import string_states
from .evaluator import Evaluator, FloatPolicy, Transition, _Slot
from .log import AlarmLog, alarm_of
from .messages import Messages
from .model import LEVEL, ActiveAlarm, AlarmEvent, AlarmKey, UnknownAlarm
from .rules import OWN_POINTS, ohmic_levels, resolve
from .timer import DeadlineTimer

if TYPE_CHECKING:
    from ..app import Gateway
    from ..engine import CommEvent

log = logging.getLogger(__name__)

LOG_FILE = "alarms.sqlite"
MAX_BY_LENGTH = 64
# what ``_evaluate`` does with a point's readings (``_route``), bits: judged by rules, a string's state, an
# ohmic test result; OWN: the manager's own levels, nothing
_RULES, _STATE, _OHMIC, _OWN = 1, 2, 4, -1


def call_each(hook, **kwargs) -> None:
    """Call every implementation of a hook on its own, so one failing plugin cannot silence the others."""
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception:
            log.exception("%s in plugin %s failed", hook.name, impl.plugin_name)


class AlarmManager:
    """``clock``: where "now" comes from (wall clock; a simulated-time run passes its own and calls ``drive``).
    ``incremental``: judge only the points whose value changed and look only at the delays that are due
    (``Evaluator``); False is the plain path, every reading judged (the differential test compares them)."""

    def __init__(self, gateway: Gateway, section: dict, clock: Callable[[], float] = time.time,
                 incremental: bool = True) -> None:
        self.gateway = gateway
        self.incremental = incremental
        self.store = gateway.store
        self.section = section
        self.clock = clock
        topo = gateway.topology
        catalog = gateway.catalog
        self.rules = resolve(section, topo, catalog, src=str(gateway.config.path),
                             ohmic=ohmic_levels(gateway.config.section("analytics")))
        self.evaluator = Evaluator(self.rules, FloatPolicy.from_section(section), string_states(catalog),
                                   incremental=incremental)
        self.messages = Messages(topo, lambda pid: catalog[pid].unit if pid in catalog else "", self.store.value,
                                 {d.key: d.label for d in topo.devices})
        self.log = AlarmLog(gateway.config.state_dir / LOG_FILE)
        self._lock = threading.RLock()
        self._active: dict[int, ActiveAlarm] = {}
        self._by_key: dict[AlarmKey, int] = {}
        self._queue: deque[list[tuple[PointRef, Reading]]] = deque()
        self._scheduled = False
        self._timer = DeadlineTimer(self._on_timer)
        self._published: dict[PointRef, float] = {}
        self._lost_devices: set[str] = set()
        # bank devices (charger monitor, I/O module): their points tell that a lost device answers again
        self._ref_device = {e.ref: dev.key for e in gateway.pointmap
                            if (dev := gateway.pointmap.device_of(e.ref)) is not None and dev.string is None}
        self._level_refs = {pid: gateway.pointmap.refs(pid) for pid in OWN_POINTS if pid in catalog}
        self._references = {r.reference: PointRef(r.reference) for rules in self.rules.index.values() for r in rules
                            if r.reference}
        self._routes: dict[PointRef, int] = {}
        # the points judged by rules alone (no string state, ohmic test or bank device to watch), with their
        # evaluator's slot (``_nothing``: no rule either): most readings of them, the value last judged, are
        # passed over in ``_evaluate`` itself
        self._fast: dict[PointRef, _Slot] = {}
        self._nothing = _Slot()  # (a marker: a point whose readings ``_evaluate`` has nothing to do with)
        self._fast_of: tuple[Evaluator, int] | None = None  # the evaluator (and its slots' epoch) they are of
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.next_id = 1
        self.events = 0
        self.batches = 0
        self.eval_seconds = 0.0
        self.started = False

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None, driven: bool = False) -> None:
        """Restore the alarms that were active at the last stop, publish the levels, subscribe to the store.
        Called from ``bmsgw_gateway_ready`` in the gateway's event loop; ``driven``: no loop, the caller runs
        the evaluation with ``drive(now)`` (a simulated-time run)."""
        if self.started:
            return
        self.loop = None if driven else (loop or asyncio.get_running_loop())
        self._loop_thread = threading.get_ident()
        keep_days = self.section["log_keep_days"]
        pruned = self.log.prune(keep_days)
        if pruned:
            log.info("alarm log: removed %d alarms cleared more than %s days ago", pruned, keep_days)
        self.next_id = self.log.next_id()
        self.log.start()
        self._restore()
        self._publish_levels()
        self.store.subscribe(self._on_batch)
        self.started = True
        self._reschedule()

    def stop(self) -> None:
        self.store.unsubscribe(self._on_batch)
        self._timer.cancel()
        self.log.close()
        self.started = False

    def reload(self, section: dict, analytics_section: dict | None = None) -> None:
        """New rules while running (the section passed ``check``; ``analytics_section``: the analytics' new
        section, whose thresholds are the ohmic rules' levels), in the event loop.  The active alarms whose
        rule still exists carry on (their on- and off-delays with them); the others end now.  Then the
        present value of every point is judged by the new rules, so a lowered setpoint raises without waiting
        for the point to change (after its on-delay, like any alarm)."""
        topo, catalog = self.gateway.topology, self.gateway.catalog
        analytics = self.gateway.config.section("analytics") if analytics_section is None else analytics_section
        rules = resolve(section, topo, catalog, src=str(self.gateway.config.path), ohmic=ohmic_levels(analytics))
        evaluator = Evaluator(rules, FloatPolicy.from_section(section), string_states(catalog),
                              incremental=self.incremental)
        evaluator.carry_over(self.evaluator)
        with self._lock:
            alarms = list(self._active.values())
        gone = [a for a in alarms if evaluator.restore(a.key, a.value, a.raised_ts) is None]
        self.section, self.rules, self.evaluator = section, rules, evaluator
        self._references = {r.reference: PointRef(r.reference) for rs in rules.index.values() for r in rs
                            if r.reference}
        self._routes = {}
        now = self.clock()
        for a in gone:
            self._end(a, f"{a.object}: alarm ended, its rule is no longer configured", now)
        self._on_batch([(ref, r) for ref, r in self.store.snapshot().items() if r.quality is Quality.GOOD])

    def _end(self, a: ActiveAlarm, text: str, ts: float) -> None:
        """An active alarm ends without its condition resetting (its rule was removed)."""
        with self._lock:
            self._by_key.pop(a.key, None)
            self._active.pop(a.alarm_id, None)
        self.log.record_clear(a.alarm_id, ts, None, text)
        self._publish_levels()
        self.events += 1
        log.info("alarm %d cleared %s: %s", a.alarm_id, a.object, text)
        call_each(self.gateway.pm.hook.bmsgw_alarm_event, gateway=self.gateway, event=a.event(False, ts, text=text))

    def _restore(self) -> None:
        now = self.clock()
        restored = dropped = 0
        devices = {d.key for d in self.gateway.topology.devices}
        for row in self.log.load_active():
            a = alarm_of(row)
            if a.key.device and a.key.device not in devices:  # that device is no longer configured
                self.log.record_clear(a.alarm_id, now, None, f"{a.object}: alarm ended, the device is no longer "
                                                             "configured")
                dropped += 1
                continue
            if a.key.point == "device_address":  # the engine starts at the configured address again
                self.log.record_clear(a.alarm_id, now, None, f"{a.text.split(':')[0]}: alarm ended at a restart; "
                                                             "raised again if the sensor is found elsewhere again")
                dropped += 1
                continue
            cond = self.evaluator.restore(a.key, a.value, a.raised_ts)
            if cond is None:  # its rule is gone or disabled since: the alarm ends here
                text = f"{a.object}: alarm ended, its rule is no longer configured"
                self.log.record_clear(a.alarm_id, now, None, text)
                dropped += 1
                continue
            self._active[a.alarm_id] = a
            self._by_key[a.key] = a.alarm_id
            if a.key.device:
                self._lost_devices.add(a.key.device)
            restored += 1
        if restored or dropped:
            log.info("alarms: %d active alarms restored from the log, %d ended (rule or device removed, or a "
                     "sensor's address)", restored, dropped)

    # -- input -----------------------------------------------------------------------------------------------
    def _on_batch(self, batch: list[tuple[PointRef, Reading]]) -> None:
        """The store listener: queue the batch, evaluate it on the event loop soon (never here)."""
        self._queue.append(batch)
        if self._scheduled or self.loop is None:
            return
        self._scheduled = True
        if threading.get_ident() == self._loop_thread:
            self.loop.call_soon(self._drain)
        else:
            self.loop.call_soon_threadsafe(self._drain)

    def on_comm_event(self, event: CommEvent) -> None:
        """A device stopped answering or answers again.  Any device answering again at another address than
        the configured one (the engine found it there) raises ``device_address``; at its own, clears it.  Lost
        and found: bank devices (charger monitor, I/O module) here; cell and string sensors are watched through
        their ``cell.comm_status`` / ``string.comm_status`` points instead."""
        dev = event.device
        if not event.lost:
            moved = float(event.address) if event.moved else 0.0
            self._apply(self.evaluator.update("device_address", None, None, None, moved, event.ts, device=dev.key))
        if dev.string is not None:
            self._reschedule()
            return
        if event.lost:
            self._lost_devices.add(dev.key)
        else:
            self._lost_devices.discard(dev.key)
        self._apply(self.evaluator.update("device", None, None, None, 1.0 if event.lost else 0.0, event.ts,
                                          device=dev.key))
        self._reschedule()

    def ohmic_test(self, string: int, ts: float | None = None) -> None:
        """Tell the alarms that the string's sensors ran an ohmic test (float-voltage rules rest a while)."""
        self.evaluator.ohmic_test(string, self.clock() if ts is None else ts)

    def drive(self, now: float) -> None:
        """Evaluate what the store published and raise or clear what is due by ``now`` (``start(driven=True)``)."""
        self._drain()
        self._apply(self.evaluator.tick(now))

    def _drain(self) -> None:
        self._scheduled = False
        t0 = time.perf_counter()
        transitions: list[Transition] = []
        while self._queue:
            transitions.extend(self._evaluate(self._queue.popleft()))
            self.batches += 1
        self.eval_seconds += time.perf_counter() - t0
        self._apply(transitions)
        self._reschedule()

    def _route(self, ref: PointRef) -> int:
        """What a reading of ``ref`` is for (``_RULES``, ``_STATE``, ``_OHMIC`` bits, ``_OWN``), kept per point."""
        point = ref.point
        if point in OWN_POINTS:
            route = _OWN
        else:
            route = _RULES if (point, ref.string) in self.rules.index else 0
            if point == "string.state" and ref.string is not None:
                route |= _STATE
            elif point == "cell.ohmic" and ref.string is not None and ref.cell is not None:
                route |= _OHMIC
        self._routes[ref] = route
        return route

    def _evaluate(self, batch: list[tuple[PointRef, Reading]]) -> list[Transition]:
        ev = self.evaluator
        update_ref = ev.update_ref
        routes = self._routes
        good = Quality.GOOD
        # the reference points' values (ambient temperature), read once: the store holds every queued batch already
        reference = {pid: self.store.value(ref) for pid, ref in self._references.items()}.get
        out: list[Transition] = []
        if self._fast_of != (ev, ev.epoch):
            self._fast, self._fast_of = {}, (ev, ev.epoch)
        fast = self._fast.get  # (empty on the plain path: every reading judged)
        learn = self._fast if self.incremental else None
        applies_from = ev._applies_from.get
        referenced: dict[tuple[str, ...], tuple[float | None, ...]] = {}
        nothing = self._nothing
        for ref, reading in batch:
            slot = fast(ref)
            if slot is nothing:  # no rule, no string state or ohmic test, not a bank device's
                continue
            value = reading.value
            # ``Evaluator.update_ref``'s test that the verdict cannot change, without the calls: the value last
            # judged, nothing waiting, and what else the point's rules look at as the last judgement saw it
            if slot is not None and value == slot.last and not slot.waiting and reading.quality is good \
                    and value is not None:
                if slot.plain:
                    slot.seen_at = reading.ts
                    continue
                if not slot.references:  # float-only: the string's float rules apply from a known time on
                    since = applies_from(ref.string)  # type: ignore[arg-type]  # (None: no string, not a key)
                    if since is not None and reading.ts >= since and not slot.suppressed:
                        slot.seen_at = reading.ts
                        continue
                elif not slot.float_only:
                    values = referenced.get(slot.references)
                    if values is None:
                        values = referenced[slot.references] = tuple(map(reference, slot.references))
                    if slot.reference_values == values:
                        slot.seen_at = reading.ts
                        continue
            if reading.quality is not good or value is None:
                continue
            if slot is not None:  # judged by rules alone: straight to the evaluator
                # ``Evaluator._judge``'s own shortcut, without the calls: a value within every setpoint of a point
                # whose conditions are all at rest (its difference from its reference point within theirs, the
                # string's float rules known to apply, if it has some) leaves them quiet; the judgement is noted
                # (readings passed over since the last one counted first, as ``_judge`` does)
                if slot.idle and slot.ranged and not slot.waiting and slot.low <= value <= slot.high:
                    ts = reading.ts
                    if not slot.float_only or ((since := applies_from(ref.string)) is not None  # type: ignore[arg-type]
                                               and ts >= since):
                        refs = slot.references
                        if refs:
                            values = referenced.get(refs)
                            if values is None:
                                values = referenced[refs] = tuple(map(reference, refs))
                            ref_value = values[0]
                            quiet = ref_value is None or slot.ref_low <= value - ref_value <= slot.ref_high
                        else:
                            quiet = True
                        if quiet:
                            if slot.seen_at != slot.judged_at:
                                ev.catch_up(slot)
                            ev.judged += 1
                            slot.last, slot.judged_at, slot.seen_at = value, ts, ts
                            if slot.float_only:
                                slot.suppressed = False
                            if refs:
                                slot.reference_values = values
                            continue
                transitions = update_ref(ref, value, reading.ts, reference)
                if transitions:
                    out.extend(transitions)
                continue
            route = routes.get(ref)
            if route is None:
                route = self._route(ref)
            if route <= _RULES:
                if route <= 0 and learn is not None and ref not in self._ref_device:
                    learn[ref] = nothing
                if route < 0:
                    continue
            elif route & _STATE:
                ev.observe_state(ref.string, value, reading.ts)  # type: ignore[arg-type]  # (route: a string's)
            else:
                ev.observe_ohmic(ref.string, ref.cell, value, reading.ts)  # type: ignore[arg-type]
            if self._lost_devices:
                dkey = self._ref_device.get(ref)
                if dkey is not None and dkey in self._lost_devices:  # answers again (seen after a restart)
                    self._lost_devices.discard(dkey)
                    out.extend(ev.update("device", None, None, None, 0.0, reading.ts, device=dkey))
            if route & _RULES:
                transitions = update_ref(ref, value, reading.ts, reference)
                if transitions:
                    out.extend(transitions)
                if route == _RULES and learn is not None and slot is None and ref not in self._ref_device:
                    known = ev._ref_slots.get(ref)
                    if known is not None and known.rules:
                        learn[ref] = known
        return out

    # -- timers ----------------------------------------------------------------------------------------------
    def _reschedule(self) -> None:
        self._timer.arm(self.loop, self.evaluator.next_deadline())

    def _on_timer(self) -> None:
        self._apply(self.evaluator.tick(self.clock()))
        self._reschedule()

    # -- transitions -----------------------------------------------------------------------------------------
    def _apply(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        events: list[AlarmEvent] = []
        for t in transitions:
            if t.raised:
                events.append(self._raise(t))
            else:
                ev = self._clear(t)
                if ev is not None:
                    events.append(ev)
        self._publish_levels()
        for ev in events:
            self.events += 1
            log.log(logging.WARNING if ev.active else logging.INFO, "alarm %d %s %s: %s", ev.alarm_id,
                    ev.severity if ev.active else "cleared", ev.object, ev.message)
            call_each(self.gateway.pm.hook.bmsgw_alarm_event, gateway=self.gateway, event=ev)

    def _raise(self, t: Transition) -> AlarmEvent:
        key = t.key
        text = self.messages.raised(key, t.rule, t.value, t.raw, t.threshold)
        with self._lock:
            alarm_id = self.next_id
            self.next_id += 1
            a = ActiveAlarm(alarm_id, key, self.messages.object_id(key), key.point if key.point != "device" else
                            "comm_status", self.messages.unit_of(key.point), key.severity, t.threshold, t.value, t.ts,
                            text, t.value, t.ts)
            self._active[alarm_id] = a
            self._by_key[key] = alarm_id
        self.log.record_raise(a)
        return a.event(True, t.ts)

    def _clear(self, t: Transition) -> AlarmEvent | None:
        with self._lock:
            alarm_id = self._by_key.pop(t.key, None)
            a = self._active.pop(alarm_id, None) if alarm_id is not None else None
        if a is None:
            return None
        text = self.messages.cleared(t.key, t.rule, t.value, t.raw)
        self.log.record_clear(a.alarm_id, t.ts, t.value, text)
        return a.event(False, t.ts, value=t.value, text=text)

    def _publish_levels(self) -> None:
        with self._lock:
            alarms = list(self._active.values())
        want: dict[PointRef, float] = {}
        for refs in self._level_refs.values():
            for ref in refs:
                want[ref] = 0.0
        cells: dict[tuple[int, int], int] = {}
        strings: dict[int, int] = {}
        top = 0
        for a in alarms:
            lvl = a.level
            k = a.key
            top = max(top, lvl)
            if k.string is not None:
                strings[k.string] = max(strings.get(k.string, 0), lvl)
                if k.cell is not None:
                    cells[(k.string, k.cell)] = max(cells.get((k.string, k.cell), 0), lvl)
        for (s, c), lvl in cells.items():
            want[PointRef("cell.alarm_level", s, c)] = float(lvl)
        for s, lvl in strings.items():
            want[PointRef("string.alarm_level", s)] = float(lvl)
        want[PointRef("bank.alarms_active")] = float(len(alarms))
        want[PointRef("bank.alarm_level")] = float(top)
        ts = self.clock()
        changed = {ref: v for ref, v in want.items()
                   if self._published.get(ref) != v and (ref in self.gateway.pointmap.by_ref)}
        if changed:
            self._published.update(changed)
            self.store.put_many((ref, Reading(v, Quality.GOOD, ts)) for ref, v in changed.items())

    # -- acknowledge and read (any thread) -------------------------------------------------------------------
    def acknowledge(self, alarm_id: int, by: str) -> bool:
        """Acknowledge an active alarm.  True when it is acknowledged now, False when it already was.

        ``by`` names who did it (a user name, ``modbus``, ``snmp``); raises ``UnknownAlarm`` for an id that
        is not active and ``ValueError`` for an empty ``by``.
        """
        who = " ".join(str(by).split())[:MAX_BY_LENGTH]
        if not who:
            raise ValueError("say who acknowledges the alarm")
        try:
            alarm_id = int(alarm_id)
        except (TypeError, ValueError):
            raise UnknownAlarm(alarm_id) from None
        ts = self.clock()
        with self._lock:
            a = self._active.get(alarm_id)
            if a is None:
                raise UnknownAlarm(alarm_id)
            if a.acknowledged:
                return False
            a.acknowledged_by, a.acknowledged_ts = who, ts
            event = a.event(True, ts)
        self.log.record_ack(alarm_id, who, ts)
        log.info("alarm %d acknowledged by %s: %s", alarm_id, who, a.text)
        self._in_loop(call_each, self.gateway.pm.hook.bmsgw_alarm_acknowledged, gateway=self.gateway, event=event)
        return True

    def acknowledge_all(self, by: str, severity: str | None = None) -> int:
        """Acknowledge every active alarm (of ``severity``, when given); returns how many were acknowledged."""
        n = 0
        for a in self.active():
            if not a.acknowledged and (severity is None or a.severity == severity):
                with contextlib.suppress(UnknownAlarm):  # cleared meanwhile
                    n += bool(self.acknowledge(a.alarm_id, by))
        return n

    def active(self) -> list[ActiveAlarm]:
        """The active-alarm table (copies), most severe first, then oldest first."""
        with self._lock:
            rows = [a.copy() for a in self._active.values()]
        conds = self.evaluator.conditions
        for a in rows:
            c = conds.get(a.key)
            if c is not None and c.value is not None:
                a.last_value, a.last_ts = c.value, self.evaluator.last_seen(c)
        rows.sort(key=lambda a: (-a.level, a.raised_ts, a.alarm_id))
        return rows

    def get(self, alarm_id: int) -> ActiveAlarm | None:
        with self._lock:
            a = self._active.get(int(alarm_id))
            return a.copy() if a else None

    def history(self, limit: int = 100, since: float | None = None, active_only: bool = False,
                string: int | None = None) -> list[dict[str, Any]]:
        """The alarm log, newest first, as ``alarm_record``s (waits for queued writes, so it includes the
        latest changes)."""
        self.log.flush(timeout=5.0)
        return self.log.history(limit, since, active_only, string)

    def status(self) -> dict[str, Any]:
        rows = self.active()
        return {"active": len(rows), "critical": sum(a.severity == "critical" for a in rows),
                "warning": sum(a.severity == "warning" for a in rows),
                "unacknowledged": sum(not a.acknowledged for a in rows), "events": self.events,
                "level": max((a.level for a in rows), default=0), "log": str(self.log.path)}

    def _in_loop(self, fn, *args, **kwargs) -> None:
        if self.loop is None or threading.get_ident() == self._loop_thread or self.loop.is_closed():
            fn(*args, **kwargs)
        else:
            self.loop.call_soon_threadsafe(lambda: fn(*args, **kwargs))


__all__ = ["AlarmManager", "LEVEL", "call_each"]
