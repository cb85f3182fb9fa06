"""Auto-sensing: find the sensors on a bus and identify each model from its identity registers."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from .modbus.rtu import FUNCTION_FOR_TABLE, ExceptionResponse, ModbusError, read_request
from .modbus.transport import RtuTransport
from .profiles import DeviceProfile
from .topology import BusConfig


@dataclass(frozen=True, slots=True)
class Found:
    address: int
    profile: DeviceProfile | None  # None: something answered, but no profile matches its identity
    words: tuple[int, ...]

    @property
    def firmware(self) -> str:
        ident = self.profile.identity if self.profile else None
        if ident is None or ident.firmware_offset is None:
            return ""
        fw = self.words[ident.firmware_offset]
        return f"{fw >> 8}.{fw & 0xFF}"

    @property
    def serial(self) -> int | None:
        ident = self.profile.identity if self.profile else None
        if ident is None or ident.serial_offset is None:
            return None
        return (self.words[ident.serial_offset] << 16) | self.words[ident.serial_offset + 1]


def parse_ids(text: str) -> list[int]:
    """``1-10,20,30-32`` -> [1..10, 20, 30, 31, 32]; every id must be 1..247."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad id range {part!r}: expected N or N-M") from None
        if not (1 <= a <= b <= 247):
            raise ValueError(f"id range {part!r} must lie within 1-247")
        ids.extend(range(a, b + 1))
    if not ids:
        raise ValueError("no ids to scan")
    return sorted(set(ids))


def identity_locations(profiles: dict[str, DeviceProfile]) -> list[tuple[str, int, int]]:
    locs = {p.identity.location for p in profiles.values() if p.identity is not None}
    return sorted(locs)


async def scan_bus(transport: RtuTransport, profiles: dict[str, DeviceProfile], ids: list[int],
                   progress: Callable[[int, int, int], None] | None = None) -> list[Found]:
    """Ask every id for every known identity block; the first block that matches a profile names it."""
    locations = identity_locations(profiles)
    found: list[Found] = []
    for n, unit in enumerate(ids, 1):
        answered: Found | None = None
        for table, address, count in locations:
            try:
                words = await transport.transact(read_request(unit, FUNCTION_FOR_TABLE[table], address, count))
            except ExceptionResponse:
                answered = answered or Found(unit, None, ())
                continue
            except ModbusError:
                continue
            match = next((p for p in profiles.values() if p.identity is not None
                          and p.identity.location == (table, address, count) and p.identity.matches(words)), None)
            if match is not None:
                answered = Found(unit, match, tuple(words))
                break
            answered = answered or Found(unit, None, tuple(words))
        if answered is not None:
            found.append(answered)
        if progress is not None:
            progress(n, len(ids), len(found))
        await asyncio.sleep(0)
    return found


def config_fragment(found: list[Found], bus: BusConfig) -> str:
    """A YAML fragment to paste into a config: the bus, then its devices (cell-sensor runs compressed)."""
    lines = [f"# {len(found)} device(s) found on {bus.port} at {bus.baud} baud",
             "buses:",
             f"  - {{name: {bus.name}, port: {bus.port}, baud: {bus.baud}, parity: {bus.parity}}}",
             "# paste string and cell devices under strings[N].devices, bank devices under bank.devices"]
    runs: list[list[Found]] = []
    for f in found:
        prev = runs[-1][-1] if runs else None
        if (prev is not None and f.profile is not None and prev.profile is f.profile and f.profile.scope == "cell"
                and f.address == prev.address + 1):
            runs[-1].append(f)
        else:
            runs.append([f])
    lines.append("devices:")
    for run in runs:
        first = run[0]
        if first.profile is None:
            lines.append(f"  # address {first.address}: answered, but matches no known profile")
            continue
        prof = first.profile
        extra = f", count: {len(run)}" if prof.scope == "cell" else ""
        note = f"{prof.vendor} {prof.model}, {prof.scope}"
        if first.firmware:
            note += f", firmware {first.firmware}"
        if len(run) == 1 and first.serial is not None:
            note += f", serial {first.serial}"
        lines.append(f"  - {{profile: {prof.name}, bus: {bus.name}, address: {first.address}{extra}}}  # {note}")
    return "\n".join(lines) + "\n"
