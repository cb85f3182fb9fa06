"""``bmsgw dump``: a device's raw registers, read through the gateway's own RTU transport, to write or check a
profile (the vendors publish no register map: a dump and the vendor's protocol sheet are what a profile is
checked against).

A range is read in requests of at most 125 registers (the Modbus limit).  A device that refuses a request
(exception 02, illegal data address: part of the range is not mapped) has that request split in halves until
every register that can be read is read and every one it refuses is known, so ``0-124`` works on a device that
maps only five registers.  ``--json`` writes the registers in the format of the profiles' golden tests
(``tests/devicedump.py``): with ``--profile``, the readings they decode to are filled in as the expected ones.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GatewayError
from .modbus.rtu import (
    FUNCTION_FOR_TABLE,
    MAX_READ,
    ExceptionResponse,
    FrameError,
    ModbusError,
    NoReply,
    PortUnavailable,
    read_request,
)
from .profiles import DeviceProfile

EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "slave device failure", 5: "acknowledge", 6: "slave device busy",
                   0x0A: "gateway path unavailable", 0x0B: "gateway target device failed to respond"}
# the codes that say "not this part of the range": the request is split to find what can be read
REFUSED_RANGE = (2, 3)
# a refused request of at most this many registers is asked register by register (a run of refused registers
# costs one request each, not the 2n-1 of halving down to them)
SINGLES_BELOW = 16


def exception_text(code: int) -> str:
    return f"exception {code:02X} ({EXCEPTION_NAMES.get(code, 'unknown code')})"


class DumpError(GatewayError):
    """The device did not give the registers; ``result`` holds what was read before (may be empty)."""

    def __init__(self, message: str, result: DumpResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class DumpResult:
    unit: int
    table: str
    first: int
    last: int
    words: dict[int, int] = field(default_factory=dict)  # register address -> value
    refused: dict[int, int] = field(default_factory=dict)  # register address -> exception code
    requests: int = 0

    @property
    def total(self) -> int:
        return self.last - self.first + 1


def parse_range(text: str) -> tuple[int, int]:
    """``0-124`` -> (0, 124); ``7`` -> (7, 7); addresses 0..65535."""
    lo, _, hi = text.strip().partition("-")
    try:
        first, last = int(lo, 0), int(hi or lo, 0)
    except ValueError:
        raise GatewayError(f"bad --range {text!r}: expected FIRST-LAST, e.g. 0-124") from None
    if not 0 <= first <= last <= 0xFFFF:
        raise GatewayError(f"bad --range {text!r}: FIRST-LAST with 0 <= FIRST <= LAST <= 65535")
    return first, last


async def dump_registers(transport, unit: int, table: str, first: int, last: int, retries: int = 2,
                         progress: Callable[[DumpResult], None] | None = None) -> DumpResult:
    """Read registers ``first``..``last`` of ``table`` from ``unit``.  Raises DumpError when the device does
    not answer, refuses the table, or fails (its ``result`` holds what was read until then)."""
    result = DumpResult(unit, table, first, last)
    function = FUNCTION_FOR_TABLE[table]

    async def read(address: int, count: int) -> None:
        for attempt in range(retries + 1):
            result.requests += 1
            try:
                words = await transport.transact(read_request(unit, function, address, count))
            except ExceptionResponse as exc:
                if exc.code in REFUSED_RANGE:
                    if count == 1:
                        result.refused[address] = exc.code
                        break
                    if count <= SINGLES_BELOW:  # halving on would cost up to 2n-1 requests: n instead
                        for a in range(address, address + count):
                            await read(a, 1)
                        return
                    half = count // 2
                    await read(address, half)
                    await read(address + half, count - half)
                    return
                if exc.code == 1:
                    other = "holding" if table == "input" else "input"
                    raise DumpError(f"address {unit} has no {table} registers: it answers function "
                                    f"{function:02d} with {exception_text(1)}; try --table {other}",
                                    result) from None
                if exc.code in (5, 6) and attempt < retries:
                    continue  # busy: ask again
                raise DumpError(f"address {unit} answered the read of {table} registers {address}-"
                                f"{address + count - 1} with {exception_text(exc.code)}", result) from None
            except PortUnavailable as exc:
                raise DumpError(f"{transport.port} failed ({exc}): {len(result.words)} registers read before",
                                result) from None
            except (NoReply, FrameError) as exc:
                if attempt < retries:
                    continue
                if not result.words and not result.refused:
                    why = ("no answer" if isinstance(exc, NoReply) else f"no valid answer ({exc})")
                    raise DumpError(f"{why} from address {unit} on {transport.port} at {transport.bus.baud} baud "
                                    f"8{transport.bus.parity}{transport.bus.stopbits} after {retries + 1} tries: "
                                    f"check the address, the baud rate and parity, the wiring (A and B swapped?) "
                                    f"and the device's power", result) from None
                raise DumpError(f"address {unit} stopped answering at {table} registers {address}-"
                                f"{address + count - 1} ({exc}); {len(result.words)} registers read before",
                                result) from None
            except ModbusError as exc:
                raise DumpError(f"address {unit}: {exc}", result) from None
            else:
                for i, w in enumerate(words):
                    result.words[address + i] = w
                break
        if progress is not None:
            progress(result)

    address = first
    while address <= last:
        count = min(MAX_READ, last - address + 1)
        await read(address, count)
        address += count
    if not result.words:
        codes = sorted(set(result.refused.values()))
        raise DumpError(f"address {unit} answers, but refused every {table} register in {first}-{last} "
                        f"({', '.join(exception_text(c) for c in codes)}): its registers lie elsewhere; try "
                        f"--table {'holding' if table == 'input' else 'input'} or another --range", result)
    return result


# -- printing --------------------------------------------------------------------------------------------------
def render_text(result: DumpResult) -> str:
    """One line per register read (address in decimal and hex, value in hex, unsigned and signed decimal),
    one line per run of refused registers."""
    lines = [f"# {result.table} registers {result.first}-{result.last} of address {result.unit}: "
             f"{len(result.words)} read, {len(result.refused)} refused (requests: {result.requests})",
             f"{'register':>8} {'hex':>6}  {'value':>6} {'unsigned':>8} {'signed':>7}"]
    address = result.first
    while address <= result.last:
        if address in result.words:
            w = result.words[address]
            signed = w - 0x10000 if w & 0x8000 else w
            lines.append(f"{address:>8} 0x{address:04X}  0x{w:04X} {w:>8} {signed:>7}")
            address += 1
            continue
        end = address
        code = result.refused.get(address)
        while end + 1 <= result.last and end + 1 not in result.words and result.refused.get(end + 1) == code:
            end += 1
        span = f"{address}" if end == address else f"{address}-{end}"
        what = exception_text(code) if code is not None else "not read"
        lines.append(f"{span:>8} 0x{address:04X}  refused: {what}" if code is not None else f"{span:>8}  {what}")
        address = end + 1
    return "\n".join(lines) + "\n"


# -- decoding and the golden-test file ---------------------------------------------------------------------------
def decode_registers(profile: DeviceProfile, registers: dict[str, dict[str, int]], cells: int = 1,
                     decode_hook: Callable | None = None) -> dict[tuple[str, int | None, int | None], Any]:
    """Decode ``registers`` ({table: {"address": value}}, a missing register reads as 0) as the engine would,
    with its block planner and decoder: {(point, cell, channel): Reading}; ``cell`` only for a string sensor
    (a concentrator serves many)."""
    from .config import core_defaults
    from .engine import Engine
    from .points import PointStore
    from .topology import BusConfig, DeviceConfig, StringConfig, Topology

    if profile.scope == "bank":
        dev = DeviceConfig(profile.name, "bus1", 1)
    elif profile.scope == "string":
        dev = DeviceConfig(profile.name, "bus1", 1, string=1)
    else:
        dev = DeviceConfig(profile.name, "bus1", 1, string=1, cell=1)
    topo = Topology((BusConfig("bus1", "(not opened)"),), (StringConfig(1, cells),), (dev,))
    engine = Engine(topo, {profile.name: profile}, PointStore(), core_defaults("gateway")["poll"],
                    decode_hook=decode_hook)
    ds = engine.buses["bus1"].devices[0]
    batch: list = []
    for block in ds.blocks:
        table = registers.get(block.table, {})
        words = [int(table.get(str(block.start + i), 0)) for i in range(block.count)]
        engine._decode_block(ds, block, words, 0.0, batch)
    return {(ref.point, ref.cell if profile.scope == "string" else None, ref.channel): r for ref, r in batch}


def expected_readings(profile: DeviceProfile, registers: dict, cells: int = 1) -> list[dict]:
    """The readings ``registers`` decode to, as a golden test's ``expected`` list."""
    out = []
    for (point, cell, channel), reading in sorted(decode_registers(profile, registers, cells).items(),
                                                  key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2] or 0)):
        item: dict[str, Any] = {"point": point}
        if cell is not None:
            item["cell"] = cell
        if channel is not None:
            item["channel"] = channel
        item["value"] = reading.value
        if reading.quality.value != "GOOD":
            item["quality"] = reading.quality.value
        out.append(item)
    return out


