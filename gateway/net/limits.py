"""What one client may hold of a network face: the ``limits`` object every TCP face's config section takes.

One set of key names and meanings for every face (Modbus TCP, web, Prometheus, and the faces to come); each
face gives its own defaults.  The bounded server (``gateway.net.server``) enforces them.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import resource
from dataclasses import dataclass
from typing import Any

from ..config import parse_networks
from ..errors import ConfigError

log = logging.getLogger(__name__)

ADDRESS_PATTERN = r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"
ALLOW_FROM_SCHEMA: dict[str, Any] = {
    "type": "array", "items": {"type": "string", "pattern": ADDRESS_PATTERN}, "default": [], "maxItems": 256,
    "description": "client addresses or networks that may connect (e.g. 10.0.0.0/8); empty = any",
}


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one face's TCP server.  A timeout of 0 means never (where the schema allows it)."""

    max_connections: int = 32
    max_connections_per_address: int = 8
    idle_timeout_s: float = 300.0
    request_timeout_s: float = 10.0
    send_timeout_s: float = 30.0
    max_request_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"limits.{f.name}: expected a number >= 0, got {value!r}")
        if self.max_connections < 1 or self.max_connections_per_address < 1 or self.max_request_bytes < 1:
            raise ValueError("max_connections, max_connections_per_address and max_request_bytes must be >= 1")
        if self.request_timeout_s <= 0 or self.send_timeout_s <= 0:
            raise ValueError("request_timeout_s and send_timeout_s must be above 0: a client is never waited for "
                             "without end")

    def replace(self, **changes: Any) -> Limits:
        return dataclasses.replace(self, **changes)


LIMIT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Limits))

# the meaning of each key, the same for every face; the bounds are what the server can honour
_KEY_SCHEMAS: dict[str, dict[str, Any]] = {
    "max_connections": {
        "type": "integer", "minimum": 1, "maximum": 4096,
        "description": "open connections at most; when all are taken, a new client replaces one that has not "
                       "completed a request (one that stalled first), and is refused when every open one has "
                       "completed one (a client that was served is never dropped for a newcomer); a burst of "
                       "newcomers may be let in over it (as many again, 64 at most) until the server has heard "
                       "them (docs/faces.md)"},
    "max_connections_per_address": {
        "type": "integer", "minimum": 1, "maximum": 4096,
        "description": "open connections from one client address; more are refused at once"},
    "idle_timeout_s": {
        "type": "number", "minimum": 0, "maximum": 86400,
        "description": "close a connection that completed no request for this long (before its first one or "
                       "between two; 0 = never)"},
    "request_timeout_s": {
        "type": "number", "minimum": 0.1, "maximum": 3600,
        "description": "a request (with TLS, the handshake too) must arrive whole this long after its first byte, "
                       "else the connection is closed (a slow or broken client)"},
    "send_timeout_s": {
        "type": "number", "minimum": 0.1, "maximum": 3600,
        "description": "close a connection whose client has not taken its answer for this long (it stopped "
                       "reading)"},
    "max_request_bytes": {
        "type": "integer", "minimum": 256, "maximum": 64 * 1024 * 1024,
        "description": "the largest request the face reads (HTTP: the body; the request line and headers are "
                       "bounded at 64 KiB of their own); larger ones are refused"},
}


def limits_schema(defaults: Limits, omit: tuple[str, ...] = (), ignored: tuple[str, ...] = (),
                  description: str = "") -> dict[str, Any]:
    """The ``limits`` object of a face's section, with the face's ``defaults``; ``omit``: keys the face's protocol
    fixes itself (e.g. Modbus TCP frames are at most 260 bytes, so it takes no ``max_request_bytes``);
    ``ignored``: keys of an earlier version that are still accepted, and ignored with a warning."""
    props = {}
    for key in LIMIT_KEYS:
        if key in omit:
            continue
        sub = copy.deepcopy(_KEY_SCHEMAS[key])
        sub["default"] = getattr(defaults, key)
        if "maximum" in sub and sub["default"] > sub["maximum"]:
            sub["maximum"] = sub["default"]
        props[key] = sub
    for key in ignored:
        props[key] = {"type": "number", "deprecated": True, "description": "no longer used (ignored)"}
    return {"type": "object", "additionalProperties": False, "default": {},
            "description": description or "what one client may hold of this face's server "
                                          "(docs/faces.md: Bounded serving)",
            "properties": props}


