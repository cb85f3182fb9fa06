"""The EDE export: B.I.G.-EU's Engineering Data Exchange file set (layout 2.3) of the objects the face serves.

Integrators import it into their BMS instead of discovering 1,500 objects over the wire: ``<name>_EDE.csv``
lists every object (16 semicolon-separated columns), ``<name>_StateTexts.csv`` the state texts its binary
and multi-state objects refer to.  Object-type and unit codes are BACnet's (from the library's enumerations);
the vendor-specific-address column carries the point's Modbus register, so the two maps can be cross-checked.
"""
from __future__ import annotations

import time
from pathlib import Path

from bacpypes3.basetypes import EngineeringUnits
from bacpypes3.primitivedata import ObjectType

from ... import __version__
from .objects import ANALOG_INPUT, BINARY_OUTPUT, ObjectPlan

SEPARATOR = ";"
COLUMNS = ("keyname", "device obj.-instance", "object-name", "object-type", "object-instance", "description",
           "present-value-default", "min-present-value", "max-present-value", "settable", "supports COV",
           "hi-limit", "low-limit", "state-text-reference", "unit-code", "vendor-specific-address")
ABBREVIATION = {"analog-input": "AI", "binary-input": "BI", "binary-output": "BO", "multi-state-input": "MSI",
                "device": "DEV", "notification-class": "NC", "network-port": "NP"}


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace(SEPARATOR, ",").replace("\n", " ").replace("\r", " ")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def ede_files(plans: list[ObjectPlan], device_instance: int, device_name: str, project: str,
              extra: list[tuple[str, int, str, str]]) -> tuple[str, str]:
    """(the EDE table, the state-text table) as text.  ``extra``: (type, instance, name, description) of the
    objects that serve no point (device, notification class, network port)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = ["#Engineering-Data-Exchange - B.I.G.-EU", f"PROJECT_NAME;{_cell(project)}", "VERSION_OF_REFERENCEFILE;1",
             f"TIMESTAMP_OF_LAST_CHANGE;{stamp}", f"AUTHOR_OF_LAST_CHANGE;bmsgw {__version__}",
             "VERSION_OF_LAYOUT;2.3", "#" + SEPARATOR.join(["mandatory"] * 5 + ["optional"] * 11),
             "# " + SEPARATOR.join(COLUMNS)]
    texts: dict[tuple[str, ...], int] = {}
    rows = [("device", device_instance, device_name, "BACnet/IP face of bmsgw", None)]
    rows += [(kind, instance, name, description, None) for kind, instance, name, description in extra
             if kind != "device"]
    for kind, instance, name, description, _ in rows:
        lines.append(SEPARATOR.join(_cell(c) for c in (
            f"{ABBREVIATION[kind]}:{instance}", device_instance, name, int(ObjectType(kind)), instance, description,
            "", "", "", "N", "N", "", "", "", "", "")))
    for plan in plans:
        reference = ""
        if plan.state_texts:
            reference = str(texts.setdefault(plan.state_texts, len(texts) + 1))
        unit = int(EngineeringUnits(plan.units)) if plan.type == ANALOG_INPUT else ""
        lines.append(SEPARATOR.join(_cell(c) for c in (
            f"{ABBREVIATION[plan.type]}:{plan.instance}", device_instance, plan.name, int(ObjectType(plan.type)),
            plan.instance, plan.description, "", _number(plan.min_value), _number(plan.max_value),
            "Y" if plan.type == BINARY_OUTPUT else "N", "Y", "", "", reference, unit, plan.entry.address)))
    width = max((len(t) for t in texts), default=2)
    state_lines = ["#State Text Reference",
                   "#" + SEPARATOR.join(["Reference Number", "Text 1 or Inactive-Text", "Text 2 or Active-Text"]
                                        + [f"Text {i}" for i in range(3, width + 1)])]
    for state_texts, number in texts.items():
        state_lines.append(SEPARATOR.join([str(number), *(_cell(t) for t in state_texts)]))
    return "\r\n".join(lines) + "\r\n", "\r\n".join(state_lines) + "\r\n"


def state_texts_path(ede_path: Path) -> Path:
    """``site_EDE.csv`` -> ``site_StateTexts.csv`` (the file-set naming); any other name gets the suffix."""
    stem = ede_path.stem
    stem = stem[:-4] if stem.upper().endswith("_EDE") else stem
    return ede_path.with_name(f"{stem}_StateTexts{ede_path.suffix or '.csv'}")
