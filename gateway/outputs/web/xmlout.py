"""JSON-able data as XML, for clients that ask for ``application/xml``.

Mapping: an object is an element with one child per key (a key that is not a valid XML name becomes
``<entry key="...">``); a list is an element with one ``<item>`` per member; null is an element with
``nil="true"``; true/false are ``true``/``false``.  The root element is ``<response>``.
"""
from __future__ import annotations

import re
from xml.etree import ElementTree as ET

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# characters XML 1.0 cannot carry at all
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _BAD_CHARS.sub("\ufffd", str(value))


def _fill(elem: ET.Element, value) -> None:
    if value is None:
        elem.set("nil", "true")
    elif isinstance(value, dict):
        for key, sub in value.items():
            key = str(key)
            if _NAME.match(key) and not key.lower().startswith("xml"):
                child = ET.SubElement(elem, key)
            else:
                child = ET.SubElement(elem, "entry", key=_text(key))
            _fill(child, sub)
    elif isinstance(value, (list, tuple)):
        for sub in value:
            _fill(ET.SubElement(elem, "item"), sub)
    else:
        elem.text = _text(value)


def to_xml(data, root: str = "response") -> bytes:
    elem = ET.Element(root)
    _fill(elem, data)
    return ET.tostring(elem, encoding="utf-8", xml_declaration=True)