def golden_document(result: DumpResult, source: str, case: str, profile: DeviceProfile | None = None,
                    cells: int = 1, existing: dict | None = None) -> dict:
    """The dump as a golden-test file (``tests/devicedump.py``).  With ``existing`` (the file written before)
    the registers join the case of the same name (a second run for the other table) or make a new case."""
    doc = dict(existing) if existing else {}
    if profile is not None:
        if doc.get("profile") and doc["profile"] != profile.name:
            raise GatewayError(f"the file holds a dump of profile {doc['profile']!r}, not {profile.name!r}")
        doc["profile"] = profile.name
    doc.setdefault("profile", "")
    doc.setdefault("source", source)
    if cells != 1 or "cells" in doc:
        doc["cells"] = cells
    cases = doc.setdefault("cases", [])
    entry = next((c for c in cases if c.get("name") == case), None)
    if entry is None:
        entry = {"name": case, "registers": {}, "expected": []}
        cases.append(entry)
    table = entry.setdefault("registers", {}).setdefault(result.table, {})
    # a register missing from a dump reads as 0: the zeros are left out, the file stays readable
    table.update({str(a): w for a, w in sorted(result.words.items()) if w})
    for a, w in result.words.items():
        if not w:
            table.pop(str(a), None)
    entry["registers"][result.table] = dict(sorted(table.items(), key=lambda kv: int(kv[0])))
    if profile is not None:
        entry["expected"] = expected_readings(profile, entry["registers"], cells)
    return doc


def write_golden(path: Path, result: DumpResult, source: str, case: str, profile: DeviceProfile | None,
                 cells: int = 1) -> dict:
    existing = None
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise GatewayError(f"{path}: exists and is not a dump file ({exc}); choose another --json file") from None
        if not isinstance(existing, dict) or not isinstance(existing.get("cases", []), list):
            raise GatewayError(f"{path}: exists and is not a dump file; choose another --json file")
    doc = golden_document(result, source, case, profile, cells, existing)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def default_case_name(result: DumpResult) -> str:
    return f"dump of address {result.unit} on {time.strftime('%Y-%m-%d')}"
