"""The ``bacnet`` config section: its JSON Schema and the checks beyond it."""
from __future__ import annotations

import ipaddress
from typing import Any

from .objects import DEFAULT_BANK_POINTS, DEFAULT_BATTERY_POINTS, DEFAULT_STRING_POINTS

SECTION = "bacnet"
DEFAULT_PORT = 47808
_ADDR = r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?"
_FAMILIES = {"type": "array", "maxItems": 64, "uniqueItems": True,
             "items": {"type": "string", "pattern": r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"}}

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": False},
        "address": {"type": "string", "default": "127.0.0.1/8",
                    "pattern": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$",
                    "description": "the controller's IPv4 address on the BMS network with its prefix length, e.g. "
                                   "192.168.10.20/24: the face binds it and hears the subnet's broadcasts (Who-Is) "
                                   "on the broadcast address that follows from it"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": DEFAULT_PORT,
                 "description": "UDP port; 47808 (0xBAC0) is BACnet/IP's"},
        "device": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "instance": {"type": "integer", "minimum": 0, "maximum": 4194302, "default": 1001,
                             "description": "the device object's instance: unique on the whole BACnet internetwork"},
                "name": {"type": "string", "maxLength": 64, "default": "",
                         "description": "object-name of the device (unique on the internetwork); default: "
                                        "bmsgw-<site.id>"},
                "vendor_name": {"type": "string", "minLength": 1, "maxLength": 64, "default": "bmsgw"},
                "vendor_identifier": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 999,
                                      "description": "the ASHRAE-assigned vendor identifier to announce (999 is the "
                                                     "number BACpypes' samples use, not one assigned to bmsgw)"},
                "model_name": {"type": "string", "minLength": 1, "maxLength": 64, "default": "bmsgw"},
                "location": {"type": "string", "maxLength": 128, "default": ""},
                "description": {"type": "string", "maxLength": 128, "default": "",
                                "description": "default: site.name"},
            },
        },
        "objects": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "strings": {**_FAMILIES, "default": DEFAULT_STRING_POINTS,
                            "description": "string families served per string (an *.alarm_level family as one "
                                           "binary-input per severity)"},
                "bank": {**_FAMILIES, "default": DEFAULT_BANK_POINTS,
                         "description": "bank (charger, room I/O) families, one object per channel"},
                "batteries": {"type": "boolean", "default": True,
                              "description": "serve battery_points for every battery (3 x 480 = 1,440 objects for "
                                             "the default bank)"},
                "battery_points": {**_FAMILIES, "default": DEFAULT_BATTERY_POINTS},
            },
        },
        "cov_increments": {
            "type": "object", "default": {}, "maxProperties": 64,
            "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e9},
            "description": "cov-increment of analog-inputs by point family (cell.voltage: 0.05) or by unit (V: 0.2); "
                           "what is not named keeps the built-in value (README beside the face)"},
        "cov": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "max_subscriptions": {"type": "integer", "minimum": 0, "maximum": 4096, "default": 256,
                                      "description": "SubscribeCOV subscriptions held at once, all clients"},
                "max_lifetime_s": {"type": "integer", "minimum": 60, "maximum": 604800, "default": 86400,
                                   "description": "a subscription asking for more (or for an indefinite one, "
                                                  "lifetime 0) is held this long; the client renews it"},
            },
        },
        "notifications": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "intrinsic reporting of the alarm binary-inputs: event notifications to these recipients "
                           "(notification-class 1)",
            "properties": {
                "recipients": {
                    "type": "array", "maxItems": 16, "default": [],
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["address"],
                        "properties": {
                            "address": {"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(:[0-9]{1,5})?$",
                                        "description": "the BMS workstation's B/IP address, IPv4[:port]"},
                            "process_identifier": {"type": "integer", "minimum": 0, "maximum": 4294967295,
                                                   "default": 1},
                            "confirmed": {"type": "boolean", "default": False},
                        },
                    },
                },
                "priority": {"type": "array", "minItems": 3, "maxItems": 3, "default": [100, 100, 200],
                             "items": {"type": "integer", "minimum": 0, "maximum": 255},
                             "description": "event priority of to-offnormal, to-fault and to-normal"},
            },
        },
        "writes": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False,
                            "description": "serve writable points (the relay io.do) as binary-outputs that take "
                                           "WriteProperty; off: they are read-only binary-inputs"},
                "allow_from": {"type": "array", "items": {"type": "string", "pattern": f"^{_ADDR}$"},
                               "default": [], "description": "client addresses or networks that may write"},
                "role": {"enum": ["operator", "admin"], "default": "operator",
                         "description": "the role a write from an allowed client has (see Gateway.write)"},
            },
        },
        "max_request_values": {"type": "integer", "minimum": 16, "maximum": 100000, "default": 2000,
                               "description": "property values one ReadPropertyMultiple may ask for (`all` counts "
                                              "every property of the object); more is aborted (apdu-too-long)"},
    },
}


def address_problems(cfg: dict) -> list[str]:
    try:
        iface = ipaddress.IPv4Interface(cfg["address"])
    except ValueError as exc:
        return [f"bacnet.address: {exc}"]
    if iface.ip.is_unspecified or iface.ip == iface.network.broadcast_address and iface.network.prefixlen < 31:
        return [f"bacnet.address: {cfg['address']} is not an interface address: BACnet/IP needs the controller's "
                "own address (its I-Am carries it) and prefix, e.g. 192.168.10.20/24"]
    return []
