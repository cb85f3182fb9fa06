"""The configuration file: validated against a JSON Schema (core sections here, face sections from plugins).

Errors name the file, the key path and what was expected, so `bmsgw check-config` can be acted on.
"""
from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from .errors import ConfigError, key_path
from .profiles import DeviceProfile, check_size, load_yaml, non_finite, schema_error
from .topology import MAX_BUSES, MAX_CELLS, MAX_STRINGS, BatteryConfig, BusConfig, DeviceConfig, StringConfig, Topology

_device_item = {
    "type": "object",
    "required": ["profile", "bus", "address"],
    "additionalProperties": False,
    "properties": {
        "profile": {"type": "string", "minLength": 1},
        "bus": {"type": "string", "minLength": 1},
        "address": {"type": "integer", "minimum": 1, "maximum": 247},
        "count": {"type": "integer", "minimum": 1, "maximum": MAX_CELLS,
                  "description": "cell sensors at consecutive addresses, one per cell"},
        "first_cell": {"type": "integer", "minimum": 1, "maximum": MAX_CELLS, "default": 1},
        "name": {"type": "string", "maxLength": 64, "default": ""},
    },
}

# the fields of gateway.sim.model.SensorErrors a config may set (numbers; offsets per string are their own keys)
_SENSOR_ERROR_KEYS = (
    "current_offset_max_a", "current_gain_pct", "current_noise_a", "current_drift_a_per_c", "voltage_gain_pct",
    "voltage_step_v", "voltage_noise_pct", "string_voltage_gain_pct", "bank_voltage_gain_pct",
    "temperature_offset_c", "temperature_noise_c", "ohmic_repeatability_pct", "ohmic_repeatability_ohm",
    "ohmic_conformity_pct", "ohmic_conformity_ohm")

