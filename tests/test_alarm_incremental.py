"""The incremental alarm evaluation (only the points whose value changed, the delays' deadlines in a heap)
against the plain one (every reading judged, every waiting condition scanned): the same random sequence of
store states, clock steps, ohmic tests and devices lost and found, through two alarm managers in simulated
time, raises and clears the same alarms at the same times with the same values, and leaves the same active
table.  Every rule kind is driven: setpoints with hysteresis and delays, state and enumerated-state rules, the
reference rule (cell over ambient temperature), float-only rules, the averaged ohmic rules, device alarms."""
import random

import pytest

from gateway.alarms.manager import AlarmManager
from gateway.app import Gateway
from gateway.engine import CommEvent
from gateway.hookspecs import hookimpl
from gateway.points import Quality, Reading
from gateway.strings import string_states
from tests.support import small_bank, write_config

STATES = string_states()


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def bmsgw_alarm_event(self, gateway, event):
        self.events.append(event)


def manager(tmp_path, incremental):
    tmp_path.mkdir()
    path = write_config(tmp_path, base=small_bank(strings=2, cells=4),
                        overrides={"alarms": {"float_detection": {"settle_s": 120},
                                              "ohmic_test": {"suppress_s": 400}}})
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "(none)", "bus2": "(none)"}, entry_points=False)
    rec = Recorder()
    gw.pm.register(rec)
    clock = {"now": 1_000_000.0}
    mgr = AlarmManager(gw, gw.config.section("alarms"), clock=lambda: clock["now"], incremental=incremental)
    mgr.start(driven=True)
    return gw, mgr, rec, clock


def candidates(mgr, ref):
    """Values that exercise the point's rules: each setpoint, just beyond it, inside its hysteresis band and
    clear of it, plus a few ordinary values (a small set, so a value often repeats)."""
    if ref.point == "string.state":
        return [float(STATES.floating)] * 3 + [float(STATES.discharging), float(STATES.charging)]
    rules = mgr.rules.rules_for(ref.point, ref.string)
    values = set()
    for rule in rules:
        for side, _sev, t in rule.conditions():
            h = rule.hysteresis + rule.hysteresis_rel * abs(t) or 0.01 * max(abs(t), 1.0)
            sign = 1.0 if side == "high" else -1.0
            values.update({t, t + sign * h * 0.5, t - sign * h * 0.5, t - sign * h * 2, t + sign * h * 3})
    return sorted(round(v, 4) for v in values) or [0.0, 1.0]


def steps(seed, refs, pick, devices, n=200):
    """(clock step, [(ref, reading)], ohmic test of a string or None, a device lost or found or None) for
    ``n`` steps."""
    rng = random.Random(seed)
    now = 1_000_000.0
    last = {}
    for _ in range(n):
        now += rng.choice([1, 5, 5, 5, 10, 30, 61, 120, 299, 301, 450])
        batch = []
        for ref in refs:
            if rng.random() < 0.3:
                continue  # not polled this time
            if ref not in last or rng.random() < 0.15:
                last[ref] = rng.choice(pick[ref])  # the value changes now and then; otherwise it repeats
            quality = Quality.GOOD if rng.random() < 0.95 else rng.choice([Quality.STALE, Quality.COMM_FAIL])
            batch.append((ref, Reading(last[ref], quality, now - rng.uniform(0, 4))))
        rng.shuffle(batch)
        ohmic = rng.choice([1, 2]) if rng.random() < 0.03 else None
        comm = None
        if rng.random() < 0.1:  # a device stops answering, answers again, or answers at another address
            device = rng.choice(devices)
            lost = rng.random() < 0.5
            comm = CommEvent(device, lost, now, "test", (), 0 if lost else rng.choice([0, device.address, 77]))
        yield now, batch, ohmic, comm


def summary(events):
    return sorted((e.object, e.point, e.severity, e.active, round(e.ts, 6), round(e.raised, 6), e.value,
                   e.threshold, e.message) for e in events)


@pytest.mark.parametrize("seed", [1, 2])
def test_incremental_evaluation_raises_and_clears_as_the_plain_one(tmp_path, seed):
    plain_gw, plain, plain_rec, plain_clock = manager(tmp_path / "plain", incremental=False)
    inc_gw, inc, inc_rec, inc_clock = manager(tmp_path / "inc", incremental=True)
    refs = sorted({e.ref for e in plain_gw.pointmap.entries
                   if (e.ref.point, e.ref.string) in plain.rules.index or e.ref.point == "string.state"
                   or e.ref.point in plain._references}, key=repr)
    refs = [r for r in refs if r.point not in ("gateway.mqtt_connected",)]
    assert any(r.point == "cell.voltage" for r in refs) and any(r.point == "io.ambient_temperature" for r in refs)
    pick = {ref: candidates(plain, ref) for ref in refs}
    raised = 0
    devices = list(plain_gw.topology.devices)
    for now, batch, ohmic, comm in steps(seed, refs, pick, devices):
        for gw, mgr, clock in ((plain_gw, plain, plain_clock), (inc_gw, inc, inc_clock)):
            clock["now"] = now
            if ohmic is not None:
                mgr.ohmic_test(ohmic, now)
            if comm is not None:
                mgr.on_comm_event(comm)
            gw.store.put_many(batch)
            mgr.drive(now)
        assert summary(inc_rec.events) == summary(plain_rec.events), f"at t={now}"
        assert inc.evaluator.next_deadline() == plain.evaluator.next_deadline()
        raised = sum(e.active for e in plain_rec.events)
        # (alarm numbers of alarms raised at the same moment may come in another order)
        a, b = (sorted(m.active(), key=lambda x: repr(x.key)) for m in (plain, inc))
        assert [(x.key, x.raised_ts, x.value) for x in a] == [(x.key, x.raised_ts, x.value) for x in b]
        # the last value and when it was read, judged again or not
        assert [(x.last_value, x.last_ts) for x in a] == [(x.last_value, x.last_ts) for x in b]
        # the same levels published for the faces
        levels = ("cell.alarm_level", "string.alarm_level", "bank.alarm_level", "bank.alarms_active")
        assert {r: v.value for r, v in plain_gw.store.snapshot().items() if r.point in levels} == \
            {r: v.value for r, v in inc_gw.store.snapshot().items() if r.point in levels}
    assert raised >= 20  # the sequence did exercise the rules
    assert any(not e.active for e in plain_rec.events)
    assert {"device_comm", "device_address"} <= {k.rule for k in plain.evaluator.conditions}  # device alarms too
    # and the incremental one judged fewer readings
    assert inc.evaluator.judged < plain.evaluator.judged * 0.7
    plain.stop()
    inc.stop()
