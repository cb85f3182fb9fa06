"""IEEE 1188-2005 maintenance items for VRLA batteries, and when each is due.

Items a monitor measures continuously are reported as covered (with the family that covers them); the rest
come due from the maintenance log (``bmsgw maintenance done ITEM``).  Capacity tests: at acceptance, then at
most every 25 % of the expected life or 2 years, yearly once at 85 % of the expected life or after the
capacity fell more than 10 % (SOH below 90 %).
"""
from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86400.0
YEAR_S = 365.25 * DAY_S


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    title: str
    interval_days: int
    monitored_by: tuple[str, ...] = ()  # point families that cover it when the bank measures them


ITEMS: tuple[Item, ...] = (
    Item("float_voltage", "Float voltage at the battery terminals", 30, ("string.voltage",)),
    Item("charger_output", "Charger output current and voltage", 30, ("bank.voltage", "bank.charger_current")),
    Item("ambient_temperature", "Ambient temperature and ventilation", 30, ("io.ambient_temperature",)),
    Item("float_current", "DC float current per string", 30, ("string.current",)),
    Item("visual_inspection", "Visual inspection: cleanliness, leaks, cracks, corrosion", 30),
    Item("unit_voltages", "Voltage of every unit", 91, ("cell.voltage",)),
    Item("unit_temperatures", "Negative-post temperature of every unit", 91, ("cell.temperature",)),
    Item("ohmic_values", "Ohmic value of every unit (against its baseline)", 91, ("cell.ohmic",)),
    Item("connection_resistance", "Cell-to-cell and terminal connection resistance (and torque)", 365),
    Item("ripple", "AC ripple current and voltage imposed on the battery", 365),
)
ITEM_IDS = tuple(i.id for i in ITEMS) + ("capacity_test",)


def capacity_test_interval_days(age_years: float | None, design_life_years: float, soh_pct: float | None) -> int:
    if (age_years is not None and age_years >= 0.85 * design_life_years) or (soh_pct is not None and soh_pct < 90):
        return 365
    return int(min(2 * 365.25, 0.25 * design_life_years * 365.25))


def schedule(now: float, log: list[dict], monitored: set[str], last_capacity_test: float | None,
             age_years: float | None, design_life_years: float, soh_pct: float | None,
             string: int | None = None) -> list[dict]:
    """Each item with its status: ``monitored``, ``ok`` (done within its interval), ``due`` (never recorded,
    or its interval is over: ``overdue_days``)."""
    out = []
    for item in ITEMS:
        entry = {"id": item.id, "title": item.title, "interval_days": item.interval_days}
        covered = [f for f in item.monitored_by if f in monitored]
        if item.monitored_by and len(covered) == len(item.monitored_by):
            entry.update(status="monitored", detail="measured continuously (" + ", ".join(covered) + ")")
            out.append(entry)
            continue
        out.append(_due(entry, now, _last(log, item.id, string), item.interval_days))
    interval = capacity_test_interval_days(age_years, design_life_years, soh_pct)
    logged = _last(log, "capacity_test", string)
    last = max([t for t in (last_capacity_test, logged) if t is not None], default=None)
    entry = {"id": "capacity_test", "title": "Capacity (discharge) test", "interval_days": interval}
    out.append(_due(entry, now, last, interval))
    return out


def _last(log: list[dict], item: str, string: int | None) -> float | None:
    times = [e["ts"] for e in log if e["item"] == item and (string is None or e.get("string") in (None, string))]
    return max(times) if times else None


def _due(entry: dict, now: float, last: float | None, interval_days: int) -> dict:
    if last is None:
        entry.update(status="due", last=None, due=now, detail="never recorded")
        return entry
    due = last + interval_days * DAY_S
    if now >= due:
        entry.update(status="due", last=last, due=due, overdue_days=int((now - due) // DAY_S),
                     detail=f"overdue by {int((now - due) // DAY_S)} days")
    else:
        entry.update(status="ok", last=last, due=due, detail=f"next due in {int((due - now) // DAY_S)} days")
    return entry
