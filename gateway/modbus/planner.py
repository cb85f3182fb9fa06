"""Block-read planner: merge a device's registers into as few reads as the protocol allows."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .codecs import Decoder, decoder
from .rtu import FUNCTION_FOR_TABLE, MAX_READ

if TYPE_CHECKING:
    from ..points import PointRef
    from ..profiles import RegisterSpec

    PlanEntry = tuple[str, int, int, str, RegisterSpec, PointRef]  # (table, address, count, poll, reg, ref)


@dataclass(frozen=True, slots=True)
class Item:
    """One value inside a block: where it starts in the block, how to decode it, what point it fills."""

    offset: int
    reg: RegisterSpec
    ref: PointRef
    decode: Decoder  # (the block's words, offset) -> value: codecs.decoder(reg)


OPEN_RANGE = (-math.inf, math.inf)


@dataclass(slots=True)
class Block:
    table: str
    start: int
    count: int
    poll: str
    items: list[Item] = field(default_factory=list)
    # (ref, decode, offset, low, high) per item, the valid range open when none: made by checks() at the first
    # decode (the engine decodes a block's items every cycle; one tuple each beats five attribute reads)
    _checks: tuple[tuple[PointRef, Decoder, int, float, float], ...] | None = None

    @property
    def function(self) -> int:
        return FUNCTION_FOR_TABLE[self.table]

    def checks(self) -> tuple[tuple[PointRef, Decoder, int, float, float], ...]:
        if self._checks is None:
            self._checks = tuple((item.ref, item.decode, item.offset, *(item.reg.valid_range or OPEN_RANGE))
                                 for item in self.items)
        return self._checks


def plan(entries: Iterable[PlanEntry], max_block: int = MAX_READ, max_gap: int = 4,
         merge_poll: bool = False) -> list[Block]:
    """``entries``: (table, address, count, poll, reg, ref).  Contiguous or nearly contiguous registers of the
    same table and poll class become one read of at most ``max_block`` registers; a gap of up to ``max_gap``
    unused registers is read through rather than costing another request.  A value never straddles two
    blocks.  ``merge_poll``: plan for a cycle that reads both poll classes, so fast and slow registers share
    reads (the block's ``poll`` is then "fast" when it holds any fast register)."""
    max_block = min(max_block, MAX_READ)
    groups: dict[tuple[str, str], list[PlanEntry]] = {}
    for e in entries:
        groups.setdefault((e[0], "all" if merge_poll else e[3]), []).append(e)
    blocks: list[Block] = []
    for (table, poll), items in sorted(groups.items()):
        items.sort(key=lambda e: (e[1], e[2]))
        current: Block | None = None
        for _, address, count, _, reg, ref in items:
            end = address + count
            if current is not None and address <= current.start + current.count + max_gap \
                    and max(end, current.start + current.count) - current.start <= max_block:
                current.count = max(current.count, end - current.start)
            else:
                current = Block(table, address, count, poll)
                blocks.append(current)
            current.items.append(Item(address - current.start, reg, ref, decoder(reg)))
    if merge_poll:
        for b in blocks:
            b.poll = "fast" if any(i.reg.poll == "fast" for i in b.items) else "slow"
    return blocks
