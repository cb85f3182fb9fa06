"""Alarm rules: setpoints per point family, their defaults per battery model, and the config that overrides them.

A rule watches one point family with an upper (``high``) and/or a lower (``low``) side, each with a warning
and a critical setpoint.  Defaults follow ../shared/DOMAIN.md (IEEE 1188 for VRLA) and scale with the number
of 2 V cells per unit (n = nominal voltage / 2: 1, 3 or 6).  The config overrides them site-wide
(``alarms.rules``), per battery model (``alarms.models``) and per string (``alarms.strings``), in that order.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

from ..errors import ConfigError
from ..strings.states import StringStates, string_states
from ..topology import MAX_STRINGS, StringConfig, Topology

# deviation from the string average by nominal voltage: (warning, alarm) in V (DOMAIN.md section 3)
AVERAGE_DEVIATION_V = {2: (0.05, 0.10), 6: (0.10, 0.20), 12: (0.20, 0.40)}
# families the alarm system publishes itself: never evaluated
OWN_POINTS = frozenset({"cell.alarm_level", "string.alarm_level", "bank.alarms_active", "bank.alarm_level"})
# ohmic rise over the baseline (%): warning, replace, critical -- from analytics.thresholds (DOMAIN.md section 2)
OHMIC_LEVELS = (20.0, 30.0, 50.0)
# a cell sensor tests each unit once a day and one test on a 2 V cell scatters by 8-17 %: ohmic rules judge the
# median of this many tests (DOMAIN.md section 9)
OHMIC_TESTS_AVERAGED = 7


def ohmic_levels(analytics_section: dict | None) -> tuple[float, float, float]:
    """The analytics' ``thresholds`` (warning_pct, replace_pct, critical_pct), the ohmic rules' defaults."""
    th = (analytics_section or {}).get("thresholds") or {}
    return (float(th.get("warning_pct", OHMIC_LEVELS[0])), float(th.get("replace_pct", OHMIC_LEVELS[1])),
            float(th.get("critical_pct", OHMIC_LEVELS[2])))


@dataclass(frozen=True, slots=True)
class Levels:
    warning: float | None = None
    critical: float | None = None

    def items(self) -> list[tuple[str, float]]:
        return [(sev, v) for sev, v in (("warning", self.warning), ("critical", self.critical)) if v is not None]

    def __bool__(self) -> bool:
        return self.warning is not None or self.critical is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """A setpoint rule on one point family.

    ``kind`` "value" compares numbers; "state" is an on/off point (a contact, a communication status) that is
    in alarm when it equals ``active_state``, at ``severity`` (or, with ``match_state``, when an enumerated
    point such as ``string.state`` has that code).  ``reference``: compare the value minus this bank point's
    value (cell temperature over ambient).  ``float_only``: suppressed while the string is not on float
    (``string.state``: discharging, charging, at rest, settling) and after an ohmic test.  ``average``: judge
    the median of the last this many new values (ohmic tests), not one.  ``hysteresis_rel``: a hysteresis of
    this fraction of each setpoint, on top of ``hysteresis``.
    """

    id: str
    point: str
    label: str
    high: Levels = field(default_factory=Levels)
    low: Levels = field(default_factory=Levels)
    hysteresis: float = 0.0
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    float_only: bool = False
    reference: str | None = None
    enabled: bool = True
    kind: str = "value"  # value | state
    active_state: int = 1
    severity: str = "warning"  # state rules
    channel: int | None = None  # bank points with channels (DI): only this channel
    name: str = ""  # state rules: what the contact is ("Room door")
    match_state: int | None = None  # state rules on an enumerated point: in alarm at this code
    average: int = 0  # median of the last N new values (0, 1: each value)
    hysteresis_rel: float = 0.0

    def conditions(self) -> list[tuple[str, str, float]]:
        """(side, severity, threshold) of every setpoint the rule has."""
        if not self.enabled:
            return []
        if self.kind == "state":
            return [("high" if self.active_state else "low", self.severity, 0.5)]
        return [("high", sev, t) for sev, t in self.high.items()] + [("low", sev, t) for sev, t in self.low.items()]


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def _r(rule_id: str, point: str, label: str, **kw) -> Rule:
    for side in ("high", "low"):
        if isinstance(kw.get(side), tuple):
            kw[side] = Levels(*(_round(v) for v in kw[side]))
    if "hysteresis" in kw:
        kw["hysteresis"] = _round(kw["hysteresis"])
    return Rule(rule_id, point, label, **kw)


def string_rules(s: StringConfig, ohmic: tuple[float, float, float] = OHMIC_LEVELS,
                 states: StringStates | None = None) -> dict[str, Rule]:
    """The built-in rules of one string, scaled to its battery model; ``ohmic``: the analytics' thresholds."""
    states = states or string_states()
    warn_pct, replace_pct, critical_pct = ohmic
    tests = OHMIC_TESTS_AVERAGED
    n = s.battery.cells_per_unit  # 2 V cells per unit
    units = s.cells
    cap = s.battery.capacity_ah
    dev_w, dev_a = AVERAGE_DEVIATION_V.get(int(s.battery.nominal_voltage), (0.05 * n / 1.5, 0.10 * n / 1.5))
    per_string = n * units
    rules = [
        # float voltage window (IEEE 1188: 2.13 .. 2.35 V per cell; the warnings leave room for temperature
        # compensation between 5 and 40 C); must last 5 min
        _r("cell_voltage_float", "cell.voltage", "voltage on float", high=(2.32 * n, 2.35 * n),
           low=(2.18 * n, 2.13 * n), hysteresis=0.005 * n, on_delay_s=300, off_delay_s=60, float_only=True),
        # end of discharge (proposal: 1.80 / 1.75 V per cell), always evaluated
        # no on-delay: at a high rate the knee takes the voltage past the end voltage in seconds, and a load step
        # never dips a charged battery this far
        _r("cell_voltage_discharge", "cell.voltage", "voltage", low=(1.80 * n, 1.75 * n), hysteresis=0.02 * n,
           off_delay_s=60),
        _r("cell_voltage_deviation", "cell.voltage_average_deviation", "voltage deviation from the string average",
           high=(dev_w, dev_a), low=(-dev_w, -dev_a), hysteresis=dev_w * 0.1, on_delay_s=300, off_delay_s=60,
           float_only=True),
        _r("cell_temperature", "cell.temperature", "temperature", high=(40.0, 50.0), low=(5.0, None),
           hysteresis=1.0, on_delay_s=60, off_delay_s=60),
        _r("cell_temperature_ambient", "cell.temperature", "temperature", high=(3.0, 10.0), hysteresis=0.5,
           on_delay_s=300, off_delay_s=60, reference="io.ambient_temperature"),
        # cell-to-cell spread over 3 C: ventilation (DOMAIN.md section 4)
        _r("cell_temperature_spread", "string.cell_temperature_spread", "cell-to-cell temperature spread",
           high=(3.0, None), hysteresis=0.5, on_delay_s=600, off_delay_s=300),
        # ohmic rules judge the median of the last tests, with a hysteresis relative to the setpoint.  Absolute
        # limits come from the battery's datasheet: none by default
        _r("cell_ohmic", "cell.ohmic", "ohmic value", average=tests, hysteresis_rel=0.05),
        _r("cell_ohmic_baseline", "cell.ohmic_baseline_deviation", "ohmic value", high=(warn_pct, replace_pct),
           average=tests, hysteresis_rel=0.1),
        _r("cell_ohmic_baseline_critical", "cell.ohmic_baseline_deviation", "ohmic value", high=(None, critical_pct),
           average=tests, hysteresis_rel=0.1),
        # against the string average (proposal: +30 %; a 2 V cell's sensor alone may read 10 % off, conformity)
        _r("cell_ohmic_average", "cell.ohmic_average_deviation", "ohmic value", high=(30.0, 50.0), average=tests,
           hysteresis_rel=0.1),
        _r("cell_soc", "cell.soc", "state of charge", low=(80.0, 50.0), hysteresis=2.0, on_delay_s=60,
           off_delay_s=60),
        _r("cell_soh", "cell.soh", "state of health", low=(90.0, 80.0), hysteresis=1.0),
        _r("cell_comm", "cell.comm_status", "sensor", kind="state", severity="warning"),
        _r("string_voltage_float", "string.voltage", "string voltage on float", high=(2.32 * per_string,
           2.35 * per_string), low=(2.18 * per_string, 2.13 * per_string), hysteresis=0.005 * per_string,
           on_delay_s=300, off_delay_s=60, float_only=True),
        _r("string_voltage_discharge", "string.voltage", "string voltage", low=(1.80 * per_string, 1.75 * per_string),
           hysteresis=0.02 * per_string, off_delay_s=60),
        # charge current too high (0.15 C / 0.25 C)
        _r("string_current", "string.current", "current", high=(0.15 * cap, 0.25 * cap), hysteresis=0.005 * cap,
           on_delay_s=10, off_delay_s=30),
        # on battery (mains lost): the string supervision says the string discharges
        _r("string_on_battery", "string.state", "on battery", kind="state", match_state=states.discharging,
           severity="warning", on_delay_s=10, off_delay_s=30),
        # thermal runaway: float current over 3x its normal, or rising with the temperature (DOMAIN.md section 4)
        _r("string_thermal_runaway", "string.thermal_runaway", "thermal runaway", kind="state", severity="critical",
           on_delay_s=60, off_delay_s=600),
        # parallel strings should share a discharge or a recharge (proposal: 25 % / 50 % off their mean)
        _r("string_current_imbalance", "string.current_imbalance", "current imbalance", high=(25.0, 50.0),
           low=(-25.0, -50.0), hysteresis=5.0, on_delay_s=60, off_delay_s=60),
        _r("string_soc", "string.soc", "state of charge", low=(80.0, 50.0), hysteresis=2.0, on_delay_s=60,
           off_delay_s=60),
        _r("string_soh", "string.soh", "state of health", low=(90.0, 80.0), hysteresis=1.0),
        _r("string_comm", "string.comm_status", "string sensor", kind="state", severity="warning"),
    ]
    return {r.id: r for r in rules}


