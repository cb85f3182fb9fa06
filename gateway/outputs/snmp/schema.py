"""The ``snmp`` config section: its JSON Schema and the checks beyond it."""
from __future__ import annotations

from ...config import parse_listen, parse_networks
from ...errors import ConfigError

DEFAULT_ENTITY_SENSORS = ["io.ambient_temperature", "io.ambient_humidity", "bank.voltage", "bank.charger_current",
                          "string.voltage", "string.current", "cell.voltage", "cell.temperature"]
_KEY = {"type": "string", "minLength": 8, "maxLength": 256, "writeOnly": True}

SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "listen": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]*:[0-9]{1,5}$",
                   "default": "127.0.0.1:1161",
                   "description": "UDP HOST:PORT (IPv4) the agent answers on; 0.0.0.0 for every interface"},
        "base_oid": {"type": "string", "pattern": r"^1\.3\.6\.1\.4\.1(\.[0-9]{1,10}){1,8}$",
                     "default": "1.3.6.1.4.1.32473",
                     "description": "the MIB's root: enterprises.<your PEN>; 32473 is the RFC 5612 documentation PEN"},
        "engine_id": {"type": ["string", "null"], "pattern": r"^(0x)?([0-9A-Fa-f]{2}){5,32}$", "default": None,
                      "description": "SNMPv3 engine ID in hex; default: generated once and kept in the state folder"},
        "v2c": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "community": {"type": ["string", "null"], "minLength": 1, "maxLength": 64, "default": None,
                              "description": "read-only community; null turns SNMPv2c off (SNMPv1 is never "
                                             "answered)"},
                "allow_from": {"type": "array", "maxItems": 64, "default": [],
                               "items": {"type": "string", "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"},
                               "description": "addresses or networks whose community requests are answered; "
                                              "empty = any.  SNMPv3 requests are not affected"},
            },
        },
        "v3_users": {
            "type": "array", "maxItems": 16, "default": [],
            "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "auth_key", "priv_key"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,32}$"},
                    "auth": {"enum": ["sha", "sha224", "sha256", "sha384", "sha512"], "default": "sha256"},
                    "auth_key": _KEY,
                    "priv": {"enum": ["aes", "aes128", "aes192", "aes256", "aes192c", "aes256c"], "default": "aes128"},
                    "priv_key": _KEY,
                    "key_format": {"enum": ["passphrase", "master"], "default": "passphrase",
                                   "description": "master: the keys are hex master keys (bmsgw snmp-key), "
                                                  "not passphrases"},
                    "role": {"enum": ["viewer", "operator", "admin"], "default": "viewer",
                             "description": "what the user may do: viewer reads; operator and admin may also "
                                            "SET commands (acknowledge, baseline reset, relay ...) when "
                                            "snmp.writes.enabled is on"},
                },
            },
        },
        "system": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "name": {"type": "string", "maxLength": 255, "default": "",
                         "description": "sysName; default: site.name"},
                "contact": {"type": "string", "maxLength": 255, "default": ""},
                "location": {"type": "string", "maxLength": 255, "default": ""},
                "description": {"type": "string", "maxLength": 255, "default": ""},
            },
        },
        "writes": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False,
                            "description": "accept SET from SNMPv3 users whose role is operator or admin (never "
                                           "from SNMPv2c communities)"},
            },
        },
        "max_bulk_varbinds": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 64,
                              "description": "cap on the varbinds of one GETBULK answer"},
        "fast_path": {"type": "boolean", "default": True,
                      "description": "answer SNMPv2c reads from pre-encoded varbinds (same bytes as pysnmp, faster)"},
        "ups": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "the UPS-MIB (RFC 1628) for the bank: see the SNMP face's README",
            "properties": {
                "low_minutes_remaining": {"type": "number", "minimum": 1, "maximum": 1440, "default": 5,
                                          "description": "upsConfigLowBattTime (minutes): batteryLow when the "
                                                         "estimated run time is at or below it; an SNMP SET "
                                                         "(gateway.ups_low_battery_time) overrides it until this "
                                                         "value is edited"},
                "low_charge_percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100, "default": None,
                                       "description": "also batteryLow at or below this charge; off by default "
                                                      "(RFC 1628 ties batteryLow to the run time alone)"},
                "depleted_charge_percent": {"type": "number", "minimum": 0, "maximum": 100, "default": 10,
                                            "description": "batteryDepleted at or below this charge (and under one "
                                                           "minute of run time)"},
                "typical_load_a": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 100000,
                                   "default": None,
                                   "description": "the bank's discharge current (A, all strings) when mains fail, "
                                                  "for upsEstimatedMinutesRemaining while no string discharges; "
                                                  "null: the last discharge's current, else the capacity's rated "
                                                  "(C20) current"},
                "ident": {
                    "type": "object", "additionalProperties": False, "default": {},
                    "properties": {
                        "manufacturer": {"type": "string", "maxLength": 31, "default": "",
                                         "description": "upsIdentManufacturer; default: bmsgw"},
                        "model": {"type": "string", "maxLength": 63, "default": "",
                                  "description": "upsIdentModel; default: the bank's strings and battery model"},
                        "name": {"type": "string", "maxLength": 63, "default": "",
                                 "description": "upsIdentName; default: snmp.system.name, else site.name"},
                        "attached_devices": {"type": "string", "maxLength": 63, "default": "",
                                             "description": "upsIdentAttachedDevices: what the UPS feeds"},
                    },
                },
                "notifications": {"type": "boolean", "default": True,
                                  "description": "send upsTrapAlarmEntryAdded/Removed and upsTrapOnBattery (every "
                                                 "minute on battery) to snmp.notifications.targets"},
            },
        },
        "entity_sensors": {"type": "array", "items": {"type": "string"}, "default": DEFAULT_ENTITY_SENSORS,
                           "description": "point families published as ENTITY-SENSOR-MIB sensors"},
        "notifications": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "targets": {
                    "type": "array", "maxItems": 16, "default": [],
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["host"],
                        "properties": {
                            "host": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,253}$",
                                     "description": "IPv4 address or host name of the receiver"},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 162},
                            "version": {"enum": ["v2c", "v3"], "default": "v2c"},
                            "community": {"type": "string", "minLength": 1, "maxLength": 64},
                            "user": {"type": "string", "description": "a name from snmp.v3_users"},
                            "type": {"enum": ["trap", "inform"],
                                     "description": "default: trap for v2c, inform for v3"},
                            "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 60, "default": 3},
                            "retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
                        },
                    },
                },
            },
        },
    },
}


def section_problems(cfg: dict, source: str) -> list[str]:
    """Cross-field rules the schema cannot say, each as ``key.path: what is wrong``."""
    out = []
    users = {u["name"] for u in cfg["v3_users"]}
    for i, target in enumerate(cfg["notifications"]["targets"]):
        where = f"snmp.notifications.targets[{i}]"
        if target["version"] == "v2c" and not target.get("community"):
            out.append(f"{where}.community: a v2c target needs a community")
        if target["version"] == "v3" and target.get("user") not in users:
            known = ", ".join(sorted(users)) or "none"
            out.append(f"{where}.user: a v3 target needs a user from snmp.v3_users (known: {known})")
    try:
        parse_listen(cfg["listen"])
    except ValueError as exc:
        out.append(f"snmp.listen: {exc}")
    try:
        parse_networks(cfg["v2c"]["allow_from"], source, "snmp.v2c.allow_from")
    except ConfigError as exc:
        out.append(f"{exc.path}: {exc.message}")
    return out
