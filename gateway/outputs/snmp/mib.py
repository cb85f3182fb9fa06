"""BMSGW-MIB, generated from the point catalog, so the point map stays the single source of OIDs.

The object layout is the point map's (``gateway.pointmap.oid_suffix``): below ``bmsgwObjects`` (base.1)

    1 gateway scalars  (slot+1).0            2 bus table      entry 1, column slot+2, index bus
    3 bank scalars     (slot+1).0            4 channel table  entry 1, column slot+2, index channel
    5 string table     entry 1, column slot+2, index string
    6 cell table       entry 1, column slot+3, index string.cell
    7 alarms           active-alarm table and its last-changed time (this module's own)
    8 commands         (slot+1).0: gateway commands (read-write; read 0)
    9 string commands  entry 1, column slot+2, index string (read-write; read 0)

Notifications sit at base.0, conformance at base.2.  ``mibs/BMSGW-MIB.txt`` is this module's output for
the built-in catalog; ``bmsgw mib`` prints it for a site's catalog (profiles and plugins may add families).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ...points import PointSpec
from ...topology import MAX_BUSES, MAX_CELLS, MAX_CHANNELS, MAX_STRINGS

MODULE = "BMSGW-MIB"
DEFAULT_PEN = 32473  # RFC 5612: reserved for documentation; a site with its own PEN configures it
ENTERPRISES = (1, 3, 6, 1, 4, 1)
LAST_UPDATED = "202611210000Z"
ALARM_GROUP = 7
MAX_TEXT = 255

_UNITS = {"V": "V", "A": "A", "C": "degrees Celsius", "ohm": "ohm", "%": "percent", "s": "seconds",
          "Ah": "Ah", "unix_s": "seconds since 1970-01-01T00:00:00Z"}

# (OID group under bmsgwObjects, scope, has channels): node names and the index of each table.
_SCALAR_GROUPS = {1: ("bmsgwGateway", "gateway"), 3: ("bmsgwBank", "bank"), 8: ("bmsgwCommands", "gateway")}
_TABLES = {
    2: ("bmsgwBus", "gateway",
        [("bmsgwBusIndex", MAX_BUSES, "The bus number (1 = the first bus in the configuration).")],
        "Per-bus counters and state of the RS485 buses the gateway polls."),
    4: ("bmsgwChannel", "bank", [("bmsgwChannelIndex", MAX_CHANNELS, "The channel number of the input or output.")],
        "Bank-level inputs and outputs with several channels: the I/O module's dry contacts and relays."),
    5: ("bmsgwString", "string", [("bmsgwStringIndex", MAX_STRINGS, "The string number, as configured.")],
        "One row per battery string."),
    6: ("bmsgwCell", "cell", [("bmsgwCellStringIndex", MAX_STRINGS, "The string the battery belongs to."),
                              ("bmsgwCellIndex", MAX_CELLS, "The battery's position in its string (1 = first).")],
        "One row per battery (monitored unit or cell) of every string."),
    9: ("bmsgwStringCommand", "string",
        [("bmsgwStringCommandIndex", MAX_STRINGS, "The string the command acts on.")],
        "Commands that act on one string: written with SET (SNMPv3 users with write access), read 0."),
}


def object_name(spec: PointSpec) -> str:
    """``cell.ohmic_baseline_deviation`` -> ``bmsgwCellOhmicBaselineDeviation``."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", spec.id) if w]
    return "bmsgw" + "".join(w[:1].upper() + w[1:] for w in words)


def enum_label(text: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w]
    if not words:
        return "value"
    label = words[0].lower() + "".join(w[:1].upper() + w[1:].lower() for w in words[1:])
    return label if label[0].isalpha() else "v" + label


def decimals(scale: float) -> int | None:
    """N when ``scale`` is 10**-N (N >= 1), else None."""
    if scale >= 1 or scale <= 0:
        return None
    n = round(-math.log10(scale))
    return n if math.isclose(scale, 10.0 ** -n, rel_tol=1e-9) else None


def value_range(dtype: str) -> tuple[int, int]:
    """The values a reading can take: the register type's range without its not-available code."""
    return {"uint16": (0, 65534), "int16": (-32767, 32767), "uint32": (0, 4294967294),
            "int32": (-2147483647, 2147483647)}[dtype]


def not_available_code(dtype: str) -> int:
    return {"uint16": 65535, "int16": -32768, "uint32": 4294967295, "int32": -2147483648}[dtype]


