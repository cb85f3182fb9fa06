"""Editing the configuration from the web page and the REST API: validate, save atomically, reload live.

- Validation is the gateway's own: ``gateway.config.validate`` over the whole document with every plugin's
  section schema, then ``build_topology``; an error names the key path (``alarms.cell.voltage.high``).
- Saving keeps the file's comments and key order (ruamel.yaml round trip; only changed keys are touched),
  writes a temporary file in the same folder, fsyncs it, keeps the previous file as ``<name>.bak`` and
  renames the new one into place, so a power cut leaves either the old or the new file, never half of one.
- Reloading swaps ``gateway.config`` and calls ``bmsgw_config_reloaded`` in the event loop; polling goes on.
  Sections that shape the running bank (buses, strings, bank, plugins, simulator, gateway.state_dir) and the
  web server's own socket settings are saved but applied at the next restart; the answer lists them.
"""
from __future__ import annotations

import copy
import io
import logging
import threading
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from gateway import fsutil
from gateway.config import Config, build_topology, full_schema, read_raw, validate
from gateway.errors import ConfigError
from gateway.profiles import parse_yaml

log = logging.getLogger(__name__)

RESTART_SECTIONS = ("buses", "strings", "bank", "plugins", "simulator")
RESTART_KEYS = (("gateway", "state_dir"), ("web", "listen"), ("web", "tls"), ("web", "threads"),
                ("web", "enabled"))
_save_lock = threading.Lock()


class FieldError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def extra_sections(gateway) -> dict[str, dict]:
    sections: dict[str, dict] = {}
    for result in gateway.pm.hook.bmsgw_config_schema():
        sections.update(result or {})
    return sections


def document_schema(gateway) -> dict:
    return full_schema(extra_sections(gateway))


def read_document(gateway) -> dict:
    """The config file as written (no defaults filled in)."""
    return read_raw(gateway.config.path)


def check_document(gateway, data: Any) -> dict:
    """The validated document with defaults; ConfigError naming the key path when it is not valid (also for
    what a plugin finds wrong in its section: a file the gateway would not start with is never saved)."""
    src = str(gateway.config.path)
    validated = validate(data, src, extra_sections(gateway))
    topology = build_topology(validated, src, gateway.profiles)
    config = Config(path=gateway.config.path, data=validated, topology=topology, profiles=gateway.profiles)
    for problems in gateway.pm.hook.bmsgw_check_config(gateway_config=config, catalog=gateway.catalog):
        if problems:
            where, _, message = problems[0].partition(": ")
            raise ConfigError(src, where, message)
    return validated


# -- saving ----------------------------------------------------------------------------------------------------
def _rt_yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 120
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _merge(node, new):
    """Put ``new`` into the round-trip ``node`` touching only what changed; returns the node to store."""
    if isinstance(node, CommentedMap) and isinstance(new, dict):
        for key in [k for k in node if k not in new]:
            del node[key]
        for key, value in new.items():
            node[key] = _merge(node[key], value) if key in node else value
        return node
    if isinstance(node, CommentedSeq) and isinstance(new, list) and len(node) == len(new):
        for i, value in enumerate(new):
            node[i] = _merge(node[i], value)
        return node
    if _plain(node) == new and type(_plain(node)) is type(new):
        return node
    return new


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def render_document(path: Path, data: dict) -> str:
    """The new file text: the old file with ``data`` merged in (comments kept), checked to read back as
    ``data``; when the round-trip form would read differently, a plain dump."""
    y = _rt_yaml()
    try:
        with open(path, encoding="utf-8") as fh:
            doc = y.load(fh)
    except FileNotFoundError:
        doc = None
    if not isinstance(doc, CommentedMap):
        doc = CommentedMap()
    doc = _merge(doc, copy.deepcopy(data))
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    if yaml.safe_load(text) != data:
        log.warning("%s: comments could not be kept for this change; writing a plain document", path)
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text


