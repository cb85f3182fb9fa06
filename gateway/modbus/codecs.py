"""Register words <-> engineering values, as a profile's register spec describes them."""
from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..profiles import RegisterSpec

_NOT_AVAILABLE = {"int16": 0x8000, "uint16": 0xFFFF, "int32": 0x80000000, "uint32": 0xFFFFFFFF}


def raw_from_words(words: Sequence[int], dtype: str, word_order: str) -> int | float:
    """The raw integer (or float for float32) from 1 or 2 registers."""
    if dtype == "uint16":
        return words[0]
    if dtype == "int16":
        w = words[0]
        return w - 0x10000 if w & 0x8000 else w
    hi, lo = (words[0], words[1]) if word_order == "big" else (words[1], words[0])
    u = (hi << 16) | lo
    if dtype == "uint32":
        return u
    if dtype == "int32":
        return u - 0x100000000 if u & 0x80000000 else u
    if dtype == "float32":
        value: float = struct.unpack(">f", struct.pack(">I", u))[0]
        return value
    raise ValueError(f"unknown register type {dtype}")


def words_from_raw(raw: int | float, dtype: str, word_order: str = "big") -> list[int]:
    if dtype in ("uint16", "int16"):
        return [int(raw) & 0xFFFF]
    u: int = struct.unpack(">I", struct.pack(">f", float(raw)))[0] if dtype == "float32" else int(raw) & 0xFFFFFFFF
    hi, lo = u >> 16, u & 0xFFFF
    return [hi, lo] if word_order == "big" else [lo, hi]


def decode(words: Sequence[int], reg: RegisterSpec) -> float | None:
    """Engineering value of a register spec, or None when the device says 'not available'."""
    raw = raw_from_words(words, reg.dtype, reg.word_order)
    if reg.dtype == "float32":
        if math.isnan(raw):
            return None
    elif reg.not_available is not None and raw_unsigned(words, reg) == reg.not_available:
        return None
    if reg.bit is not None:
        return float((int(raw) >> reg.bit) & 1)
    return raw * reg.scale + reg.offset


Decoder = Callable[[Sequence[int], int], "float | None"]


@functools.lru_cache(maxsize=4096)
def decoder(reg: RegisterSpec) -> Decoder:
    """``decode`` for one register spec, specialised once: ``(words, offset) -> value`` of the register at
    ``offset`` in a block's words.  The engine decodes every value it reads, hundreds a second; the common 16-bit
    registers skip the general path's type dispatch and slicing (the same arithmetic, so the same floats: see
    tests/test_codecs.py).  Specs are frozen, so registers that share a spec (every cell sensor's) share one."""
    scale, offset, na = reg.scale, reg.offset, reg.not_available
    if reg.bit is None and reg.dtype == "uint16":
        if na is None:
            return lambda words, at: words[at] * scale + offset
        return lambda words, at: None if words[at] == na else words[at] * scale + offset
    if reg.bit is not None and reg.dtype == "uint16":  # a flag (a cell sensor's balancing bit)
        bit = reg.bit
        if na is None:
            return lambda words, at: float((words[at] >> bit) & 1)
        return lambda words, at: None if words[at] == na else float((words[at] >> bit) & 1)
    if reg.bit is None and reg.dtype == "int16":
        def int16(words: Sequence[int], at: int) -> float | None:
            w = words[at]
            if w == na:
                return None
            return (w - 0x10000 if w & 0x8000 else w) * scale + offset
        return int16
    count = reg.count
    return lambda words, at: decode(words[at: at + count], reg)


def raw_unsigned(words: Sequence[int], reg: RegisterSpec) -> int:
    if reg.dtype in ("uint16", "int16"):
        return words[0]
    hi, lo = (words[0], words[1]) if reg.word_order == "big" else (words[1], words[0])
    return (hi << 16) | lo


def encode(value: float, reg: RegisterSpec) -> list[int]:
    """Registers a device would send for ``value`` (the simulator's side of ``decode``)."""
    if reg.bit is not None:
        return [(1 << reg.bit) if value else 0]
    raw = (value - reg.offset) / reg.scale
    if reg.dtype != "float32":
        raw = int(round(raw))
        lo, hi = limits(reg.dtype)
        raw = max(lo, min(hi, raw))
    return words_from_raw(raw, reg.dtype, reg.word_order)


def limits(dtype: str) -> tuple[int, int]:
    return {"uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF), "uint32": (0, 0xFFFFFFFF),
            "int32": (-0x80000000, 0x7FFFFFFF)}[dtype]


def northbound_words(value: float | None, dtype: str, scale: float) -> list[int]:
    """Point-map encoding for northbound registers: scaled integer, or the not-available code.

    A value that does not fit the type is clamped to the largest valid value (the not-available code is
    never produced for a real reading).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        na = _NOT_AVAILABLE[dtype]
        return [na] if dtype in ("int16", "uint16") else [na >> 16, na & 0xFFFF]
    raw = int(round(value / scale))
    lo, hi = limits(dtype)
    # short of the not-available code: the top of an unsigned type, the bottom of a signed one
    raw = max(lo, min(hi - 1, raw)) if dtype.startswith("u") else max(lo + 1, min(hi, raw))
    return words_from_raw(raw, dtype, "big")
