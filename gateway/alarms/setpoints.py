"""The alarm setpoints as a table: one row per setpoint rule, its effective limits and where each comes from.

The effective value of a limit is the built-in default (IEEE 1188, scaled to the string's batteries; the ohmic
rules' levels from ``analytics.thresholds``), overridden site-wide (``alarms.rules``), per battery model
(``alarms.models``) and per string (``alarms.strings``), in that order (``rules.resolve``).  ``edit`` writes a
change as an override at the scope the user picks, into the config document; the caller saves it through the
one check-and-reload path every config change takes.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from .rules import Rule, ohmic_levels, resolve

# the table's columns: (field, heading)
COLUMNS = (("low.critical", "Low critical"), ("low.warning", "Low warning"), ("high.warning", "High warning"),
           ("high.critical", "High critical"), ("hysteresis", "Hysteresis"), ("on_delay_s", "On-delay (s)"))
FIELDS = tuple(f for f, _ in COLUMNS)
# rules whose defaults are the analytics' thresholds (their high side)
ANALYTICS_RULES = frozenset({"cell_ohmic_baseline", "cell_ohmic_baseline_critical"})
SCOPE_LABELS = {"site": "site (alarms.rules)", "model": "battery model (alarms.models)",
                "string": "string (alarms.strings)"}
_SPECIFICITY = {"default": 0, "analytics": 0, "site": 1, "model": 2, "string": 3}


@dataclass
class Cell:
    field: str
    value: float | None
    source: str  # default | analytics | site | model | string
    source_label: str


@dataclass
class Row:
    rule_id: str
    label: str
    point: str
    unit: str
    cells: list[Cell]
    notes: list[str] = field(default_factory=list)

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.field == name)


class SetpointError(ValueError):
    """A change that cannot be saved; ``problems`` lists (rule id, field, message)."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{rid} {f}: {m}" for rid, f, m in problems))


def _get(rule: Rule, name: str) -> float | None:
    if name in ("hysteresis", "on_delay_s"):
        return getattr(rule, name)
    side, sev = name.split(".")
    return getattr(getattr(rule, side), sev)


def _overrides(over: dict | None, name: str) -> bool:
    if not over:
        return False
    if name in ("hysteresis", "on_delay_s"):
        return name in over
    side, sev = name.split(".")
    return sev in (over.get(side) or {})


def format_value(value: float | None) -> str:
    """A limit as the table shows and the form posts it back ("" for no limit)."""
    if value is None:
        return ""
    return f"{value:.6g}"