def bank_rules() -> dict[str, Rule]:
    rules = [
        _r("ambient_temperature", "io.ambient_temperature", "ambient temperature", high=(27.0, 35.0), low=(10.0, 5.0),
           hysteresis=0.5, on_delay_s=60, off_delay_s=60),
        _r("ambient_humidity", "io.ambient_humidity", "ambient humidity", high=(80.0, 90.0), low=(20.0, None),
           hysteresis=2.0, on_delay_s=60, off_delay_s=60),
        # a whole bus silent: no device on it answers
        _r("bus_comm", "gateway.bus_devices_online", "bus", low=(None, 0.5)),
        # a bank device (charger monitor, I/O module) stopped answering: fed by bmsgw_comm_event
        _r("device_comm", "device", "device", kind="state", severity="warning"),
        # the history cannot be written (disk full, size cap reached, I/O error): measurements are being lost
        _r("history_storage", "gateway.history_fault", "history storage", kind="state", severity="critical"),
        # a sensor answers at another address than the configured one (replaced or readdressed, found by the
        # engine's search and polled there): fed by bmsgw_comm_event; the value is the address it answers at
        _r("device_address", "device_address", "sensor address", kind="state", severity="warning"),
    ]
    return {r.id: r for r in rules}


BANK_RULE_IDS = frozenset(bank_rules())
# families of device alarms fed by communication events, not by points
DEVICE_POINTS = frozenset({"device", "device_address"})
STRING_RULE_IDS = frozenset(string_rules(StringConfig(1, 1), OHMIC_LEVELS, StringStates(0, 1, 2, 3, 4, ())))


