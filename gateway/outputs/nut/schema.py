"""The ``nut`` config section: its JSON Schema and the face's default bounds."""
from __future__ import annotations

from typing import Any

from ...net.limits import Limits, with_network_keys

SECTION = "nut"
# The longest request line read (without its newline).  NUT's own parser cuts every word at 512 characters, and
# a client says no more than ``SET VAR <ups> <var> "<value>"``; a longer line is answered ERR INVALID-ARGUMENT
# and the connection closed.
MAX_LINE_BYTES = 512
# upsd closes a client silent for 60 s; upsmon polls every POLLFREQ (5 s by default) on one connection and
# reconnects when dropped.  A NAS, a hypervisor or two and Home Assistant hold a connection each.
DEFAULT_LIMITS = Limits(max_connections=32, max_connections_per_address=8, idle_timeout_s=60,
                        request_timeout_s=10, send_timeout_s=30, max_request_bytes=MAX_LINE_BYTES)
LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"

_USER: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name", "password_hash"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$",
                 "description": "the user name a client sends (upsmon.conf MONITOR ... <user> <password> secondary)"},
        "password_hash": {"type": "string", "pattern": r"^\$argon2(id|i|d)\$", "maxLength": 512,
                          "description": "an argon2 hash of the password: `bmsgw user hash`"},
        "upsmon": {"enum": ["secondary"], "default": "secondary",
                   "description": "what the user may do: `secondary` lets an upsmon LOGIN to a device (counted in "
                                  "NUMLOGINS); there is no primary (no FSD, no writes, no commands)"},
    },
}

_SECTION_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": False,
                    "description": "serve the bank with the Network UPS Tools protocol (upsc, upsmon, NAS, Home "
                                   "Assistant); read-only.  Off unless the config turns it on, so an upgraded "
                                   "installation does not start serving (or fight a local upsd for port 3493)"},
        "listen": {"type": "string", "pattern": LISTEN_PATTERN, "default": "127.0.0.1:3493",
                   "description": "host:port ([v6-address]:port); 3493 is NUT's port, 0.0.0.0:3493 for the LAN"},
        "users": {"type": "array", "items": _USER, "default": [], "maxItems": 100,
                  "description": "who may LOGIN (what upsmon does); reading needs no user, as with upsd"},
        "bank_name": {"type": "string", "pattern": DEVICE_NAME_PATTERN, "default": "bank",
                      "description": "the device name of the whole bank (`upsc bank@host`); the strings are "
                                     "string1 ... stringN"},
        "device": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "device.mfr / device.model / device.serial of the bank (a string's device.model is its "
                           "battery model)",
            "properties": {
                "mfr": {"type": "string", "maxLength": 64, "default": "bmsgw"},
                "model": {"type": "string", "maxLength": 64, "default": "Battery monitoring gateway"},
                "serial": {"type": "string", "maxLength": 64, "default": "",
                           "description": "empty: device.serial is not served"},
            },
        },
        "low_battery": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "when ups.status says LB (battery.charge.low / battery.runtime.low); OB LB is what "
                           "makes upsmon shut its host down",
            "properties": {
                "charge_pct": {"type": "number", "minimum": 0, "maximum": 100, "default": 20,
                               "description": "LB when battery.charge is at or below this"},
                "runtime_s": {"type": "integer", "minimum": 0, "maximum": 864000, "default": 300,
                              "description": "LB, on battery, when battery.runtime is at or below this"},
            },
        },
        "per_battery": {"type": "boolean", "default": True,
                        "description": "serve experimental.battery.N.* (voltage, temperature, ohmic, soh, alarm) "
                                       "on each string's device"},
        "tls": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "STARTTLS: with cert/key, or else with the web face's certificate when web.tls is on",
            "properties": {
                "enabled": {"type": "boolean", "default": True,
                            "description": "offer STARTTLS when a certificate is available (NUT clients try it "
                                           "and carry on in clear when it is not offered)"},
                "cert": {"type": "string", "default": "", "description": "PEM certificate (chain); empty: the "
                                                                          "web face's"},
                "key": {"type": "string", "default": "", "description": "PEM private key of cert"},
            },
        },
    },
}
# a NUT request is one line: the line bound is the protocol's, not a setting
CONFIG_SCHEMA: dict[str, Any] = with_network_keys(_SECTION_SCHEMA, DEFAULT_LIMITS, omit=("max_request_bytes",))
