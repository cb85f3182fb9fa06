"""Auto-sensing: find the sensors on a bus and identify each model from its identity registers."""
from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .modbus import codecs
from .modbus.rtu import FUNCTION_FOR_TABLE, ExceptionResponse, ModbusError, NoReply, read_request
from .modbus.transport import RtuTransport
from .profiles import DeviceProfile
from .topology import MAX_CELLS, MAX_STRINGS, BusConfig


@dataclass(frozen=True, slots=True)
class Found:
    address: int
    profile: DeviceProfile | None  # None: something answered, but no profile matches its identity
    words: tuple[int, ...]
    voltage: float | None = None  # a cell sensor's battery voltage, read once identified

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
                   progress: Callable[[int, int, int], None] | None = None, counted: bool = True) -> list[Found]:
    """Ask every id for every known identity block; the first block that matches a profile names it.
    ``counted`` False: the scan's requests and silences are left out of the bus's counters (see
    RtuTransport.exchange)."""
    locations = identity_locations(profiles)
    found: list[Found] = []
    for n, unit in enumerate(ids, 1):
        answered: Found | None = None
        for table, address, count in locations:
            try:
                words = await transport.transact(read_request(unit, FUNCTION_FOR_TABLE[table], address, count),
                                                 counted)
            except ExceptionResponse:
                answered = answered or Found(unit, None, ())
                continue
            except NoReply:
                if answered is None:
                    break  # nobody at this id (a device answers every request, if only with an exception)
                continue
            except ModbusError:
                continue
            match = next((p for p in profiles.values() if p.identity is not None
                          and p.identity.location == (table, address, count) and p.identity.matches(words)), None)
            if match is not None:
                answered = Found(unit, match, tuple(words), await _battery_voltage(transport, unit, match, counted))
                break
            answered = answered or Found(unit, None, tuple(words))
        if answered is not None:
            found.append(answered)
        if progress is not None:
            progress(n, len(ids), len(found))
        await asyncio.sleep(0)
    return found


async def _battery_voltage(transport: RtuTransport, unit: int, profile: DeviceProfile,
                           counted: bool = True) -> float | None:
    """A cell sensor's battery voltage (None: not a cell sensor, or no answer): the battery's size comes from
    it, not from the profile (a BMU-H serves 6 V and 12 V units)."""
    if profile.scope != "cell":
        return None
    reg = next((r for r in profile.registers if r.point == "cell.voltage" and not r.per_cell_stride), None)
    if reg is None:
        return None
    try:
        words = await transport.transact(read_request(unit, FUNCTION_FOR_TABLE[reg.table], reg.address, reg.count),
                                         counted)
    except ModbusError:
        return None
    value = codecs.decode(words, reg)
    return value if value is not None and math.isfinite(value) and value > 0 else None


NOMINAL_CELLS = {2: 1, 6: 3, 12: 6}  # nominal voltage -> 2 V cells per unit


def nominal_from_voltage(volts: float | None) -> int | None:
    """The nominal voltage (2, 6 or 12 V) of a lead-acid unit reading ``volts``: the one whose voltage per cell
    is nearest 2.17 V (float 2.23-2.27, open circuit 2.14, end of discharge 1.75 per cell: the three sizes'
    ranges do not overlap)."""
    if volts is None or volts <= 0:
        return None
    return min(NOMINAL_CELLS, key=lambda nominal: abs(math.log(volts / (2.17 * NOMINAL_CELLS[nominal]))))


def _describe(f: Found) -> str:
    prof = f.profile
    if prof is None:
        return "matches no known profile"
    model = prof.model if prof.model.startswith(prof.vendor) else f"{prof.vendor} {prof.model}"
    note = f"{model}, {prof.scope}"
    if f.firmware:
        note += f", firmware {f.firmware}"
    return note


def config_fragment(found: list[Found], bus: BusConfig) -> str:
    """A config (YAML) for what was found: the bus, one string per string sensor (with the cell sensors that
    follow it), the bank devices.  ``bmsgw check-config`` accepts it as it is; paste its parts into a site's
    config and set the string sizes and battery models."""
    lines = [f"# {len(found)} device(s) found on {bus.port} at {bus.baud} baud by bmsgw scan",
             "buses:",
             f"  - {{name: {bus.name}, port: {bus.port}, baud: {bus.baud}, parity: {bus.parity}}}"]
    strings: list[dict] = []  # {"sensor": Found | None, "cells": [runs of consecutive cell sensors]}
    bank: list[tuple[Found, DeviceProfile]] = []
    unknown: list[Found] = []
    for f in found:
        prof = f.profile
        if prof is None:
            unknown.append(f)
        elif prof.scope == "string":
            strings.append({"sensor": f, "runs": []})
        elif prof.scope == "cell":
            last = strings[-1]["runs"][-1][-1].profile if strings and strings[-1]["runs"] else None
            if not strings or (last is not None and last is not prof):
                strings.append({"sensor": None, "runs": []})  # another battery type: another string
            runs = strings[-1]["runs"]
            prev = runs[-1][-1] if runs else None
            if prev is not None and prev.profile is prof and f.address == prev.address + 1:
                runs[-1].append(f)
            else:
                runs.append([f])
        else:
            bank.append((f, prof))
    if len(strings) > MAX_STRINGS:
        lines.append(f"# more than {MAX_STRINGS} strings: only the first {MAX_STRINGS} are listed")
        strings = strings[:MAX_STRINGS]
    lines.append("strings:" if strings else "strings: []")
    for sid, st in enumerate(strings, 1):
        sensor, runs = st["sensor"], st["runs"]
        cells = sum(len(r) for r in runs)
        concentrator = sensor is not None and sensor.profile.concentrator
        measured = [f.voltage for r in runs for f in r if f.voltage is not None]
        nominal = nominal_from_voltage(statistics.median(measured)) if measured else None
        guessed = nominal is None
        if guessed:  # nothing measured: the profile's size, to check
            nominal = next((r[0].profile.nominal_voltage for r in runs if r[0].profile.nominal_voltage), None)
        if not cells:
            cells = 1 if not concentrator else 120
        lines.append(f"  - id: {sid}")
        note = "  # the number of batteries the string sensor serves: check" if concentrator and not runs else ""
        lines.append(f"    cells: {min(cells, MAX_CELLS)}{note}")
        if nominal in (2, 6, 12):
            how = ("the sensor profile's size: check" if guessed else
                   f"from the batteries' voltage, median {statistics.median(measured):.2f} V")
            lines.append(f"    battery: {{nominal_voltage: {int(nominal)}}}  # {how}")
        lines.append("    devices:")
        if sensor is not None:
            lines.append(f"      - {{profile: {sensor.profile.name}, bus: {bus.name}, address: {sensor.address}}}"
                         f"  # {_describe(sensor)}")
        first_cell = 1
        for run in runs:
            f = run[0]
            extra = f", first_cell: {first_cell}" if first_cell > 1 else ""
            lines.append(f"      - {{profile: {f.profile.name}, bus: {bus.name}, address: {f.address}, "
                         f"count: {len(run)}{extra}}}  # {_describe(f)}")
            first_cell += len(run)
    lines.append("bank:")
    lines.append("  devices:" if bank else "  devices: []")
    for f, prof in bank:
        serial = f", serial {f.serial}" if f.serial is not None else ""
        entry = f"{{profile: {prof.name}, bus: {bus.name}, address: {f.address}}}"
        lines.append(f"    - {entry}  # {_describe(f)}{serial}")
    for f in unknown:
        lines.append(f"# address {f.address}: answers, but matches no known profile")
    return "\n".join(lines) + "\n"