def group_and_scope(spec: PointSpec) -> int:
    if spec.kind == "command":
        return 9 if spec.scope == "string" else 8
    if spec.scope == "cell":
        return 6
    if spec.scope == "string":
        return 5
    if spec.scope == "bank":
        return 4 if spec.channels else 3
    return 2 if spec.channels else 1


def column(spec: PointSpec) -> int:
    if spec.scope == "cell":
        return spec.slot + 3
    if spec.scope == "string" or spec.channels:
        return spec.slot + 2
    return spec.slot + 1


def _ascii(text: str) -> str:
    text = text.replace('"', "'")
    return text.encode("ascii", "replace").decode("ascii").replace("?", "-") if not text.isascii() else text


def _wrap(text: str, indent: int = 12, width: int = 76) -> str:
    words = _ascii(text).split()
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width - indent:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    pad = " " * indent
    return "\n".join(pad + (('"' + ln) if i == 0 else ln) for i, ln in enumerate(lines)) + '"'


@dataclass(frozen=True)
class ObjectDef:
    name: str
    spec: PointSpec
    syntax: str  # in the OBJECT-TYPE
    seq_syntax: str  # in the row's SEQUENCE
    units: str
    tc: str | None


class MibBuilder:
    def __init__(self, catalog: Iterable[PointSpec], base_oid: tuple[int, ...]) -> None:
        if base_oid[:len(ENTERPRISES)] != ENTERPRISES or len(base_oid) <= len(ENTERPRISES):
            raise ValueError(f"base OID {'.'.join(map(str, base_oid))} must be under enterprises (1.3.6.1.4.1.N)")
        self.base = base_oid
        self.specs = sorted(catalog, key=lambda s: (group_and_scope(s), column(s)))
        self.imports: dict[str, set[str]] = {"SNMPv2-SMI": {"MODULE-IDENTITY", "OBJECT-TYPE", "NOTIFICATION-TYPE",
                                                            "enterprises"},
                                             "SNMPv2-TC": {"TEXTUAL-CONVENTION"},
                                             "SNMPv2-CONF": {"MODULE-COMPLIANCE", "OBJECT-GROUP",
                                                             "NOTIFICATION-GROUP"}}
        self.tcs: dict[str, str] = {}
        names: dict[str, str] = {}
        self.objects: list[ObjectDef] = []
        for spec in self.specs:
            obj = self._object(spec)
            if obj.name in names:
                raise ValueError(f"point families {names[obj.name]} and {spec.id} both map to MIB name {obj.name}")
            names[obj.name] = spec.id
            self.objects.append(obj)

    def _use(self, module: str, symbol: str) -> None:
        self.imports.setdefault(module, set()).add(symbol)

    def _tc(self, n: int, unsigned: bool) -> str:
        name = f"Bmsgw{'Unsigned' if unsigned else ''}Decimal{n}"
        if name not in self.tcs:
            base = "Unsigned32" if unsigned else "Integer32"
            self._use("SNMPv2-SMI", base)
            self.tcs[name] = (
                f"{name} ::= TEXTUAL-CONVENTION\n"
                f"    DISPLAY-HINT \"d-{n}\"\n"
                f"    STATUS       current\n"
                f"    DESCRIPTION\n"
                + _wrap(f"A fixed-point number with {n} decimal place{'s' if n > 1 else ''}: the value times "
                        f"10^{n}, as in the Modbus register of the same point.") + "\n"
                f"    SYNTAX       {base}\n")
        return name

    def _object(self, spec: PointSpec) -> ObjectDef:
        name = object_name(spec)
        if spec.kind == "command":
            return self._command(spec, name)
        na = not_available_code(spec.dtype)
        units = _UNITS.get(spec.unit, spec.unit) if spec.unit else ""
        tc = None
        if spec.kind == "counter":
            self._use("SNMPv2-SMI", "Counter32")
            return ObjectDef(name, spec, "Counter32", "Counter32", units, None)
        if spec.kind == "state" and spec.states:
            labels, used = [], set()
            for value, text in sorted(spec.states) + [(na, "not available")]:
                label = enum_label(text)
                while label in used:
                    label += "X"
                used.add(label)
                labels.append((value, label))
            labels.sort()
            body = ",\n".join(f"                    {lab}({val})" for val, lab in labels)
            return ObjectDef(name, spec, "INTEGER {\n" + body + "\n                }", "INTEGER", "", None)
        unsigned32 = spec.dtype == "uint32"
        lo, hi = value_range(spec.dtype)
        n = decimals(spec.scale)
        if n is not None:
            tc = self._tc(n, unsigned32)
            base = tc
        else:
            base = "Unsigned32" if unsigned32 else "Integer32"
            self._use("SNMPv2-SMI", base)
            if spec.scale != 1 and units:
                units = f"{spec.scale:g} {units}"
        syntax = f"{base} ({lo}..{hi})"
        return ObjectDef(name, spec, syntax, base, units, tc)

    def _command(self, spec: PointSpec, name: str) -> ObjectDef:
        """A command: the values it takes (its states, or its range), and 0, what it reads."""
        if spec.states:
            labels = sorted({(0, "idle"), *((v, enum_label(t)) for v, t in spec.states)})
            body = ",\n".join(f"                    {lab}({val})" for val, lab in labels)
            return ObjectDef(name, spec, "INTEGER {\n" + body + "\n                }", "INTEGER", "", None)
        hi = int(spec.valid_range[1]) if spec.valid_range else value_range(spec.dtype)[1]
        base = "Unsigned32" if spec.dtype == "uint32" else "Integer32"
        self._use("SNMPv2-SMI", base)
        return ObjectDef(name, spec, f"{base} (0..{hi})", base, "", None)

    # -- text ------------------------------------------------------------------------------------------------
    def _describe(self, obj: ObjectDef) -> str:
        spec = obj.spec
        if spec.kind == "command":
            return (spec.description.rstrip(".") + f". Command {spec.id}: reads 0; a SET carries it out "
                    "through the gateway's one write path, for SNMPv3 users whose role allows it when "
                    "snmp.writes.enabled is on, and is logged with the user's name.")
        text = spec.description.rstrip(".") + f". Point {spec.id}"
        if spec.unit and obj.units:
            text += f", in {obj.units}"
        text += "."
        if spec.kind == "state" and spec.states:
            text += (" notAvailable while the value is not available: the sensor does not answer, the reading "
                     "is stale, or the value has not been computed yet.")
        else:
            text += (" The instance is absent (noSuchInstance, skipped by GETNEXT) while the value is not "
                     "available: the sensor does not answer, the reading is stale, or the value has not been "
                     "computed yet. A stale reading is never served as a number.")
        if spec.source == "derived":
            text += " Computed by the gateway."
        return text

    def _object_type(self, obj: ObjectDef, parent: str, col: int) -> str:
        lines = [f"{obj.name} OBJECT-TYPE", f"    SYNTAX      {obj.syntax}"]
        if obj.units:
            lines.append(f'    UNITS       "{_ascii(obj.units)}"')
        access = "read-write" if obj.spec.writable else "read-only"
        lines += [f"    MAX-ACCESS  {access}", "    STATUS      current", "    DESCRIPTION",
                  _wrap(self._describe(obj)), f"    ::= {{ {parent} {col} }}", ""]
        return "\n".join(lines)

    def text(self) -> str:
        out: list[str] = []
        groups: dict[str, list[str]] = {}
        base_tail = " ".join(str(x) for x in self.base[len(ENTERPRISES):])
        # scalars and tables from the catalog
        body: list[str] = ["bmsgwObjects OBJECT IDENTIFIER ::= { bmsgwMIB 1 }", ""]
        for num in (1, 2, 3, 4, 5, 6, 8, 9):
            members = [o for o in self.objects if group_and_scope(o.spec) == num]
            if num in _SCALAR_GROUPS:
                node, scope = _SCALAR_GROUPS[num]
                body.append(f"{node} OBJECT IDENTIFIER ::= {{ bmsgwObjects {num} }}\n")
                for obj in members:
                    body.append(self._object_type(obj, node, column(obj.spec)))
                if members:
                    groups[f"{node}Group"] = [o.name for o in members]
                continue
            prefix, scope, index, what = _TABLES[num]
            if not members:
                continue
            entry_type = prefix[0].upper() + prefix[1:] + "Entry"
            self._use("SNMPv2-SMI", "Integer32")
            body.append(f"{prefix}Table OBJECT-TYPE\n    SYNTAX      SEQUENCE OF {entry_type}\n"
                        f"    MAX-ACCESS  not-accessible\n    STATUS      current\n    DESCRIPTION\n"
                        f"{_wrap(what)}\n    ::= {{ bmsgwObjects {num} }}\n")
            idx_names = ", ".join(n for n, _, _ in index)
            body.append(f"{prefix}Entry OBJECT-TYPE\n    SYNTAX      {entry_type}\n"
                        f"    MAX-ACCESS  not-accessible\n    STATUS      current\n    DESCRIPTION\n"
                        f"{_wrap('A row of ' + prefix + 'Table.')}\n    INDEX       {{ {idx_names} }}\n"
                        f"    ::= {{ {prefix}Table 1 }}\n")
            seq = [(n, "Integer32") for n, _, _ in index] + [(o.name, o.seq_syntax) for o in members]
            width = max(len(n) for n, _ in seq) + 1
            body.append(f"{entry_type} ::= SEQUENCE {{\n" + ",\n".join(f"    {n:<{width}} {t}" for n, t in seq)
                        + "\n}\n")
            for col, (iname, top, desc) in enumerate(index, start=1):
                body.append(f"{iname} OBJECT-TYPE\n    SYNTAX      Integer32 (1..{top})\n"
                            f"    MAX-ACCESS  not-accessible\n    STATUS      current\n    DESCRIPTION\n"
                            f"{_wrap(desc)}\n    ::= {{ {prefix}Entry {col} }}\n")
            for obj in members:
                body.append(self._object_type(obj, f"{prefix}Entry", column(obj.spec)))
            groups[f"{prefix}Group"] = [o.name for o in members]
        body.append(self._alarm_text())
        groups["bmsgwAlarmGroup"] = ["bmsgwAlarmLastChanged"] + [c[0] for c in ALARM_COLUMNS[1:]]
        self._use("SNMP-FRAMEWORK-MIB", "SnmpAdminString")
        self._use("SNMPv2-TC", "TimeStamp")
        self._use("SNMPv2-TC", "DateAndTime")
        self._use("SNMPv2-TC", "VariablePointer")
        self._use("SNMPv2-SMI", "Unsigned32")

        out.append(f"{MODULE} DEFINITIONS ::= BEGIN\n")
        out.append("IMPORTS")
        order = ["SNMPv2-SMI", "SNMPv2-TC", "SNMPv2-CONF", "SNMP-FRAMEWORK-MIB"]
        for mod in order:
            syms = sorted(self.imports.get(mod, ()), key=lambda s: (s[0].islower(), s))
            end = ";" if mod == order[-1] else ""
            out.append("    " + ",\n    ".join(_chunks(syms)) + f"\n        FROM {mod}{end}")
        out.append("")
        out.append(_IDENTITY.format(base=base_tail, updated=LAST_UPDATED))
        for tc in sorted(self.tcs):
            out.append(self.tcs[tc])
        out.append(_ALARM_TCS)
        out.extend(body)
        out.append(_notifications())
        out.append(self._conformance(groups))
        out.append("END\n")
        return "\n".join(out)

    def _alarm_text(self) -> str:
        parts = [
            f"bmsgwAlarms OBJECT IDENTIFIER ::= {{ bmsgwObjects {ALARM_GROUP} }}\n",
            "bmsgwAlarmLastChanged OBJECT-TYPE\n    SYNTAX      TimeStamp\n    MAX-ACCESS  read-only\n"
            "    STATUS      current\n    DESCRIPTION\n"
            + _wrap("The value of sysUpTime when a row was last added to or removed from bmsgwAlarmTable; 0 "
                    "when the table has not changed since the agent started.")
            + "\n    ::= { bmsgwAlarms 1 }\n",
            "bmsgwAlarmTable OBJECT-TYPE\n    SYNTAX      SEQUENCE OF BmsgwAlarmEntry\n"
            "    MAX-ACCESS  not-accessible\n    STATUS      current\n    DESCRIPTION\n"
            + _wrap("The active alarms: a row appears when an alarm is raised (bmsgwAlarmRaised is sent) and "
                    "disappears when it clears (bmsgwAlarmCleared is sent).")
            + "\n    ::= { bmsgwAlarms 2 }\n",
            "bmsgwAlarmEntry OBJECT-TYPE\n    SYNTAX      BmsgwAlarmEntry\n    MAX-ACCESS  not-accessible\n"
            "    STATUS      current\n    DESCRIPTION\n" + _wrap("One active alarm.")
            + "\n    INDEX       { bmsgwAlarmIndex }\n    ::= { bmsgwAlarmTable 1 }\n",
        ]
        width = max(len(c[0]) for c in ALARM_COLUMNS) + 1
        parts.append("BmsgwAlarmEntry ::= SEQUENCE {\n"
                     + ",\n".join(f"    {name:<{width}} {seq}" for name, seq, *_ in ALARM_COLUMNS) + "\n}\n")
        for col, (name, _seq, syntax, access, desc) in enumerate(ALARM_COLUMNS, start=1):
            parts.append(f"{name} OBJECT-TYPE\n    SYNTAX      {syntax}\n    MAX-ACCESS  {access}\n"
                         f"    STATUS      current\n    DESCRIPTION\n{_wrap(desc)}\n"
                         f"    ::= {{ bmsgwAlarmEntry {col} }}\n")
        return "\n".join(parts)

    def _conformance(self, groups: dict[str, list[str]]) -> str:
        parts = ["bmsgwConformance OBJECT IDENTIFIER ::= { bmsgwMIB 2 }",
                 "bmsgwCompliances OBJECT IDENTIFIER ::= { bmsgwConformance 1 }",
                 "bmsgwGroups      OBJECT IDENTIFIER ::= { bmsgwConformance 2 }", ""]
        names = list(groups) + ["bmsgwNotificationGroup"]
        parts.append("bmsgwCompliance MODULE-COMPLIANCE\n    STATUS      current\n    DESCRIPTION\n"
                     + _wrap("A bmsgw gateway implements every group of this module.")
                     + "\n    MODULE  -- this module\n"
                     "        MANDATORY-GROUPS {\n            " + ",\n            ".join(names)
                     + "\n        }\n    ::= { bmsgwCompliances 1 }\n")
        for num, (gname, members) in enumerate(groups.items(), start=1):
            what = {"bmsgwGatewayGroup": "The gateway's own state.", "bmsgwBusGroup": "Per-bus counters.",
                    "bmsgwBankGroup": "Bank-level values: charger, room sensors.",
                    "bmsgwChannelGroup": "Bank inputs and outputs.", "bmsgwStringGroup": "Per-string values.",
                    "bmsgwCellGroup": "Per-battery values.",
                    "bmsgwAlarmGroup": "The active-alarm table.", "bmsgwCommandsGroup": "Gateway commands.",
                    "bmsgwStringCommandGroup": "Per-string commands."}.get(gname, "Objects of " + gname + ".")
            parts.append(f"{gname} OBJECT-GROUP\n    OBJECTS {{\n        " + ",\n        ".join(members)
                         + f"\n    }}\n    STATUS      current\n    DESCRIPTION\n{_wrap(what)}\n"
                         f"    ::= {{ bmsgwGroups {num} }}\n")
        parts.append("bmsgwNotificationGroup NOTIFICATION-GROUP\n    NOTIFICATIONS { bmsgwAlarmRaised, "
                     "bmsgwAlarmCleared }\n    STATUS      current\n    DESCRIPTION\n"
                     + _wrap("The alarm notifications.") + f"\n    ::= {{ bmsgwGroups {len(groups) + 1} }}\n")
        return "\n".join(parts)


