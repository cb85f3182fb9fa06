"""The point model: frozen specs and readings, the live store readable from other threads."""
import dataclasses
import threading

import pytest

from gateway.points import PointRef, PointSpec, PointStore, Quality, Reading


def test_specs_refs_and_readings_are_frozen_named_records():
    spec = PointSpec(id="cell.ohmic", scope="cell", unit="ohm", description="Ohmic value", slot=2, dtype="uint32",
                     scale=1e-6, valid_range=(0.0001, 0.05), poll="slow")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.unit = "mohm"
    with pytest.raises(AttributeError):  # a named tuple: built in C, hundreds a second
        Reading(1.0, Quality.GOOD, 0.0).value = 2.0
    assert spec.width == 2 and spec.name == "ohmic" and spec.poll == "slow" and spec.valid_range == (0.0001, 0.05)
    assert PointSpec(id="io.di", scope="bank", unit="", description="", slot=4).name == "io.di"
    ref = PointRef("cell.voltage", 2, 37)
    assert ref.keys() == {"string": 2, "cell": 37} and str(ref) == "cell.voltage string=2 cell=37"
    assert PointRef("io.di", channel=3).keys() == {"channel": 3}
    assert ref == PointRef("cell.voltage", 2, 37) and len({ref, PointRef("cell.voltage", 2, 37)}) == 1


def test_quality_names_are_what_the_faces_print():
    assert [q.value for q in Quality] == ["GOOD", "STALE", "COMM_FAIL", "OUT_OF_RANGE"]
    assert Quality.GOOD.usable and not any(q.usable for q in Quality if q is not Quality.GOOD)


def test_store_get_value_snapshot_and_generation():
    store = PointStore()
    ref = PointRef("cell.voltage", 1, 1)
    assert store.get(ref) is None and store.value(ref) is None and len(store) == 0
    gen = store.generation
    store.put(ref, 13.5, ts=100.0)
    assert store.get(ref) == Reading(13.5, Quality.GOOD, 100.0)
    assert store.value(ref) == 13.5 and store.generation == gen + 1
    store.put(ref, 99.0, Quality.OUT_OF_RANGE)
    assert store.value(ref) is None, "value() is None unless the reading is GOOD"
    assert store.get(ref).value == 99.0
    snap = store.snapshot()
    store.put(ref, 1.0)
    assert snap[ref].value == 99.0, "a snapshot does not change under the reader"
    assert dict(iter(store)) == store.snapshot()


def test_mark_keeps_the_last_value_and_reports_only_changes():
    store = PointStore()
    a, b, never = PointRef("cell.voltage", 1, 1), PointRef("cell.voltage", 1, 2), PointRef("cell.voltage", 1, 3)
    store.put_many([(a, Reading(13.4, Quality.GOOD, 5.0)), (b, Reading(13.6, Quality.GOOD, 5.0))])
    changed = store.mark([a, b, never], Quality.STALE)
    assert changed == [a, b]
    assert store.get(a) == Reading(13.4, Quality.STALE, 5.0)
    assert store.get(never) is None, "marking does not invent readings"
    gen = store.generation
    assert store.mark([a, b], Quality.STALE) == [] and store.generation == gen


def test_listeners_get_each_batch_and_a_failing_one_does_not_stop_the_others(caplog):
    store = PointStore()
    got = []

    def broken(batch):
        raise RuntimeError("consumer bug")

    store.subscribe(broken)
    store.subscribe(got.append)
    ref = PointRef("string.current", 1)
    store.put_many([(ref, Reading(-20.0, Quality.GOOD, 1.0))])
    assert got == [[(ref, Reading(-20.0, Quality.GOOD, 1.0))]]
    assert "consumer bug" in caplog.text
    store.unsubscribe(got.append)
    store.put(ref, 1.0)
    assert len(got) == 1
    store.put_many([])
    assert len(got) == 1, "an empty batch is not a batch"


