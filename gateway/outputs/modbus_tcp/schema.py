"""The ``modbus_tcp`` config section: its JSON Schema and the face's default bounds."""
from __future__ import annotations

from typing import Any

from ...net.limits import Limits, with_network_keys

SECTION = "modbus_tcp"
MAX_MBAP_LENGTH = 254  # unit id + PDU (at most 253 bytes)

_ADDR = r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?"
# the bounds of the server (gateway.net); a Modbus TCP frame is at most 260 bytes, so no max_request_bytes.
# One SCADA host often holds many connections (a master per process): no per-address bound below the total.
DEFAULT_LIMITS = Limits(max_connections=32, max_connections_per_address=32, idle_timeout_s=300,
                        request_timeout_s=10, send_timeout_s=30, max_request_bytes=6 + MAX_MBAP_LENGTH)
# before the limits object, these three sat at the top of the section: still read (with a warning)
LEGACY_LIMIT_KEYS = {"max_connections": "max_connections", "idle_timeout_s": "idle_timeout_s",
                     "request_timeout_s": "request_timeout_s"}
_SECTION_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "listen": {"type": "string", "default": "127.0.0.1:5020",
                   "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
                   "description": "host:port to listen on ([v6-address]:port for IPv6; port 0 = any free port)"},
        "unit_ids": {"type": "array", "minItems": 1, "maxItems": 256, "uniqueItems": True,
                     "items": {"type": "integer", "minimum": 0, "maximum": 255}, "default": [0, 1, 255],
                     "description": "unit ids answered; they all address the same register map"},
        "unknown_unit": {"enum": ["exception", "ignore"], "default": "exception",
                         "description": "a request for another unit id: exception 0x0B, or no answer at all"},
        "allow_from": {"type": "array", "items": {"type": "string", "pattern": f"^{_ADDR}$"}, "default": [],
                       "description": "client addresses or networks that may connect; empty = any"},
        "identity": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "FC43/14 device identification objects",
            "properties": {
                "vendor_name": {"type": "string", "maxLength": 64, "default": "bmsgw"},
                "product_code": {"type": "string", "maxLength": 32, "default": "BMSGW"},
                "vendor_url": {"type": "string", "maxLength": 64, "default": ""},
                "product_name": {"type": "string", "maxLength": 64, "default": "Battery monitoring gateway"},
                "model_name": {"type": "string", "maxLength": 32, "default": "bmsgw"},
            },
        },
        "writes": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False,
                            "description": "accept FC6/FC16 to the writable registers (the Modbus TCP face's README)"},
                "allow_from": {"type": "array", "items": {"type": "string", "pattern": f"^{_ADDR}$"},
                               "default": [], "description": "client addresses or networks that may write"},
                "role": {"enum": ["operator", "admin"], "default": "operator",
                         "description": "what a write from an allowed client may do: operator (relay, acknowledge, "
                                        "baseline reset, ohmic test) or admin (also the current sensor's zero)"},
            },
        },
    },
}
CONFIG_SCHEMA: dict[str, Any] = with_network_keys(
    _SECTION_SCHEMA, DEFAULT_LIMITS, omit=("max_request_bytes",),
    legacy={key: {"type": "number", "minimum": 0, "description": f"deprecated: modbus_tcp.limits.{new}"}
            for key, new in LEGACY_LIMIT_KEYS.items()})