def _chunks(symbols: list[str], per_line: int = 4) -> list[str]:
    return [", ".join(symbols[i:i + per_line]) for i in range(0, len(symbols), per_line)]


# name, type in the SEQUENCE, SYNTAX, MAX-ACCESS, description.  Column numbers are the list order (1-based).
ALARM_COLUMNS = [
    ("bmsgwAlarmIndex", "Unsigned32", "Unsigned32 (1..4294967295)", "not-accessible",
     "A number the agent gives the alarm while it is active."),
    ("bmsgwAlarmId", "SnmpAdminString", "SnmpAdminString", "read-only",
     "The alarm engine's identifier of the alarm: the same text in the raised and the cleared "
     "notification, in the web page and in the alarm log."),
    ("bmsgwAlarmObject", "SnmpAdminString", "SnmpAdminString", "read-only",
     "What the alarm is about, e.g. 'string 2 cell 37', 'bank' or 'bus1'."),
    ("bmsgwAlarmMetric", "SnmpAdminString", "SnmpAdminString", "read-only",
     "The point family that crossed its threshold, e.g. 'cell.ohmic', or the condition, e.g. 'comm.lost'."),
    ("bmsgwAlarmValue", "SnmpAdminString", "SnmpAdminString", "read-only",
     "The value that raised (or cleared) the alarm, in the point's SI unit, e.g. '14.215 V'; "
     "empty when the alarm has no value."),
    ("bmsgwAlarmThreshold", "SnmpAdminString", "SnmpAdminString", "read-only",
     "The threshold the value crossed, in the same unit; empty when the alarm has none."),
    ("bmsgwAlarmSeverity", "BmsgwSeverity", "BmsgwSeverity", "read-only", "The alarm's severity."),
    ("bmsgwAlarmText", "SnmpAdminString", "SnmpAdminString", "read-only", "The alarm as a sentence for a person."),
    ("bmsgwAlarmRaisedTime", "TimeStamp", "TimeStamp", "read-only",
     "The value of sysUpTime when the alarm was raised; 0 when before the agent started."),
    ("bmsgwAlarmRaisedDate", "DateAndTime", "DateAndTime", "read-only",
     "The date and time (UTC) the alarm was raised."),
    ("bmsgwAlarmVariable", "VariablePointer", "VariablePointer", "read-only",
     "The instance in this MIB that holds the alarm's value (e.g. bmsgwCellOhmic.2.37); 0.0 when none."),
]
SEVERITIES = {"info": 1, "warning": 2, "critical": 3}
NOTIFICATION_COLUMNS = ("bmsgwAlarmId", "bmsgwAlarmObject", "bmsgwAlarmMetric", "bmsgwAlarmValue",
                        "bmsgwAlarmThreshold", "bmsgwAlarmSeverity", "bmsgwAlarmText")