def test_transforms_replace_their_family_s_readings_in_place_among_the_others():
    store = PointStore()
    got = []
    store.subscribe(got.append)
    # the corrected current stored instead of the measured one, the measured one beside it (as the string
    # supervision does); a transform may also drop a reading
    store.add_transform("string.current", lambda ref, r, fresh: [(ref, Reading(r.value + 1.0, r.quality, r.ts)),
                                                                 (PointRef("string.current_measured", ref.string), r)])
    store.add_transform("string.voltage", lambda ref, r, fresh: [])
    cells = [(PointRef("cell.voltage", 1, c), Reading(2.2, Quality.GOOD, 1.0)) for c in range(1, 5)]
    current = (PointRef("string.current", 1), Reading(-20.0, Quality.GOOD, 1.0))
    voltage = (PointRef("string.voltage", 1), Reading(53.0, Quality.GOOD, 1.0))
    store.put_many([current, *cells[:2], voltage, *cells[2:], current])
    corrected = (PointRef("string.current", 1), Reading(-19.0, Quality.GOOD, 1.0))
    measured = (PointRef("string.current_measured", 1), current[1])
    assert got == [[corrected, measured, *cells, corrected, measured]]
    store.put_many(cells)  # no reading of a transformed family: the batch as it is
    assert got[-1] == cells
    assert store.get(PointRef("string.voltage", 1)) is None


def test_readers_on_other_threads_see_whole_batches():
    store = PointStore()
    refs = [PointRef("cell.voltage", 1, c) for c in range(1, 121)]
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            snap = store.snapshot()
            values = {r.value for r in snap.values()}
            if len(values) > 1:  # a batch is applied at once: never half old, half new
                errors.append(values)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for gen in range(300):
            store.put_many([(ref, Reading(float(gen), Quality.GOOD, 0.0)) for ref in refs])
    finally:
        stop.set()
        t.join()
    assert not errors
    assert store.generation == 300


def test_the_change_feed_gives_what_was_written_since_a_generation():
    store = PointStore()
    a, b, c = PointRef("cell.voltage", 1, 1), PointRef("cell.voltage", 1, 2), PointRef("string.current", 1)
    gen, changed = store.changes_since(-1)
    assert (gen, changed) == (0, None)  # never seen: read everything
    store.put_many([(a, Reading(2.2, Quality.GOOD, 1.0)), (b, Reading(2.3, Quality.GOOD, 1.0))])
    seen = store.generation
    store.put(c, -1.5)
    store.put(a, 2.25)
    gen, changed = store.changes_since(seen)
    assert gen == store.generation and changed == {a, c}
    assert store.changes_since(gen) == (gen, set())  # nothing since


def test_the_change_feed_says_so_when_a_reader_fell_too_far_behind():
    store = PointStore()
    store.MIN_FEED = 10
    refs = [PointRef("cell.voltage", 1, c) for c in range(1, 4)]
    store.put_many([(r, Reading(2.2, Quality.GOOD, 0.0)) for r in refs])
    early = store.generation
    for k in range(20):  # 20 single-point batches: more than the feed keeps for a 3-point store
        store.put(refs[k % 3], 2.2 + k / 1000)
    gen, changed = store.changes_since(early)
    assert changed is None and gen == store.generation  # the reader must read everything again
    gen2, changed = store.changes_since(gen - 2)
    assert changed == {refs[18 % 3], refs[19 % 3]}


def test_a_ref_hashes_like_its_fields_and_survives_pickling_and_copies():
    import copy
    import pickle

    ref = PointRef("cell.voltage", 2, 37)
    assert hash(ref) == hash(("cell.voltage", 2, 37, None))  # computed once, the same as the dataclass's own
    assert ref == PointRef("cell.voltage", 2, 37) and ref != PointRef("cell.voltage", 2, 38)
    assert {ref: 1}[PointRef("cell.voltage", 2, 37)] == 1
    assert repr(ref) == "PointRef(point='cell.voltage', string=2, cell=37, channel=None)"
    for twin in (pickle.loads(pickle.dumps(ref)), copy.copy(ref), copy.deepcopy(ref)):
        assert twin == ref and hash(twin) == hash(ref)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.cell = 3  # type: ignore[misc]
