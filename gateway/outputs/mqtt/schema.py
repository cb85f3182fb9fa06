"""The ``mqtt`` config section (its JSON Schema and the checks beyond it) and the gateway's own MQTT figures."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...points import PointSpec

if TYPE_CHECKING:
    from ...config import Config

_file = {"type": "string", "default": "", "maxLength": 4096}
SCHEMA = {
    "mqtt": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "enabled": {"type": "boolean", "default": False},
            "host": {"type": "string", "minLength": 1, "maxLength": 253, "default": "127.0.0.1"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 0,
                     "description": "0: 1883, or 8883 with TLS"},
            "protocol": {"enum": ["3.1.1", "5"], "default": "3.1.1"},
            "client_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{0,64}$", "default": "",
                          "description": "empty: bmsgw-<site id>"},
            "keepalive_s": {"type": "integer", "minimum": 5, "maximum": 3600, "default": 30},
            "username": {"type": "string", "maxLength": 256, "default": ""},
            "password": {"type": "string", "maxLength": 256, "default": "", "writeOnly": True},
            "password_file": {**_file, "description": "read the password from this file instead (keeps it out "
                                                      "of the config)"},
            "tls": {
                "type": "object", "additionalProperties": False, "default": {},
                "properties": {
                    "enabled": {"type": "boolean", "default": False},
                    "ca_file": {**_file, "description": "CA certificate(s) of the broker; empty: the system's"},
                    "cert_file": {**_file, "description": "client certificate (PEM), for brokers that ask"},
                    "key_file": {**_file, "description": "its private key (PEM)"},
                    "insecure": {"type": "boolean", "default": False,
                                 "description": "do not check the broker's host name (testing only)"},
                },
            },
            "topic_prefix": {"type": "string", "pattern": "^[^#+\\x00]{1,64}$", "default": "bmsgw"},
            "layout": {"enum": ["string", "cell"], "default": "string",
                       "description": "string: one message per string with every battery; cell: one per battery"},
            "interval_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 0,
                           "description": "publish every N seconds; 0: every poll cycle (gateway.poll.fast_s)"},
            "retain_values": {"type": "boolean", "default": False},
            "max_inflight": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 64},
            "reconnect_min_s": {"type": "number", "minimum": 0.1, "maximum": 3600, "default": 1},
            "reconnect_max_s": {"type": "number", "minimum": 0.1, "maximum": 3600, "default": 60},
            "discovery": {
                "type": "object", "additionalProperties": False, "default": {},
                "description": "Home Assistant MQTT discovery: retained configs that make the gateway, its strings "
                               "and its batteries Home Assistant devices and entities",
                "properties": {
                    "enabled": {"type": "boolean", "default": False},
                    # a topic level or several, without wildcards and without a leading or trailing slash
                    "prefix": {"type": "string", "pattern": "^[^#+/\\x00]([^#+\\x00]{0,126}[^#+/\\x00])?$",
                               "default": "homeassistant",
                               "description": "Home Assistant's discovery prefix (its MQTT options)"},
                    "batteries": {"type": "boolean", "default": True,
                                  "description": "an entity per battery for voltage, temperature and ohmic value, "
                                                 "announced disabled: enable the ones to watch in Home Assistant"},
                },
            },
            "queue": {
                "type": "object", "additionalProperties": False, "default": {},
                "properties": {
                    "file": {"type": "string", "minLength": 1, "default": "mqtt-queue.sqlite",
                             "description": "relative to gateway.state_dir"},
                    "max_messages": {"type": "integer", "minimum": 1, "maximum": 10000000, "default": 100000},
                    "max_mb": {"type": "number", "exclusiveMinimum": 0, "maximum": 100000, "default": 64},
                },
            },
        },
    },
}

# The uploader's own figures, in the point map like every other value (Modbus, SNMP, Prometheus see them).

POINT_FAMILIES = [
    PointSpec(id="gateway.mqtt_connected", scope="gateway", unit="", slot=30, dtype="uint16", kind="state",
              source="derived", states=((0, "disconnected"), (1, "connected")),
              description="MQTT broker connection"),
    PointSpec(id="gateway.mqtt_queued", scope="gateway", unit="", slot=31, dtype="uint32", source="derived",
              description="MQTT messages waiting to be sent (memory and disk)"),
    PointSpec(id="gateway.mqtt_sent", scope="gateway", unit="", slot=32, dtype="uint32", kind="counter",
              source="derived", description="MQTT messages the broker acknowledged"),
    PointSpec(id="gateway.mqtt_dropped", scope="gateway", unit="", slot=33, dtype="uint32", kind="counter",
              source="derived", description="MQTT messages dropped, oldest first, because the queue was full"),
]


def section_problems(cfg: dict, config: Config) -> list[str]:
    """What ``mqtt`` gets wrong beyond its schema, each as ``key.path: what is wrong``."""
    out = []
    tls = cfg["tls"]
    for key in ("ca_file", "cert_file", "key_file"):
        if tls["enabled"] and tls[key] and not config.resolve(tls[key]).is_file():
            out.append(f"mqtt.tls.{key}: file {config.resolve(tls[key])} does not exist")
    if tls["enabled"] and tls["key_file"] and not tls["cert_file"]:
        out.append("mqtt.tls.cert_file: a client key needs its certificate")
    if cfg["password_file"] and not config.resolve(cfg["password_file"]).is_file():
        out.append(f"mqtt.password_file: file {config.resolve(cfg['password_file'])} does not exist")
    if (cfg["password"] or cfg["password_file"]) and not cfg["username"]:
        out.append("mqtt.username: a password needs a user name")
    return out
