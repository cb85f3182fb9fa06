"""JSON-able data as XML, for clients that ask for ``application/xml``.

Mapping: an object is an element with one child per key (a key that is not a valid XML name becomes
``<entry key="...">``); a list is an element with one ``<item>`` per member; null is an element with
``nil="true"``; true/false are ``true``/``false``.  The root element is ``<response>``.
"""
from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# characters XML 1.0 cannot carry at all
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    return escape(_BAD_CHARS.sub("\ufffd", str(value)))


def _tag(key) -> tuple[str, str]:
    """(open tag, close tag) for an object key."""
    key = str(key)
    if _NAME.match(key) and not key.lower().startswith("xml"):
        return f"<{key}", f"</{key}>"
    return f"<entry key={quoteattr(_BAD_CHARS.sub(chr(0xFFFD), key))}", "</entry>"


def _emit(out: list, open_tag: str, close_tag: str, value) -> None:
    if value is None:
        out.append(open_tag + ' nil="true"/>')
    elif isinstance(value, dict):
        out.append(open_tag + ">")
        for key, sub in value.items():
            o, c = _tag(key)
            _emit(out, o, c, sub)
        out.append(close_tag)
    elif isinstance(value, (list, tuple)):
        out.append(open_tag + ">")
        for sub in value:
            _emit(out, "<item", "</item>", sub)
        out.append(close_tag)
    else:
        out.append(f"{open_tag}>{_text(value)}{close_tag}")


def to_xml(data, root: str = "response") -> bytes:
    out = ["<?xml version='1.0' encoding='utf-8'?>\n"]
    _emit(out, f"<{root}", f"</{root}>", data)
    return "".join(out).encode("utf-8")