class Setpoints:
    """The setpoint table of one config (``gateway.config``), computed on demand (a page view)."""

    def __init__(self, config, catalog, profiles) -> None:
        self.config = config
        self.catalog = catalog
        self.profiles = profiles
        self.section = config.section("alarms")
        self.analytics = config.section("analytics")
        self.topology = config.topology
        self.rules = resolve(self.section, self.topology, catalog, src=str(config.path),
                             ohmic=ohmic_levels(self.analytics))

    # -- reading ---------------------------------------------------------------------------------------------
    def strings(self) -> list[dict[str, Any]]:
        return [{"id": s.id, "name": s.name or f"String {s.id}", "model": s.battery.model, "cells": s.cells,
                 "nominal_voltage": s.battery.nominal_voltage, "cells_per_unit": s.battery.cells_per_unit,
                 "capacity_ah": s.battery.capacity_ah}
                for s in self.topology.strings]

    def default_scope(self, string: int | None) -> str:
        """Site-wide when every string is alike (the same limits suit them all), else this string only."""
        if string is None:
            return "site"
        shapes = {(s["cells"], s["nominal_voltage"], s["capacity_ah"], s["model"]) for s in self.strings()}
        return "site" if len(shapes) == 1 else "string"

    def scopes(self, string: int | None) -> list[tuple[str, str]]:
        """Where a change of this table may be saved: (scope, label), the narrowest first."""
        if string is None:
            return [("site", "the whole site (alarms.rules)")]
        s = self.topology.string(string)
        out = [("string", f"string {string} only (alarms.strings)")]
        if s.battery.model:
            out.append(("model", f"every string of {s.battery.model} batteries (alarms.models)"))
        out.append(("site", "every string (alarms.rules)"))
        return out

    def _layers(self, string: int | None) -> list[tuple[str, str, dict]]:
        """(source, label, overrides by rule id), the most specific first."""
        layers: list[tuple[str, str, dict]] = []
        if string is not None:
            s = self.topology.string(string)
            for entry in self.section["strings"]:
                if entry["id"] == string:
                    layers.append(("string", f"string {string}", entry["rules"]))
            if s.battery.model:
                for entry in self.section["models"]:
                    if entry["model"] == s.battery.model:
                        layers.append(("model", f"model {s.battery.model}", entry["rules"]))
        layers.append(("site", "site", self.section["rules"]))
        return layers

    def table(self, string: int | None) -> list[Row]:
        """The value rules of one string (cell and string families) or of the room and buses (None)."""
        rules = self.rules.per_string[string] if string is not None else self.rules.bank
        layers = self._layers(string)
        default_label = "default"
        if string is not None:
            s = self.topology.string(string)
            n = s.battery.cells_per_unit
            default_label = f"IEEE 1188, {n} × 2 V"  # the default scaled to the unit's 2 V cells
        rows = []
        for rule in rules.values():
            if rule.kind != "value" or rule.point in ("gateway.bus_devices_online",):
                continue
            cells = []
            for name in FIELDS:
                source, label = "default", default_label
                for src, src_label, over in layers:
                    if _overrides(over.get(rule.id), name):
                        source, label = src, src_label
                        break
                else:
                    if rule.id in ANALYTICS_RULES and name.startswith("high."):
                        source, label = "analytics", "analytics.thresholds"
                cells.append(Cell(name, _get(rule, name), source, label))
            spec = self.catalog.get(rule.point) if self.catalog is not None else None
            unit = spec.unit if spec is not None else ""
            notes = []
            if rule.reference:
                notes.append(f"above {rule.reference}")
            if rule.average > 1:
                notes.append(f"median of the last {rule.average} tests")
            if rule.hysteresis_rel:
                notes.append(f"hysteresis + {rule.hysteresis_rel * 100:g} % of the setpoint")
            if not rule.enabled:
                notes.append("disabled")
            rows.append(Row(rule.id, _row_label(rule), rule.point, unit, cells, notes))
        return rows

    def sensor_range(self, point: str, string: int | None = None) -> tuple[float, float] | None:
        """What the sensors of ``string`` (None: all) can measure of ``point``: the union of their registers'
        valid ranges (or the point's own), None when nothing says."""
        spec = self.catalog.get(point) if self.catalog is not None else None
        lo, hi = math.inf, -math.inf
        used = {d.profile for d in self.topology.devices if string is None or d.string == string}
        for name in used:
            prof = self.profiles.get(name)
            for reg in getattr(prof, "registers", ()):
                if reg.point == point and reg.valid_range:
                    lo, hi = min(lo, reg.valid_range[0]), max(hi, reg.valid_range[1])
        if lo <= hi:
            return lo, hi
        if spec is not None and spec.valid_range:
            return spec.valid_range
        return None

    # -- changing --------------------------------------------------------------------------------------------
    def check(self, string: int | None, scope: str, changes: dict[tuple[str, str], float | None]) -> None:
        """Refuse a change that names a problem: a warning beyond its critical limit, a low limit above a high
        one, a value outside the sensor's range, a negative hysteresis or delay, a scope that a narrower
        override hides.  Raises SetpointError listing every problem."""
        rows = {r.rule_id: r for r in self.table(string)}
        problems: list[tuple[str, str, str]] = []
        for (rid, name), value in changes.items():
            row = rows.get(rid)
            if row is None:
                problems.append((rid, name, "no such setpoint rule here"))
                continue
            cell = row.cell(name)
            if _SPECIFICITY[cell.source] > _SPECIFICITY[scope]:
                problems.append((rid, name, f"the {cell.source_label} override sets this value and wins over a "
                                            f"{scope}-wide one: save it for the {cell.source} instead"))
            if value is None:
                if name in ("hysteresis", "on_delay_s"):
                    problems.append((rid, name, "enter a number (0 for none)"))
                continue
            if name in ("hysteresis", "on_delay_s") and value < 0:
                problems.append((rid, name, f"{format_value(value)} is negative"))
            if name == "on_delay_s" and value > 86400:
                problems.append((rid, name, f"{format_value(value)} s is longer than a day (86400 s)"))
        for rid in {rid for rid, _ in changes}:
            row = rows.get(rid)
            if row is None:
                continue
            v = {c.field: changes.get((rid, c.field), c.value) for c in row.cells}
            rule = self.rules.by_id.get((rid, string))
            rng = self.sensor_range(row.point, string) if rule is not None and not rule.reference else None
            unit = f" {row.unit}" if row.unit else ""
            for name in FIELDS[:4]:
                value = v[name]
                if (rid, name) not in changes or value is None or rng is None:
                    continue
                if not rng[0] <= value <= rng[1]:
                    problems.append((rid, name, f"{format_value(value)}{unit} is outside what the sensors "
                                                f"measure ({format_value(rng[0])} to {format_value(rng[1])}{unit})"))
            pairs = (("high.warning", "high.critical", "the high warning must not be above the high critical limit"),
                     ("low.critical", "low.warning", "the low warning must not be below the low critical limit"),
                     ("low.warning", "high.warning", "the low warning must be below the high warning"),
                     ("low.critical", "high.critical", "the low critical limit must be below the high critical one"))
            for lower, upper, message in pairs:
                a, b = v[lower], v[upper]
                if a is None or b is None or ((rid, lower) not in changes and (rid, upper) not in changes):
                    continue
                if a > b or (a == b and lower.startswith("low") and upper.startswith("high")):
                    bad = upper if (rid, upper) in changes else lower
                    problems.append((rid, bad, f"{message} ({format_value(a)}{unit} vs {format_value(b)}{unit})"))
        if problems:
            raise SetpointError(problems)

    def edit(self, document: dict, string: int | None, scope: str, changes: dict[tuple[str, str], float | None],
             resets: frozenset[str] = frozenset()) -> dict:
        """The config ``document`` (as written in the file) with ``changes`` ({(rule id, field): value, None =
        no limit}) saved as overrides at ``scope`` (site, model, string) and the overrides of the rules in
        ``resets`` at that scope removed (back to what a wider scope or the default says)."""
        doc = copy.deepcopy(document)
        alarms = doc.get("alarms")
        if not isinstance(alarms, dict):
            alarms = doc["alarms"] = {}
        if scope == "site" or string is None:
            rules = alarms.get("rules")
            if not isinstance(rules, dict):
                rules = alarms["rules"] = {}
        elif scope in ("model", "string"):
            key, list_name = ("model", "models") if scope == "model" else ("id", "strings")
            want: Any = self.topology.string(string).battery.model if scope == "model" else string
            if want is None:
                raise SetpointError([("", "", "the string's batteries have no model name (strings[].battery.model)")])
            entries = alarms.get(list_name)
            if not isinstance(entries, list):
                entries = alarms[list_name] = []
            entry = next((e for e in entries if isinstance(e, dict) and e.get(key) == want), None)
            if entry is None:
                entry = {key: want, "rules": {}}
                entries.append(entry)
            rules = entry.get("rules")
            if not isinstance(rules, dict):
                rules = entry["rules"] = {}
        else:
            raise SetpointError([("", "", f"unknown scope {scope!r}")])
        for rid in resets:
            rules.pop(rid, None)
        for (rid, name), value in changes.items():
            over = rules.get(rid)
            if not isinstance(over, dict):
                over = rules[rid] = {}
            if name in ("hysteresis", "on_delay_s"):
                over[name] = value
            else:
                side, sev = name.split(".")
                levels = over.get(side)
                if not isinstance(levels, dict):
                    levels = over[side] = {}
                levels[sev] = value
        return doc


def _row_label(rule: Rule) -> str:
    label = rule.label
    if rule.float_only and "float" not in label:
        label += " (on float)"
    if rule.reference:
        label += " over ambient"
    label += {"cell_voltage_discharge": " (end of discharge)", "string_voltage_discharge": " (end of discharge)",
              "cell_ohmic_baseline": " over its baseline",
              "cell_ohmic_baseline_critical": " over its baseline (critical)",
              "cell_ohmic_average": " over the string average"}.get(rule.id, "")
    prefix = "string " if rule.point.startswith("string.") and not rule.label.startswith("string") else ""
    return prefix + label


__all__ = ["COLUMNS", "FIELDS", "Cell", "Row", "SetpointError", "Setpoints", "format_value"]