_ALARM_TCS = """BmsgwSeverity ::= TEXTUAL-CONVENTION
    STATUS       current
    DESCRIPTION
            "The severity of an alarm: info, warning (act soon) or critical
            (act now)."
    SYNTAX       INTEGER { info(1), warning(2), critical(3) }
"""

_IDENTITY = """bmsgwMIB MODULE-IDENTITY
    LAST-UPDATED "{updated}"
    ORGANIZATION "bmsgw project"
    CONTACT-INFO
            "bmsgw battery monitoring gateway; see the README of the
            installed package (/usr/share/doc/bmsgw)."
    DESCRIPTION
            "Battery monitoring gateway: the live state of a UPS or data
            center battery bank (strings of monitored batteries, charger,
            room sensors), the gateway's own bus counters, the active
            alarms and the alarm notifications.

            Object identifiers follow the gateway's point map: a point
            family's catalog slot gives its column, so adding strings,
            batteries or sensor types never moves an existing object.
            Values are scaled integers, the same as in the gateway's
            Modbus registers (DISPLAY-HINT gives the decimal places, UNITS
            the displayed unit); a value that is not available reads as
            the not-available code its DESCRIPTION names, never as a
            stale number.

            This module is generated from the point catalog by
            'bmsgw mib'. The module shipped with bmsgw sits at enterprise
            number 32473, which RFC 5612 reserves for documentation; a
            site with its own number sets snmp.base_oid and generates the
            module for it with 'bmsgw mib --base-oid'."
    REVISION     "{updated}"
    DESCRIPTION
            "First version."
    ::= {{ enterprises {base} }}
"""

_NOTIFICATION_TEXT = {
    "bmsgwAlarmRaised": (1, "An alarm was raised. The instance of each object is the alarm's row in "
                            "bmsgwAlarmTable."),
    "bmsgwAlarmCleared": (2, "An alarm cleared; its row has left bmsgwAlarmTable. The objects carry the alarm as "
                             "it was raised, with the value that cleared it."),
}


def _notifications() -> str:
    parts = ["bmsgwNotifications OBJECT IDENTIFIER ::= { bmsgwMIB 0 }\n"]
    objects = ",\n".join(f"        {name}" for name in NOTIFICATION_COLUMNS)
    for name, (num, what) in _NOTIFICATION_TEXT.items():
        parts.append(f"{name} NOTIFICATION-TYPE\n    OBJECTS     {{\n{objects}\n    }}\n    STATUS      current\n"
                     f"    DESCRIPTION\n{_wrap(what)}\n    ::= {{ bmsgwNotifications {num} }}\n")
    return "\n".join(parts)


def mib_text(catalog: Iterable[PointSpec], base_oid: tuple[int, ...] = ENTERPRISES + (DEFAULT_PEN,)) -> str:
    return MibBuilder(catalog, base_oid).text()
