"""The engine's specialised register decoders against the general ``codecs.decode`` they stand in for."""
from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st

from gateway.modbus import codecs
from gateway.profiles import RegisterSpec

DTYPES = ["uint16", "int16", "uint32", "int32", "float32"]


@st.composite
def register_specs(draw) -> RegisterSpec:
    dtype = draw(st.sampled_from(DTYPES))
    sixteen = dtype.endswith("16")
    return RegisterSpec(
        point="cell.voltage", table="input", address=0, dtype=dtype,
        scale=draw(st.sampled_from([1.0, 0.001, 0.01, 0.1, 1e-6, 2.5, -0.1])),
        offset=draw(st.sampled_from([0.0, -40.0, 273.15, 0.5])),
        word_order=draw(st.sampled_from(["big", "little"])),
        bit=draw(st.none() | st.integers(0, 15)) if sixteen else None,
        not_available=draw(st.none() | st.sampled_from([0x8000, 0xFFFF, 0, 0x7FFF, 0xFFFFFFFF, 0x80000000])),
    )


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=600, deadline=None)
@given(reg=register_specs(), words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=8), data=st.data())
def test_a_specialised_decoder_gives_what_the_general_decode_gives(reg, words, data):
    at = data.draw(st.integers(0, len(words) - reg.count))
    if data.draw(st.booleans()) and reg.not_available is not None and reg.not_available <= 0xFFFF:
        words[at] = reg.not_available  # the device's "not available" code, often
    expected = codecs.decode(words[at: at + reg.count], reg)
    got = codecs.decoder(reg)(words, at)
    assert same(got, expected), (reg, words, at, got, expected)
    assert type(got) is type(expected)


def test_registers_that_share_a_spec_share_one_decoder():
    reg = RegisterSpec(point="cell.voltage", table="input", address=0, dtype="uint16", scale=0.001)
    twin = RegisterSpec(point="cell.voltage", table="input", address=0, dtype="uint16", scale=0.001)
    assert codecs.decoder(reg) is codecs.decoder(twin)
    assert codecs.decoder(reg)([0, 2125], 1) == 2.125


def test_the_engines_block_decoding_is_the_plain_loops_for_every_shipped_profile():
    """Engine._decode_block's fast path (no plugin decoder: a tuple of checks per block) against its plain loop
    (taken when a decoder hook is set; this one declines every register), on random register values with the
    devices' "not available" codes and out-of-range values among them."""
    import random

    from gateway.dump import decode_registers
    from tests.devicedump import all_profiles

    rng = random.Random(18)
    profiles = all_profiles()
    assert len(profiles) >= 8
    for profile in profiles.values():
        for _ in range(40):
            registers: dict[str, dict[str, int]] = {}
            for reg in profile.registers:
                table = registers.setdefault(reg.table, {})
                for i in range(reg.count):
                    table[str(reg.address + i)] = rng.choice(
                        [rng.randrange(0x10000), reg.not_available or 0, 0, 0xFFFF, 0x8000, 1000])
            fast = decode_registers(profile, registers, cells=3)
            plain = decode_registers(profile, registers, cells=3, decode_hook=lambda profile, register, words: None)
            assert fast.keys() == plain.keys() and fast
            for key, reading in fast.items():
                other = plain[key]
                assert same(reading.value, other.value) and reading.quality is other.quality, (profile.name, key)
                assert type(reading) is type(other) and reading.ts == other.ts