def atomic_write(path: Path, text: str) -> None:
    """The config file replaced in one step (``gateway.fsutil``), the previous one kept as ``<name>.bak``;
    a new file gets mode 0640 (it may hold secrets' hashes), an existing one keeps its mode minus any world
    bits."""
    path = Path(path)
    # the file may hold secrets (SNMPv3 keys, passwords): what the gateway writes is never world-readable
    mode = path.stat().st_mode & 0o770 if path.exists() else 0o640
    fsutil.atomic_write(path, text, mode=mode, backup=True)


# -- reloading -------------------------------------------------------------------------------------------------
def _changed_sections(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _restart_items(old: dict, new: dict) -> list[str]:
    out = [s for s in RESTART_SECTIONS if old.get(s) != new.get(s)]
    for sec, key in RESTART_KEYS:
        if (old.get(sec) or {}).get(key) != (new.get(sec) or {}).get(key):
            out.append(f"{sec}.{key}")
    return out


def save_and_reload(gateway, data: Any, user: str = "?") -> dict:
    """Validate ``data`` (the whole document), save it, apply it; ConfigError when it is not valid."""
    if not isinstance(data, dict):
        raise ConfigError(str(gateway.config.path), "", "expected a mapping of sections")
    with _save_lock:
        validated = check_document(gateway, data)
        old = gateway.config
        path = Path(old.path)
        try:
            atomic_write(path, render_document(path, data))
        except OSError as exc:
            raise ConfigError(str(path), "", f"cannot save: {exc.strerror or exc}") from None
        changed = _changed_sections(old.data, validated)
        restart = _restart_items(old.data, validated)
        live = dict(validated)
        for sec in RESTART_SECTIONS:
            live[sec] = old.data.get(sec)
        live["gateway"] = {**validated["gateway"], "state_dir": old.data["gateway"]["state_dir"]}
        gateway.config = Config(path=old.path, data=live, topology=old.topology, profiles=old.profiles)
    log.info("configuration saved by %s; changed: %s%s", user, ", ".join(changed) or "nothing",
             f"; applied at the next restart: {', '.join(restart)}" if restart else "")
    _apply_core(gateway, live)
    if changed:
        _call_in_loop(gateway, lambda: gateway.pm.hook.bmsgw_config_reloaded(gateway=gateway, sections=changed))
    return {"saved": True, "changed": changed, "restart_required": restart}


def _apply_core(gateway, data: dict) -> None:
    """What the core can take while running: the log level, and the poll settings (the engine's own, in the
    event loop)."""
    gw = data["gateway"]
    logging.getLogger().setLevel(gw["log_level"])
    _call_in_loop(gateway, lambda: gateway.engine.apply_config(gw["poll"]))


def _call_in_loop(gateway, fn) -> None:
    import asyncio

    loop = getattr(gateway, "loop", None)
    if loop is None or not loop.is_running():
        fn()
        return

    async def call():
        fn()

    try:
        asyncio.run_coroutine_threadsafe(call(), loop).result(10)
    except Exception:
        log.exception("a plugin failed to apply the reloaded configuration")


# -- the form --------------------------------------------------------------------------------------------------
def _kind(schema: dict) -> str:
    if "enum" in schema:
        return "enum"
    t = schema.get("type")
    if t == "object" and schema.get("properties") and not isinstance(schema.get("additionalProperties"), dict) \
            and "patternProperties" not in schema:
        return "object"
    if t in ("boolean", "integer", "number", "string"):
        return t
    return "yaml"


MISSING = object()


def form_fields(schema: dict, raw: Any, path: str) -> dict:
    """A tree of form fields for one section (``path`` = section name), with the file's values."""
    kind = _kind(schema)
    node = {"path": path, "kind": kind, "label": path.rsplit(".", 1)[-1],
            "description": schema.get("description", ""), "default": schema.get("default")}
    if kind == "object":
        raw = raw if isinstance(raw, dict) else {}
        # a deprecated key (still read, under a new name now) is shown only where the file has it
        node["children"] = [form_fields(sub, raw.get(key, MISSING), f"{path}.{key}")
                            for key, sub in schema["properties"].items()
                            if not sub.get("deprecated") or key in raw]
        return node
    # a key written in the file is posted back with a marker, so an empty string or a null stays as written
    node["present"] = raw is not MISSING
    if raw is MISSING:
        raw = None
    if kind == "enum":
        node["options"] = [(_yaml_scalar(v), str(v)) for v in schema["enum"]]
    if isinstance(raw, RawText):  # a submitted text shown again as typed, next to its error
        node["value"] = str(raw)
    elif kind == "enum":
        node["value"] = "" if raw is None else _yaml_scalar(raw)
    elif kind == "yaml":
        if raw is None:
            node["value"] = "null" if node["present"] else ""
        else:
            node["value"] = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    elif kind == "boolean":
        node["value"] = "" if raw is None else ("true" if raw else "false")
    else:
        node["value"] = "" if raw is None else str(raw)
    if kind == "yaml":
        node["default_text"] = "" if node["default"] is None else yaml.safe_dump(
            node["default"], default_flow_style=True).strip()
    for key in ("minimum", "maximum", "pattern", "maxLength"):
        if key in schema:
            node[key] = schema[key]
    node["secret"] = bool(schema.get("writeOnly"))  # a password: not shown on screen
    return node


class RawText(str):
    """A submitted form text, shown again as typed (not re-serialised)."""


def _yaml_scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def parse_form(schema: dict, form, path: str):
    """(present, value) of one field or group from the submitted form; FieldError names a bad field."""
    kind = _kind(schema)
    if kind == "object":
        out = {}
        for key, sub in schema["properties"].items():
            present, value = parse_form(sub, form, f"{path}.{key}")
            if present:
                out[key] = value
        return bool(out), out
    text = form.get(path)
    if text is None or text.strip() == "":
        if kind == "string" and text is not None and form.get(f"present:{path}") \
                and schema.get("default", "") == "":
            return True, text  # an empty string written in the file (no other default to fall back to)
        return False, None
    if len(text) > 200_000:
        raise FieldError(path, "too long")
    try:
        if kind == "boolean":
            if text not in ("true", "false"):
                raise FieldError(path, "expected true or false")
            return True, text == "true"
        if kind == "integer":
            return True, int(text.strip())
        if kind == "number":
            try:
                return True, int(text.strip())
            except ValueError:
                value = float(text.strip())
            if value != value or value in (float("inf"), float("-inf")):
                raise FieldError(path, "expected a finite number")
            return True, value
        if kind == "string":
            return True, text
        # the loader of the config file: duplicate keys, self-referring aliases, absurd nesting refused
        return True, parse_yaml(text, path)
    except ValueError:
        raise FieldError(path, f"expected {'an integer' if kind == 'integer' else 'a number'}, got {text!r}") from None
    except ConfigError as exc:
        where = f" ({exc.path})" if exc.path != "(top level)" else ""
        raise FieldError(path, f"{exc.message}{where}") from None


def section_from_form(gateway, section: str, form) -> dict:
    """The whole document with ``section`` replaced by the form's values (not validated yet)."""
    schema = document_schema(gateway)["properties"].get(section)
    if schema is None:
        raise FieldError(section, "unknown section")
    doc = read_document(gateway)
    present, value = parse_form(schema, form, section)
    value = _keep_extras(schema, doc.get(section), value)
    if present or value:
        doc[section] = value
    else:
        doc.pop(section, None)
    return doc


def _keep_extras(schema: dict, raw, new):
    """Keys the form has no field for (a plugin schema that allows extra keys) stay as they were."""
    if _kind(schema) != "object" or not isinstance(raw, dict):
        return new
    new = dict(new or {})
    props = schema["properties"]
    for key, value in raw.items():
        if key not in props:
            new[key] = value
        elif key in new:
            new[key] = _keep_extras(props[key], value, new[key])
    return new