CORE_SCHEMA: dict[str, Any] = {
    "site": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "name": {"type": "string", "maxLength": 100, "default": "Battery room"},
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$", "default": "site"},
        },
    },
    "gateway": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "state_dir": {"type": "string", "default": "var",
                          "description": "writable data directory (relative to the config file)"},
            "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"], "default": "INFO"},
            "poll": {
                "type": "object", "additionalProperties": False, "default": {},
                "properties": {
                    "fast_s": {"type": "number", "minimum": 0, "maximum": 3600, "default": 5},
                    "slow_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 300},
                    "stale_after_cycles": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
                    "lost_retry_s": {"type": "number", "minimum": 0, "maximum": 3600, "default": 10,
                                     "description": "how often a device that stopped answering is tried again"},
                },
            },
            "discovery": {
                "type": "object", "additionalProperties": False, "default": {},
                "properties": {
                    "on_start": {"type": "boolean", "default": False,
                                 "description": "scan every bus before polling and compare with the config"},
                    "ids": {"type": "string", "pattern": "^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$", "default": "1-247"},
                    "adopt": {"type": "boolean", "default": True,
                              "description": "poll a sensor at its new address when it was readdressed and "
                                             "cannot be confused with another (one of its model missing, one new)"},
                    "search": {"type": "boolean", "default": True,
                               "description": "while a device is lost, look for it at the addresses (of `ids`) "
                                              "nobody is polled at, in the bus's idle time (at most 5 % of a busy "
                                              "bus), and adopt it there as `adopt` says"},
                    "search_every_s": {"type": "number", "minimum": 1, "maximum": 86400, "default": 300,
                                       "description": "rest between two searches while a device stays lost"},
                },
            },
        },
    },
    "plugins": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "dirs": {"type": "array", "items": {"type": "string"}, "default": [],
                     "description": "folders holding third-party plugin folders"},
            "profile_dirs": {"type": "array", "items": {"type": "string"}, "default": [],
                             "description": "extra folders of YAML profiles; later ones override earlier ones"},
            "disable": {"type": "array", "items": {"type": "string"}, "default": []},
        },
    },
    "simulator": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "enabled": {"type": "boolean", "default": False,
                        "description": "run the built-in simulated bank on pseudo-terminals for buses whose port "
                                       "is 'sim'"},
            "seed": {"type": "integer", "default": 1},
            "wire_time": {"type": "boolean", "default": True,
                          "description": "answer no faster than the baud rate allows"},
            "time_scale": {"type": "number", "minimum": 0.01, "maximum": 100000, "default": 1.0},
            "weak_cells": {"type": "integer", "minimum": 0, "maximum": 50, "default": 3},
            "discharge_every_s": {"type": "number", "minimum": 0, "default": 0,
                                  "description": "start a discharge event this often (simulated seconds); 0 = never"},
            "discharge_duration_s": {"type": "number", "minimum": 0, "default": 1800},
            "ohmic_test_interval_s": {"type": "number", "minimum": 60, "default": 86400,
                                      "description": "the cell sensors run an ohmic test this often (simulated "
                                                     "seconds) and report its result until the next one"},
            "sensor_errors": {
                "description": "the datasheets' sensor errors (docs/simulator.md): true, false (perfect "
                               "sensors), or a mapping overriding some of them",
                "default": True,
                "oneOf": [{"type": "boolean"}, {
                    "type": "object", "additionalProperties": False,
                    "properties": {k: {"type": "number", "minimum": 0, "maximum": 100} for k in _SENSOR_ERROR_KEYS}}],
            },
            "current_offset_a": {"type": ["number", "null"], "minimum": -100, "maximum": 100, "default": None,
                                 "description": "zero offset of every string's hall current sensor (A); null: each "
                                                "sensor has its own, within +-current_offset_max_a"},
            "current_offsets": {"type": "object", "default": {}, "additionalProperties": False,
                                "patternProperties": {"^[1-9][0-9]?$": {"type": "number", "minimum": -100,
                                                                        "maximum": 100}},
                                "description": "per string id: that string sensor's zero offset (A)"},
            "backfill_days": {"type": "number", "minimum": 0, "maximum": 3650, "default": 0,
                              "description": "the first start of a simulated bank back-fills this many days of "
                                             "simulated history through the recording, analytics and alarms "
                                             "(docs/simulator.md, the lived-in demo); 0 = off; never with a real bus"},
            "scenarios": {
                "type": "array", "maxItems": 32, "default": [],
                "description": "events the simulated bank goes through: a thermal runaway, a stuck sensor, a "
                               "sensor out of its range, a mains failure (the strings discharge at `value` A, or "
                               "their string alone) and the mains' return",
                "items": {
                    "type": "object", "additionalProperties": False, "required": ["kind"],
                    "properties": {
                        "kind": {"enum": ["thermal_runaway", "stuck", "out_of_range", "mains_failure",
                                          "mains_return"]},
                        "after_s": {"type": "number", "minimum": 0, "default": 0,
                                    "description": "simulated seconds after the simulator starts"},
                        "string": {"type": "integer", "minimum": 1, "maximum": MAX_STRINGS},
                        "cell": {"type": "integer", "minimum": 1, "maximum": MAX_CELLS},
                        "point": {"type": "string", "pattern": "^[a-z][a-z0-9_.]{1,63}$"},
                        "value": {"type": "number"},
                    },
                },
            },
        },
    },
    "buses": {
        "type": "array", "minItems": 1, "maxItems": MAX_BUSES,
        "items": {
            "type": "object", "required": ["name", "port"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
                "port": {"type": "string", "minLength": 1},
                "baud": {"enum": [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200], "default": 9600},
                "parity": {"enum": ["N", "E", "O"], "default": "N"},
                "stopbits": {"enum": [1, 2], "default": 1},
                "timeout_ms": {"type": "integer", "minimum": 10, "maximum": 10000, "default": 200},
                "retries": {"type": "integer", "minimum": 0, "maximum": 5, "default": 1},
                "rs485": {"type": "boolean", "default": False},
                "silence_ms": {"type": "number", "minimum": 0, "maximum": 100},
            },
        },
    },
    "strings": {
        "type": "array", "minItems": 0, "maxItems": MAX_STRINGS, "default": [],
        "items": {
            "type": "object", "required": ["id", "cells"], "additionalProperties": False,
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": MAX_STRINGS},
                "name": {"type": "string", "maxLength": 64},
                "cells": {"type": "integer", "minimum": 1, "maximum": MAX_CELLS},
                "battery": {
                    "type": "object", "additionalProperties": False, "default": {},
                    "properties": {
                        "model": {"type": "string", "maxLength": 64, "default": "12V VRLA"},
                        "nominal_voltage": {"enum": [2, 6, 12], "default": 12},
                        "capacity_ah": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000, "default": 100},
                        "chemistry": {"enum": ["vrla", "vented"], "default": "vrla"},
                    },
                },
                "devices": {"type": "array", "items": _device_item, "default": []},
            },
        },
    },
    "bank": {
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {"devices": {"type": "array", "items": _device_item, "default": []}},
    },
}