# -- config --------------------------------------------------------------------------------------------------
_num_or_null = {"type": ["number", "null"]}
_levels = {"type": "object", "additionalProperties": False,
           "properties": {"warning": _num_or_null, "critical": _num_or_null}}
RULE_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "point": {"type": "string", "pattern": "^[a-z][a-z0-9_.]{1,63}$",
                  "description": "point family; needed only for a rule of your own"},
        "label": {"type": "string", "maxLength": 64},
        "high": _levels,
        "low": _levels,
        "hysteresis": {"type": "number", "minimum": 0},
        "hysteresis_pct": {"type": "number", "minimum": 0, "maximum": 100,
                           "description": "a hysteresis of this % of each setpoint, on top of `hysteresis`"},
        "average": {"type": "integer", "minimum": 0, "maximum": 60,
                    "description": "judge the median of the last N new values (ohmic tests), not each value"},
        "on_delay_s": {"type": "number", "minimum": 0, "maximum": 86400},
        "off_delay_s": {"type": "number", "minimum": 0, "maximum": 86400},
        "float_only": {"type": "boolean"},
        "reference": {"type": ["string", "null"], "pattern": "^[a-z][a-z0-9_.]{1,63}$"},
        "severity": {"enum": ["warning", "critical"], "description": "for on/off rules (contacts, communication)"},
    },
}
RULES_MAP = {"type": "object", "default": {}, "additionalProperties": False,
             "patternProperties": {"^[a-z][a-z0-9_]{0,47}$": RULE_SCHEMA}}

SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "log_keep_days": {"type": "integer", "minimum": 1, "maximum": 36500, "default": 730,
                          "description": "alarms cleared longer ago than this are removed from the log"},
        "float_detection": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "float-voltage rules apply while string.state says float (the string supervision's "
                           "classifier, config section string_state)",
            "properties": {
                "settle_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 300,
                             "description": "float rules wait this long after a discharge or recharge ends"},
            },
        },
        "ohmic_test": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "detect": {"enum": ["value_change", "off"], "default": "value_change",
                           "description": "a new cell.ohmic value means the string's sensors ran a test"},
                "suppress_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 1800,
                               "description": "float-voltage rules are suppressed this long after an ohmic test"},
            },
        },
        "rules": RULES_MAP,
        "models": {
            "type": "array", "default": [], "maxItems": 16,
            "items": {"type": "object", "additionalProperties": False, "required": ["model"],
                      "properties": {"model": {"type": "string", "maxLength": 64}, "rules": RULES_MAP}},
        },
        "strings": {
            "type": "array", "default": [], "maxItems": MAX_STRINGS,
            "items": {"type": "object", "additionalProperties": False, "required": ["id"],
                      "properties": {"id": {"type": "integer", "minimum": 1, "maximum": MAX_STRINGS},
                                     "rules": RULES_MAP}},
        },
        "di": {
            "type": "array", "default": [], "maxItems": 8,
            "description": "dry contacts (io.di) that raise an alarm",
            "items": {
                "type": "object", "additionalProperties": False, "required": ["channel"],
                "properties": {
                    "channel": {"type": "integer", "minimum": 1, "maximum": 8},
                    "name": {"type": "string", "maxLength": 64},
                    "active": {"enum": ["closed", "open"], "default": "closed"},
                    "severity": {"enum": ["warning", "critical"], "default": "warning"},
                    "on_delay_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 0},
                    "off_delay_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 0},
                },
            },
        },
    },
}


def _bad(errors: list[ConfigError] | None, exc: ConfigError) -> None:
    """Raise a config problem at once, or collect it (``errors``: check-config lists them all)."""
    if errors is None:
        raise exc
    errors.append(exc)


@overload
def _apply(rule: Rule, rid: str, over: dict[str, Any], src: str, path: str, catalog: Any,
           errors: list[ConfigError] | None = None) -> Rule: ...