def with_network_keys(section_schema: dict[str, Any], defaults: Limits, omit: tuple[str, ...] = (),
                      legacy: dict[str, dict[str, Any]] | None = None,
                      ignored: tuple[str, ...] = ()) -> dict[str, Any]:
    """``section_schema`` (a face's section, an object) with ``limits`` and, unless it has one, ``allow_from``.

    ``legacy``: deprecated keys of the section that are still accepted (their schema, without a default, so
    that a key a user wrote can be told from one nobody wrote); ``limits_from_section`` maps them.
    """
    out = copy.deepcopy(section_schema)
    props = out.setdefault("properties", {})
    props["limits"] = limits_schema(defaults, omit, ignored)
    props.setdefault("allow_from", copy.deepcopy(ALLOW_FROM_SCHEMA))
    for key, sub in (legacy or {}).items():
        props[key] = {**{k: v for k, v in sub.items() if k != "default"}, "deprecated": True}
    return out


def limits_from_section(section: dict[str, Any], defaults: Limits, face: str, src: str = "config",
                        legacy: dict[str, str] | None = None, ignored: tuple[str, ...] = ()) -> Limits:
    """The face's ``Limits`` from its (validated, defaults filled) section.

    ``legacy`` maps a deprecated key path of the section (``"max_connections"``, ``"api.max_body_kib"``) to the
    ``limits`` key it moved to; a value written under the old name wins over the default and is logged once,
    with where it now lives.  A value given under both names is refused.
    """
    given = dict(section.get("limits") or {})
    values = {k: given.get(k, getattr(defaults, k)) for k in LIMIT_KEYS}
    for key in ignored:
        if key in given:
            log.warning("%s: %s.limits.%s is no longer used (ignored): remove it", src, face, key)
    for old, new in (legacy or {}).items():
        present, value = _lookup(section, old)
        if not present:
            continue
        if old.endswith("_kib"):
            value = int(value) * 1024
        if value == 0 and _KEY_SCHEMAS[new].get("minimum", 0) > 0:  # "0 = never" is no longer offered
            log.warning("%s: %s.%s: 0 (never) now means the longest allowed, %g s", src, face, old,
                        _KEY_SCHEMAS[new]["maximum"])
            value = _KEY_SCHEMAS[new]["maximum"]
        # the section comes with its defaults filled in: a limits value other than the default was written
        if values[new] != getattr(defaults, new) and values[new] != value:
            raise ConfigError(src, f"{face}.{old}", f"given twice, differently: also as {face}.limits.{new}; "
                                                    "keep only that one")
        values[new] = value
        log.warning("%s: %s.%s is deprecated: write it as %s.limits.%s (same meaning)", src, face, old, face, new)
    try:
        return Limits(**values)
    except ValueError as exc:
        raise ConfigError(src, f"{face}.limits", str(exc)) from None


def _lookup(section: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = section
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


MAX_OPEN_FILES = 65536  # what the process asks for at most (every face at its schema's maximum, twice, fits)


def raise_open_files_limit() -> int:
    """Raise the process's soft limit on open files to its hard one (``MAX_OPEN_FILES`` at most); returns the
    soft limit now in force.

    The soft limit (1024 unless raised, under systemd too) is there for programs that wait with select(); the
    faces and the buses wait with epoll and poll (paho-mqtt's thread excepted: docs/faces.md), and the faces
    together may hold more connections than that: each face its ``max_connections``, and in a burst as many
    again (64 at most).  Past the limit a face stops accepting for a second at a time, and a serial port or
    the history database cannot be opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, want, exc)
    return soft


def allow_from(section: dict[str, Any], face: str, src: str = "config") -> list:
    """The section's ``allow_from`` as networks (a ConfigError names the bad item)."""
    return parse_networks(section.get("allow_from") or [], src, f"{face}.allow_from")