_LISTEN = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})")


def parse_listen(text: object) -> tuple[str, int]:
    """A face's ``listen`` setting: ``127.0.0.1:5020``, ``[::1]:5020`` or ``localhost:5020`` -> (host, port).

    Raises ValueError saying what is wrong (also for a value that is not a string at all); each face wraps it
    into a ConfigError naming its own key.
    """
    m = _LISTEN.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {text!r}")
    host, port = m.group(1) or m.group(3), int(m.group(2) or m.group(4))
    if m.group(1):
        ipaddress.IPv6Address(host)  # a malformed literal raises ValueError
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is outside 1-65535")
    return host, port


def listen_address(text: object, key: str, src: str = "config") -> tuple[str, int]:
    """``parse_listen`` for a face: a ConfigError naming the file and ``key`` (``nut.listen``) when it is
    not an address."""
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise ConfigError(src, key, str(exc)) from None


def parse_networks(items: list[str], src: str, key: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A face's ``allow_from`` list (addresses or networks) -> networks; a ConfigError names the bad item."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise ConfigError(src, f"{key}[{i}]",
                              f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
    return out


def address_allowed(client: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether a client address (an IPv6 scope and the IPv4-mapped form allowed for) is in ``networks``."""
    try:
        addr = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def fill_defaults(schema: dict[str, Any], data: Any) -> Any:
    """Fill ``default`` values of object properties, recursively (arrays of objects too)."""
    if isinstance(data, dict) and schema.get("type") == "object":
        for key, sub in schema.get("properties", {}).items():
            if key not in data and "default" in sub:
                data[key] = copy.deepcopy(sub["default"])
            if key in data:
                data[key] = fill_defaults(sub, data[key])
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        data = [fill_defaults(schema["items"], item) for item in data]
    return data


def core_defaults(name: str) -> dict[str, Any]:
    """Core section ``name`` as the schema fills it when a config leaves it out (for code that runs without a
    config file: a device dump, a default-built engine)."""
    filled: dict[str, Any] = fill_defaults(CORE_SCHEMA[name], {})
    return filled


def full_schema(extra_sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    props = dict(CORE_SCHEMA)
    for name, sub in extra_sections.items():
        if name in props:
            raise ValueError(f"config section {name} is defined twice")
        props[name] = {**sub, "default": sub.get("default", {})} if sub.get("type") == "object" else sub
    return {"type": "object", "required": ["buses"], "additionalProperties": False, "properties": props}


@dataclass
class Config:
    path: Path
    data: dict[str, Any]
    topology: Topology
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        return self.data.get(name) or {}

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent

    def resolve(self, p: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(p)
        return path if path.is_absolute() else self.base_dir / path

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.data["gateway"]["state_dir"])


def validate_value(data: Any, schema: dict[str, Any], src: str, prefix: str = "") -> Any:
    """Check ``data`` against ``schema``; the first error becomes a ConfigError at ``prefix.key.path``."""
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        where = key_path(err.absolute_path)
        if prefix:
            where = prefix + ("" if not where or where.startswith("[") else ".") + where
        raise ConfigError(src, where, err.message)
    return copy.deepcopy(data)


def validate(data: Any, src: str, extra_sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(src, "", "expected a mapping of sections (buses, strings, bank, ...)")
    check_size(data, src)  # a document from the REST API or a form, not only from a file
    bad = non_finite(data)
    if bad is not None:
        raise ConfigError(src, key_path(bad), "expected a finite number, got NaN or infinity")
    schema = full_schema(extra_sections)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties" and not err.absolute_path:
            known = ", ".join(sorted(schema["properties"]))
            unknown = sorted((k for k in data if k not in schema["properties"]), key=str)  # YAML keys: any type
            raise ConfigError(src, str(unknown[0]), f"unknown section (a typo, or a plugin that is not installed?); "
                                                     f"known sections: {known}")
        raise schema_error(src, err)
    filled: dict[str, Any] = fill_defaults(schema, copy.deepcopy(data))  # a dict in, the same dict out
    return filled


def build_topology(data: dict[str, Any], src: str, profiles: dict[str, DeviceProfile]) -> Topology:
    buses: list[BusConfig] = []
    for i, b in enumerate(data["buses"]):
        if any(x.name == b["name"] for x in buses):
            raise ConfigError(src, f"buses[{i}].name", f"bus name {b['name']!r} is used twice")
        buses.append(BusConfig(name=b["name"], port=b["port"], baud=b["baud"], parity=b["parity"],
                               stopbits=b["stopbits"], timeout_ms=b["timeout_ms"], retries=b["retries"],
                               rs485=b["rs485"], silence_ms=b.get("silence_ms"), index=i + 1))
    bus_names = {b.name for b in buses}
    strings: list[StringConfig] = []
    devices: list[DeviceConfig] = []
    used: dict[tuple[str, int], str] = {}  # (bus, address) -> key path of the device there

    def add_device(path: str, d: dict[str, Any], scope_ok: tuple[str, ...], string: int | None,
                   cells: int | None) -> None:
        prof = profiles.get(d["profile"])
        if prof is None:
            raise ConfigError(src, f"{path}.profile",
                              f"unknown profile {d['profile']!r}; known: {', '.join(sorted(profiles)) or 'none'}")
        if prof.scope not in scope_ok:
            raise ConfigError(src, f"{path}.profile",
                              f"profile {prof.name} measures a {prof.scope}; it cannot be placed here (expected a "
                              f"{' or '.join(scope_ok)} device)")
        if d["bus"] not in bus_names:
            raise ConfigError(src, f"{path}.bus",
                              f"unknown bus {d['bus']!r}; configured: {', '.join(sorted(bus_names))}")
        if prof.scope == "cell":
            first = d["first_cell"]
            count = d.get("count", cells - first + 1)
            if first + count - 1 > cells:
                raise ConfigError(src, f"{path}.count",
                                  f"cells {first}..{first + count - 1} exceed the string's {cells} cells")
            if d["address"] + count - 1 > 247:
                raise ConfigError(src, f"{path}.count",
                                  f"addresses {d['address']}..{d['address'] + count - 1} exceed 247")
            items = [(d["address"] + k, first + k) for k in range(count)]
        else:
            if "count" in d:
                raise ConfigError(src, f"{path}.count", "only cell sensors take a count")
            items = [(d["address"], None)]
        for addr, cell in items:
            key = (d["bus"], addr)
            if key in used:
                raise ConfigError(src, f"{path}.address",
                                  f"address {addr} on {d['bus']} is already used by {used[key]}")
            used[key] = path
            devices.append(DeviceConfig(profile=prof.name, bus=d["bus"], address=addr, string=string, cell=cell,
                                        name=d["name"]))

    seen_ids = set()
    for i, s in enumerate(data["strings"]):
        if s["id"] in seen_ids:
            raise ConfigError(src, f"strings[{i}].id", f"string id {s['id']} is used twice")
        seen_ids.add(s["id"])
        bat = s["battery"]
        nominal = bat["nominal_voltage"]
        strings.append(StringConfig(id=s["id"], cells=s["cells"], name=s.get("name") or f"String {s['id']}",
                                    battery=BatteryConfig(model=bat["model"], nominal_voltage=float(nominal),
                                                          cells_per_unit=int(nominal // 2),
                                                          capacity_ah=float(bat["capacity_ah"]),
                                                          chemistry=bat["chemistry"])))
        for j, d in enumerate(s["devices"]):
            add_device(f"strings[{i}].devices[{j}]", d, ("cell", "string"), s["id"], s["cells"])
    for j, d in enumerate(data["bank"]["devices"]):
        add_device(f"bank.devices[{j}]", d, ("bank",), None, None)
    return Topology(buses=tuple(buses), strings=tuple(strings), devices=tuple(devices))


def load_config(path: str | Path, profiles: dict[str, DeviceProfile],
                extra_sections: dict[str, dict[str, Any]] | None = None) -> Config:
    path = Path(path)
    data = validate(load_yaml(path), str(path), extra_sections or {})
    topology = build_topology(data, str(path), profiles)
    return Config(path=path, data=data, topology=topology, profiles=profiles)


def read_raw(path: str | Path) -> dict[str, Any]:
    """The file's data before validation (used to find plugin folders before the schema is complete)."""
    data = load_yaml(Path(path))
    return data if isinstance(data, dict) else {}


__all__ = ["Config", "load_config", "read_raw", "validate", "key_path"]