@overload
def _apply(rule: None, rid: str, over: dict[str, Any], src: str, path: str, catalog: Any,
           errors: list[ConfigError] | None = None) -> Rule | None: ...


def _apply(rule: Rule | None, rid: str, over: dict[str, Any], src: str, path: str, catalog: Any,
           errors: list[ConfigError] | None = None) -> Rule | None:
    """``rule`` with the overrides of ``over`` (a new rule of the site's own when ``rule`` is None); None only
    for a new rule that cannot be made, its problem collected in ``errors``."""
    if rule is None:
        point = over.get("point")
        if not point:
            _bad(errors, ConfigError(src, f"{path}.point",
                                     f"{rid!r} is not a built-in rule; a rule of your own needs `point`"))
            return None
        rule = Rule(rid, point, over.get("label") or point)
    changes: dict[str, Any] = {}
    for key in ("enabled", "label", "hysteresis", "on_delay_s", "off_delay_s", "float_only", "reference", "severity",
                "average"):
        if key in over:
            changes[key] = over[key]
    if "hysteresis_pct" in over:
        changes["hysteresis_rel"] = over["hysteresis_pct"] / 100.0
    if "point" in over and over["point"] != rule.point:
        changes["point"] = over["point"]
    for side in ("high", "low"):
        if side in over:
            old = getattr(rule, side)
            lv = over[side]
            changes[side] = Levels(lv.get("warning", old.warning), lv.get("critical", old.critical))
    rule = replace(rule, **changes)
    for key in ("point", "reference"):
        pid = getattr(rule, key)
        if pid and catalog is not None and pid not in catalog and pid not in DEVICE_POINTS:
            _bad(errors, ConfigError(src, f"{path}.{key}", f"unknown point family {pid!r}"))
    if rule.kind == "state" and ("high" in over or "low" in over):
        _bad(errors, ConfigError(src, path, f"{rid} is an on/off rule: set `severity`, not setpoints"))
    for side in ("high", "low"):
        lv = getattr(rule, side)
        if lv.warning is not None and lv.critical is not None:
            bad = lv.critical < lv.warning if side == "high" else lv.critical > lv.warning
            if bad:
                word = "above" if side == "high" else "below"
                _bad(errors, ConfigError(src, f"{path}.{side}",
                                         f"the critical setpoint must be {word} the warning setpoint "
                                         f"(warning {lv.warning}, critical {lv.critical})"))
    return rule


def _is_bank_point(point: str | None, catalog) -> bool:
    if point and catalog is not None and point in catalog:
        return catalog[point].scope in ("bank", "gateway")
    return not (point or "").startswith(("cell.", "string."))


def _overlay(rules: dict[str, Rule], over: dict[str, dict], src: str, path: str, catalog, bank: bool,
             strict: bool, errors: list[ConfigError] | None = None) -> dict[str, Rule]:
    """Apply ``over`` to the rules of one scope.  Site-wide overrides hold rules of both scopes: each is
    applied where it belongs; a string's or a model's overrides may only name string and cell rules."""
    out = dict(rules)
    for rid, o in (over or {}).items():
        if rid in out:
            out[rid] = _apply(out[rid], rid, o, src, f"{path}.{rid}", catalog, errors)
            continue
        other = rid in (STRING_RULE_IDS if bank else BANK_RULE_IDS) or (
            rid not in BANK_RULE_IDS | STRING_RULE_IDS and _is_bank_point(o.get("point"), catalog) != bank)
        if other:
            if strict:
                _bad(errors, ConfigError(src, f"{path}.{rid}", "a room or bus rule applies to the whole site: "
                                                               "set it under alarms.rules"))
            continue
        rule = _apply(None, rid, o, src, f"{path}.{rid}", catalog, errors)
        if rule is not None:
            out[rid] = rule
    return out


