"""Editing the configuration from the web page and the REST API: validate, save atomically, reload live.

- Validation is the gateway's own, ``Gateway.check``: every check ``bmsgw run`` makes (schema, topology, every
  plugin's checks), so the page cannot save a file the gateway would refuse; an error names the key path.
- Saving keeps the file's comments and key order (ruamel.yaml round trip; only changed keys are touched),
  writes a temporary file in the same folder, fsyncs it, keeps the previous file as ``<name>.bak`` and
  renames the new one into place, so a power cut leaves either the old or the new file, never half of one.
- Applying is ``Gateway.reload`` in the event loop; polling goes on.  The answer says what was applied live,
  what waits for a restart (what nothing running can take: the bank's shape, a state file's place ...) and what
  failed (a new listen address that cannot be bound: the old one is kept), each with its key.
"""
from __future__ import annotations

import asyncio
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
from gateway.config import full_schema, read_raw
from gateway.errors import ConfigError
from gateway.profiles import parse_yaml

log = logging.getLogger(__name__)

_save_lock = threading.Lock()


class FieldError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def document_schema(gateway) -> dict:
    return full_schema(gateway.extra_sections)


def read_document(gateway) -> dict:
    """The config file as written (no defaults filled in)."""
    return read_raw(gateway.config.path)


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


# -- saving and applying ----------------------------------------------------------------------------------------
def save_and_reload(gateway, data: Any, user: str = "?") -> dict:
    """Check ``data`` (the whole document) as ``bmsgw run`` would, save it, apply it: the answer is
    ``{"saved": true, "changed", "applied", "restart_required", "failed", "notes"}``.  ConfigError (naming the
    key path) when it does not pass the checks; nothing is saved then."""
    if not isinstance(data, dict):
        raise ConfigError(str(gateway.config.path), "", "expected a mapping of sections")
    with _save_lock:
        new = gateway.check(data)
        path = Path(gateway.config.path)
        try:
            atomic_write(path, render_document(path, data))
        except OSError as exc:
            raise ConfigError(str(path), "", f"cannot save: {exc.strerror or exc}") from None
        log.info("configuration saved by %s", user)
        if gateway.loop is not None and gateway.loop.is_running():
            report = gateway.run_in_loop(gateway.reload(new), timeout=60)
        else:  # not serving (a tool, a test): nothing runs that a change could reach but the config itself
            report = asyncio.run(gateway.reload(new))
    return {"saved": True, **report.as_dict()}


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
