"""Home Assistant MQTT discovery (``mqtt.discovery``): retained config messages that make the bank show up in
Home Assistant as devices and entities, reading the JSON messages this face already publishes.

One config message per entity, single-component discovery as Home Assistant documents it
(https://www.home-assistant.io/integrations/mqtt/#discovery-messages)::

    <prefix>/<component>/<node_id>/<object_id>/config       e.g. homeassistant/sensor/bmsgw_demo/string1_voltage/config

``node_id`` is ``bmsgw_<site.id>``; so every config of a gateway sits under ``<prefix>/+/<node_id>/+/config``.
Devices: the gateway (the room: bank voltage, charger current, ambient temperature and humidity, dry contacts,
alarms) and one per string (``via_device``: the gateway) with its voltage, current, SOC, state, temperatures,
alarms and, disabled until a user enables them, one voltage/temperature/ohmic entity per battery.

Every option is written with its full name (no abbreviations).  Templates render ``None`` when a value is not
known (HA's "no value" payload: the entity shows *unknown*), never 0, and never fail on a message that lacks a
value (``.get`` and ``default``), because a template error is logged by Home Assistant for every message.

What was announced is remembered in ``DiscoveryRecord`` (a file in the state dir), so configs that are no longer
announced -- a string removed from the config, a new prefix, discovery switched off -- are cleared with empty
retained payloads, also across a restart of the gateway.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import __version__
from ...exposition import decimals_for
from ...fsutil import atomic_write
from ...points import PointRef, PointSpec

if TYPE_CHECKING:
    from ...app import Gateway
    from .face import PayloadBuilder

log = logging.getLogger(__name__)

RECORD_FILE = "mqtt-discovery.json"
# Home Assistant's names for the store's units (its device classes accept only these spellings)
HA_UNITS = {"V": "V", "A": "A", "C": "°C", "%": "%", "s": "s"}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def node_id(site_id: str) -> str:
    """The discovery topic's node id (and the gateway device's identifier): only ``[A-Za-z0-9_-]`` allowed."""
    return "bmsgw_" + _ID_UNSAFE.sub("_", site_id)


@dataclass(frozen=True, slots=True)
class Entity:
    """One Home Assistant entity: where its config goes and what it says."""

    component: str  # sensor | binary_sensor
    object_id: str
    options: dict[str, Any] = field(default_factory=dict)


# -- value templates (Jinja, rendered by Home Assistant with ``value_json`` = the message) ----------------------
# ``value_json.values`` would be the dict's method, not its key: subscripts everywhere.
def _scalar(key: str, item: str = "value") -> str:
    return f"value_json['values'].get('{key}', {{}}).get('{item}')"


def _column(key: str, index: int) -> str:
    return f"(value_json['values'].get('{key}', [])[{index}] | default(None))"


def _channel(key: str, channel: int, item: str) -> str:
    return (f"(value_json['values'].get('{key}', []) | selectattr('channel', 'eq', {channel}) "
            f"| map(attribute='{item}') | first | default(None))")


def _show(expr: str) -> str:
    return "{{ " + expr + " }}"


def _scaled(expr: str, factor: float, places: int) -> str:
    return "{% set v = " + expr + " %}{{ None if v is none else (v * " + f"{factor:g}) | round({places}) }}}}"


def _problem(expr: str) -> str:
    """ON when an alarm level is above normal (0), OFF at normal, None when not known."""
    return "{% set v = " + expr + " %}{{ 'None' if v is none else ('ON' if v > 0 else 'OFF') }}"


class DiscoveryPlan:
    """The config messages of one gateway for a discovery prefix, built from the point map and the topology.

    Only points the bank has get an entity (no charger monitor: no bank voltage).  ``configs()`` returns
    ``{topic: payload}``; nothing is kept between calls but the entity list (a few kB per string).  The list is
    made on first use, in the uploader's sender thread: for 480 batteries it takes a fraction of a second on
    the controller, which the event loop (polling) should not wait for."""

    def __init__(self, gateway: Gateway, cfg: dict, payloads: PayloadBuilder, status_topic: str) -> None:
        self.prefix = str(cfg["prefix"]).strip("/")
        self.batteries = bool(cfg["batteries"])
        site = gateway.config.section("site")
        self.node = node_id(str(site["id"]))
        self.birth_topic = f"{self.prefix}/status"
        self.pointmap = gateway.pointmap
        self.payloads = payloads
        self.common = {
            "availability": [{"topic": status_topic, "value_template": "{{ value_json['state'] }}",
                              "payload_available": "online", "payload_not_available": "offline"}],
            "origin": {"name": "bmsgw", "sw_version": __version__},
            "qos": 1,
        }
        self.gateway_device = {"identifiers": [self.node], "name": str(site["name"] or f"bmsgw {self.node}"),
                               "manufacturer": "bmsgw", "model": "Battery monitoring gateway",
                               "sw_version": __version__}
        alarms = gateway.config.section("alarms")  # empty when the alarms plugin is not loaded
        self.di_names = {int(d["channel"]): str(d["name"]) for d in alarms.get("di", ()) if d.get("name")}
        self.strings = gateway.topology.strings
        self._entities: list[tuple[Entity, dict]] | None = None

    @property
    def entities(self) -> list[tuple[Entity, dict]]:
        """Every entity with its device."""
        if self._entities is None:
            entities = list(self._gateway_entities(self.di_names))
            for s in self.strings:
                device = {"identifiers": [f"{self.node}_string{s.id}"], "name": s.name or f"String {s.id}",
                          "manufacturer": "bmsgw", "model": f"{s.cells} x {s.battery.model}",
                          "sw_version": __version__, "via_device": self.node}
                entities.extend((e, device) for e in self._string_entities(s.id, s.cells))
            self._entities = entities
        return self._entities

    # -- the entities ------------------------------------------------------------------------------------------
    def _spec(self, ref: PointRef) -> PointSpec | None:
        mp = self.pointmap.get(ref)
        return mp.spec if mp is not None else None

    @staticmethod
    def _measurement(spec: PointSpec, device_class: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"state_class": "measurement"}
        if device_class:
            out["device_class"] = device_class
        if spec.unit in HA_UNITS:
            out["unit_of_measurement"] = HA_UNITS[spec.unit]
        places = decimals_for(spec.scale, 1.0)
        if places is not None and spec.unit:
            out["suggested_display_precision"] = places
        return out

    @staticmethod
    def _enum(spec: PointSpec) -> dict[str, Any]:
        return {"device_class": "enum", "options": [label for _, label in spec.states]}

    def _gateway_entities(self, di_names: dict[int, str]) -> Iterator[tuple[Entity, dict]]:
        dev = self.gateway_device
        bank, gw = self.payloads.topic("bank"), self.payloads.topic("gateway")
        numeric = [("bank.voltage", "bank_voltage", "Bank voltage", "voltage", bank),
                   ("bank.charger_current", "charger_current", "Charger current", "current", bank),
                   ("io.ambient_temperature", "ambient_temperature", "Ambient temperature", "temperature", bank),
                   ("io.ambient_humidity", "ambient_humidity", "Ambient humidity", "humidity", bank),
                   ("bank.alarms_active", "active_alarms", "Active alarms", None, bank)]
        for pid, oid, name, dclass, topic in numeric:
            spec = self._spec(PointRef(pid))
            if spec is not None:
                yield Entity("sensor", oid, {"name": name, "state_topic": topic,
                                             "value_template": _show(_scalar(pid)),
                                             **self._measurement(spec, dclass)}), dev
        spec = self._spec(PointRef("bank.alarm_level"))
        if spec is not None:
            yield Entity("binary_sensor", "alarm", {"name": "Alarm", "state_topic": bank, "device_class": "problem",
                                                    "value_template": _problem(_scalar("bank.alarm_level"))}), dev
            yield Entity("sensor", "alarm_level", {"name": "Alarm level", "state_topic": bank,
                                                   "value_template": _show(_scalar("bank.alarm_level", "state")),
                                                   **self._enum(spec)}), dev
        di = self.pointmap.catalog.get("io.di")
        for ch in range(1, (di.channels if di is not None else 0) + 1):
            spec = self._spec(PointRef("io.di", channel=ch))
            if spec is None:
                continue
            labels = dict(spec.states)
            label = di_names.get(ch)
            yield Entity("binary_sensor", f"di{ch}", {
                "name": f"{label} (DI {ch})" if label else f"DI {ch}", "state_topic": bank,
                "value_template": _show(_channel("io.di", ch, "state")),
                "payload_on": labels.get(1, "1"), "payload_off": labels.get(0, "0")}), dev
        diagnostics = [("gateway.uptime", "uptime", "Uptime", "duration"),
                       ("gateway.mqtt_queued", "mqtt_queued", "MQTT messages waiting", None)]
        for pid, oid, name, dclass in diagnostics:
            spec = self._spec(PointRef(pid))
            if spec is not None:
                yield Entity("sensor", oid, {"name": name, "state_topic": gw, "entity_category": "diagnostic",
                                             "value_template": _show(_scalar(pid)),
                                             **self._measurement(spec, dclass)}), dev

    def _string_entities(self, sid: int, cells: int) -> Iterator[Entity]:
        topic = self.payloads.topic("string", sid)
        numeric = [("voltage", "Voltage", "voltage"), ("current", "Current", "current"),
                   ("soc", "State of charge", "battery"), ("soh", "State of health", None),
                   ("cell_temperature_max", "Max battery temperature", "temperature"),
                   ("cell_voltage_min", "Min battery voltage", "voltage"),
                   ("cell_voltage_max", "Max battery voltage", "voltage"),
                   ("runtime_remaining", "Runtime remaining", "duration")]
        for name, title, dclass in numeric:
            spec = self._spec(PointRef(f"string.{name}", sid))
            if spec is not None:
                yield Entity("sensor", f"string{sid}_{name}", {"name": title, "state_topic": topic,
                                                               "value_template": _show(_scalar(name)),
                                                               **self._measurement(spec, dclass)})
        spec = self._spec(PointRef("string.state", sid))
        if spec is not None:  # the one string-state classifier's labels (profiles/points.yaml)
            yield Entity("sensor", f"string{sid}_state", {"name": "State", "state_topic": topic,
                                                          "value_template": _show(_scalar("state", "state")),
                                                          **self._enum(spec)})
        spec = self._spec(PointRef("string.alarm_level", sid))
        if spec is not None:
            yield Entity("binary_sensor", f"string{sid}_alarm", {"name": "Alarm", "state_topic": topic,
                                                                 "device_class": "problem",
                                                                 "value_template": _problem(_scalar("alarm_level"))})
            yield Entity("sensor", f"string{sid}_alarm_level", {
                "name": "Alarm level", "state_topic": topic,
                "value_template": _show(_scalar("alarm_level", "state")), **self._enum(spec)})
        if self.batteries:
            yield from self._battery_entities(sid, cells)

    def _battery_entities(self, sid: int, cells: int) -> Iterator[Entity]:
        """Voltage, temperature and ohmic value of every battery: 3 x 480 entities on a full bank, so they are
        announced disabled (``enabled_by_default: false``): a user enables the batteries worth watching."""
        per_cell = self.payloads.layout == "cell"
        kinds = [("voltage", "voltage", "voltage"), ("temperature", "temperature", "temperature"),
                 ("ohmic", "ohmic value", None)]
        for c in range(1, cells + 1):
            topic = self.payloads.topic("string", sid, "cell", c) if per_cell else self.payloads.topic(
                "string", sid, "cells")
            for name, title, dclass in kinds:
                spec = self._spec(PointRef(f"cell.{name}", sid, c))
                if spec is None:
                    continue
                expr = _scalar(name) if per_cell else _column(name, c - 1)
                if spec.unit == "ohm":  # in milliohm, as battery ohmic values are read
                    places = decimals_for(spec.scale, 1000.0) or 0
                    opts: dict[str, Any] = {"state_class": "measurement", "unit_of_measurement": "mΩ",
                                            "suggested_display_precision": places,
                                            "value_template": _scaled(expr, 1000, places)}
                else:
                    opts = {**self._measurement(spec, dclass), "value_template": _show(expr)}
                yield Entity("sensor", f"string{sid}_battery{c}_{name}", {
                    "name": f"Battery {c} {title}", "state_topic": topic, "enabled_by_default": False, **opts})

    # -- the messages ------------------------------------------------------------------------------------------
    def topic(self, entity: Entity) -> str:
        return f"{self.prefix}/{entity.component}/{self.node}/{entity.object_id}/config"

    def document(self, entity: Entity, device: dict) -> dict[str, Any]:
        return {**entity.options, "unique_id": f"{self.node}_{entity.object_id}", "device": device, **self.common}

    def configs(self) -> dict[str, bytes]:
        """Every config message: ``{topic: JSON payload}``."""
        return {self.topic(e): json.dumps(self.document(e, dev), separators=(",", ":"), ensure_ascii=False).encode()
                for e, dev in self.entities}


class DiscoveryRecord:
    """The config topics this gateway may have left retained on the broker, in a file of the state dir.

    Written *before* new topics are published (the union of old and new) and again, with only the new ones, once
    the broker has acknowledged every config and every clearing: a crash in between leaves a superset, so a
    topic is never forgotten while it may still be retained."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> set[str]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.warning("mqtt: %s is unreadable (%s); configs announced before it cannot be cleared", self.path,
                        exc)
            return set()
        topics = doc.get("topics") if isinstance(doc, dict) else None
        return {t for t in topics if isinstance(t, str)} if isinstance(topics, list) else set()

    def save(self, topics: set[str]) -> None:
        if not topics:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"topics": sorted(topics)}, indent=0) + "\n")