@dataclass
class RuleSet:
    """The resolved rules: per string (cell and string families) and for the bank (bank and gateway families)."""

    per_string: dict[int, dict[str, Rule]]
    bank: dict[str, Rule]
    index: dict[tuple[str, int | None], list[Rule]] = field(default_factory=dict)
    by_id: dict[tuple[str, int | None], Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for sid, rules in self.per_string.items():
            for r in rules.values():
                self.by_id[(r.id, sid)] = r
                if r.enabled and r.conditions():
                    self.index.setdefault((r.point, sid), []).append(r)
        for r in self.bank.values():
            self.by_id[(r.id, None)] = r
            if r.enabled and r.conditions():
                self.index.setdefault((r.point, None), []).append(r)

    def rules_for(self, point: str, string: int | None) -> Sequence[Rule]:
        return self.index.get((point, string), ())

    def rule(self, rule_id: str, string: int | None) -> Rule | None:
        return self.by_id.get((rule_id, string)) or self.by_id.get((rule_id, None))


def resolve(section: dict, topology: Topology, catalog=None, src: str = "config",
            errors: list[ConfigError] | None = None, ohmic: tuple[float, float, float] = OHMIC_LEVELS) -> RuleSet:
    """Built-in defaults per battery model (the ohmic ones from ``ohmic``, the analytics' thresholds), then the
    site's, the model's and the string's overrides.  A problem raises a ConfigError, or with ``errors`` is
    added there and left out (to list them all)."""
    states = string_states(catalog) if catalog is not None and "string.state" in catalog else string_states()
    section = copy.deepcopy(section)
    site = section["rules"]
    models = {m["model"]: m["rules"] for m in section["models"]}
    strings = {}
    for i, s in enumerate(section["strings"]):
        try:
            topology.string(s["id"])
        except KeyError:
            _bad(errors, ConfigError(src, f"alarms.strings[{i}].id", f"no string {s['id']} is configured"))
            continue
        strings[s["id"]] = (i, s["rules"])
    per_string = {}
    for s in topology.strings:
        rules = _overlay(string_rules(s, ohmic, states), site, src, "alarms.rules", catalog, False, False, errors)
        if s.battery.model in models:
            idx = [m["model"] for m in section["models"]].index(s.battery.model)
            rules = _overlay(rules, models[s.battery.model], src, f"alarms.models[{idx}].rules", catalog, False, True,
                             errors)
        if s.id in strings:
            i, over = strings[s.id]
            rules = _overlay(rules, over, src, f"alarms.strings[{i}].rules", catalog, False, True, errors)
        per_string[s.id] = rules
    bank = _overlay(bank_rules(), site, src, "alarms.rules", catalog, True, False, errors)
    for i, d in enumerate(section["di"]):
        ch = d["channel"]
        spec = catalog.get("io.di") if catalog is not None else None
        if spec is not None and spec.channels and ch > spec.channels:
            _bad(errors, ConfigError(src, f"alarms.di[{i}].channel", f"the I/O module has {spec.channels} contacts"))
            continue
        name = d.get("name") or f"DI {ch}"
        rid = f"di_{ch}"
        if rid in bank:
            _bad(errors, ConfigError(src, f"alarms.di[{i}].channel", f"DI {ch} is listed twice"))
            continue
        active_state = 1 if d["active"] == "closed" else 0
        bank[rid] = Rule(rid, "io.di", name, kind="state", active_state=active_state,
                         severity=d["severity"], on_delay_s=d["on_delay_s"],
                         off_delay_s=d["off_delay_s"], channel=ch, name=name)
    return RuleSet(per_string, bank)


def check(section: dict, topology: Topology, catalog=None, src: str = "config",
          ohmic: tuple[float, float, float] = OHMIC_LEVELS) -> list[ConfigError]:
    """Every problem ``resolve`` would stop at, not only the first (for check-config); a site-wide rule is
    applied to every string, so its problem is listed once."""
    errors: list[ConfigError] = []
    resolve(section, topology, catalog, src, errors, ohmic)
    return list({(e.path, e.message): e for e in errors}.values())
