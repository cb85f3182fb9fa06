"""The MQTT payloads kept up to date from the store's change feed (``FeedPayloads``) against the ones composed
from scratch (``PayloadBuilder.messages``): after every random batch of writes (new values, NaN and infinite
ones, readings that turn bad and good again, new timestamps, points never written before), both give the same
topics in the same order with byte-identical payloads, in both layouts, also when the feed no longer reaches
back and everything is read again."""
from __future__ import annotations

import math
import random

import pytest

from gateway.app import Gateway
from gateway.outputs.mqtt.face import FeedPayloads, PayloadBuilder
from gateway.outputs.mqtt.queue import encode
from gateway.points import Quality, Reading
from tests.support import small_bank, write_config


def gateway(tmp_path, layout):
    over = {"site": {"id": "demo", "name": "Démo room"},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": 1883, "layout": layout}}
    path = write_config(tmp_path, base=small_bank(strings=2, cells=5), overrides=over)
    return Gateway(path, simulator=False, port_overrides={"bus1": "(none)", "bus2": "(none)"}, entry_points=False)


def value(rng, ref):
    roll = rng.random()
    if roll < 0.03:
        return rng.choice([math.nan, math.inf, -math.inf, None])
    if ref.point.endswith(("state", "status", "di", "do", "diagnosis", "balancing")):
        return float(rng.randint(0, 3))
    # 13 and 13.0, 0.0 and -0.0 (and -0.0001, -0.0 once rounded) compare equal but are not written alike
    return rng.choice([13.0, 13, 2.25, -12.30000001, 0.0, -0.0, -0.0001, rng.uniform(-50, 50), 1e6 * rng.random()])


def plain(builder, store, now):
    return [(topic, encode(7, doc), is_values) for topic, doc, is_values in builder.messages(store.snapshot(), now)]


def fed(payloads, now):
    return [(topic, encode(7, doc), is_values) for topic, doc, is_values in payloads.messages(now)]


@pytest.mark.parametrize("layout", ["string", "cell"])
def test_payloads_from_the_change_feed_are_the_ones_composed_from_scratch(tmp_path, layout):
    gw = gateway(tmp_path, layout)
    store = gw.store
    builder = PayloadBuilder(gw, "bmsgw", layout)
    payloads = FeedPayloads(builder, store)
    refs = [e.ref for e in gw.pointmap.entries]
    rng = random.Random(layout)
    now = 1_700_000_000.0
    assert fed(payloads, now) == plain(builder, store, now) == []  # nothing read yet: nothing to say
    written = set()
    for step in range(120):
        now += rng.choice([0.25, 1, 5])
        if step == 60:  # the feed forgets what came before: the builder reads everything again
            store.MIN_FEED, store.FEED_PER_POINT = 1, 0
        share = rng.choice([0.01, 0.05, 0.3]) if step else 0.02  # the first cycle sees a few points only
        batch = [(ref, Reading(value(rng, ref), Quality.GOOD if rng.random() < 0.9 else
                               rng.choice([Quality.STALE, Quality.COMM_FAIL, Quality.OUT_OF_RANGE]),
                               now - rng.choice([0, 0.5, 3.3333333]))) for ref in refs if rng.random() < share]
        for i in range(0, len(batch), 7):  # several batches (generations) per cycle
            store.put_many(batch[i:i + 7])
        written.update(ref for ref, _ in batch)
        if written and rng.random() < 0.2:  # the engine marks readings stale (only their quality changes)
            store.mark(rng.sample(sorted(written, key=repr), min(5, len(written))), Quality.STALE)
        if rng.random() < 0.1:
            continue  # a cycle missed: the next one catches up with two cycles' changes
        expected = plain(builder, store, now)
        assert fed(payloads, now) == expected, f"step {step}"
    assert len(expected) == (2 + 2 + 2 if layout == "string" else 2 + 2 + 10)  # every topic had something to say
    assert b'"quality"' in b"".join(p for _, p, _ in expected)


def test_a_cycle_encodes_only_what_changed(tmp_path):
    """After a change to one battery's voltage, only its string's cells document is composed again, and of it
    only the voltage column is encoded again."""
    gw = gateway(tmp_path, "string")
    store = gw.store
    payloads = FeedPayloads(PayloadBuilder(gw, "bmsgw", "string"), store)
    now = 1_700_000_000.0
    store.put_many([(e.ref, Reading(1.0, Quality.GOOD, now)) for e in gw.pointmap.entries])
    first = payloads.messages(now)
    calls = []
    for key, compose in list(payloads._compose.items()):
        payloads._compose[key] = lambda key=key, compose=compose: calls.append(key) or compose()
    from gateway.points import PointRef

    store.put(PointRef("cell.voltage", 2, 3), 2.5, ts=now + 5)
    store.put(PointRef("cell.temperature", 2, 3), 1.0, ts=now + 5)  # read again: only its time is new
    columns = {col.name: col for col in payloads._columns if col.key == ("cells", 2)}
    texts = {name: col.text for name, col in columns.items()}
    second = payloads.messages(now + 5)
    assert calls == [("cells", 2)]
    assert [name for name, col in columns.items() if col.text != texts[name]] == ["voltage"]
    def body(doc):  # without the head (site and the time the message is composed)
        return doc.text.split(",", 2)[2]

    changed = [topic for (topic, a, _), (_, b, _) in zip(first, second, strict=True) if body(a) != body(b)]
    assert changed == ["bmsgw/demo/string/2/cells"]


def test_whole_columns_written_every_cycle_with_mostly_the_same_values(tmp_path):
    """The poller's pattern: every battery's column written at once each cycle, mostly with the values written
    before (then a column is not rounded again), now and then one changed: to another value, to 0.0 or -0.0
    (equal, not written alike), to an int, to NaN, or to a bad quality; the payloads stay the plain ones."""
    gw = gateway(tmp_path, "string")
    store = gw.store
    builder = PayloadBuilder(gw, "bmsgw", "string")
    payloads = FeedPayloads(builder, store)
    refs = [e.ref for e in gw.pointmap.entries if e.spec.scope == "cell"]
    rng = random.Random(18)
    values = {ref: rng.choice([2.25, 2.251, 25.0, 0.0]) for ref in refs}
    now = 1_700_000_000.0
    for step in range(150):
        now += 5
        qualities = {}
        for ref in rng.sample(refs, rng.choice([0, 1, 3])):
            values[ref] = rng.choice([2.252, 0.0, -0.0, 13, 13.0, math.nan, 2.2500001, values[ref]])
        for ref in rng.sample(refs, 1 if step % 7 == 3 else 0):
            qualities[ref] = Quality.STALE
        store.put_many([(ref, Reading(values[ref], qualities.get(ref, Quality.GOOD), now - rng.random()))
                        for ref in refs])
        assert fed(payloads, now) == plain(builder, store, now), f"step {step}"
    assert any(col.raw for col in payloads._columns)  # the columns of GOOD floats took the path of their bits


def test_whole_columns_of_good_floats_with_few_or_most_values_changed(tmp_path):
    """Whole columns of GOOD floats written each cycle, none, a few or most of their values changed: on the
    resolution's grid or off it (a register times its scale; stretches of columns mostly off it, as computed
    values such as a deviation from an average are), negative, zeros of both signs, values JSON writes with an
    exponent; now and then a bad reading.  The payloads stay the plain ones."""
    over = {"site": {"id": "demo", "name": "demo"},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": 1883, "layout": "string"}}
    path = write_config(tmp_path, base=small_bank(strings=1, cells=40), overrides=over)
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "(none)"}, entry_points=False)
    store = gw.store
    builder = PayloadBuilder(gw, "bmsgw", "string")
    payloads = FeedPayloads(builder, store)
    refs = [e.ref for e in gw.pointmap.entries if e.spec.scope == "cell"]
    rng = random.Random(6)

    def pick(computed=False):
        if computed:  # a value computed by the gateway (a deviation from an average): off the grid, mostly
            return rng.choice([rng.uniform(-0.1, 0.1), 2.25 - rng.uniform(1.8, 2.4), 0.0, -0.0, 0.125])
        return rng.choice([round(rng.uniform(1.8, 2.4), 3), rng.randint(1800, 2400) * 0.001, rng.uniform(1.8, 2.4),
                           -rng.randint(0, 99) * 0.001, rng.uniform(-0.1, 0.1), 0.0, -0.0, 1e-05, -2.5e-07,
                           1.2345678e17, 25.5, 123.25])

    values = {ref: pick() for ref in refs}
    now = 1_700_000_000.0
    for step in range(120):
        now += 5
        share = rng.choice([0.0, 0.05, 0.2, 0.6, 1.0])
        computed = step // 15 % 2 == 1  # stretches of columns mostly off the grid, and back
        for ref in refs:
            if rng.random() < share:
                values[ref] = pick(computed)
        bad = rng.choice(refs) if step % 11 == 5 else None
        store.put_many([(ref, Reading(values[ref], Quality.STALE if ref == bad else Quality.GOOD,
                                      now - rng.random())) for ref in refs])
        assert fed(payloads, now) == plain(builder, store, now), f"step {step}"
    assert any(col.raw for col in payloads._columns)
