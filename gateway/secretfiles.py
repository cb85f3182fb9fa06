"""Secrets at rest: which config values are secrets, and whether the files holding them are readable by others.

A face marks a secret in its config schema with the JSON Schema annotation ``"writeOnly": true`` (an SNMPv3
key, an MQTT or SMTP password, a SIM PIN, a webhook's Authorization header).  Web users' passwords are not
secrets in this sense: the config holds only their argon2 hashes.  When the config holds a secret and the
file can be read by other users, the gateway says so at start (in the log and in ``bmsgw status``) and names
the fix; the same goes for every ``*_file`` a face reads a secret from (``read_secret``).  Readable by others
means: by everyone, or by a group that is not the gateway's own (the Debian package installs the config as
``bmsgw:bmsgw 0640``, which is fine).  Files the gateway itself writes secrets to are created 0600.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .hookspecs import hookimpl

log = logging.getLogger(__name__)

def exposure(path: str | Path) -> str | None:
    """Why ``path`` can be read by users other than the gateway's, or None when it cannot (or does not exist)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        return f"mode {mode:04o}: every user can read it"
    if mode & (stat.S_IRGRP | stat.S_IWGRP) and st.st_gid != os.getegid():
        return f"mode {mode:04o}: group {_group(st.st_gid)} can read it"
    return None


def _group(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)


def read_secret(path: str | Path, key: str) -> str:
    """The first line of ``path`` (a password file); a clear error naming ``key`` when it cannot be read, and
    a warning when other users can read it too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", key, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    why = exposure(path)
    if why:
        log.warning("%s (%s) holds a secret and %s: chmod 600 it (or 640 with the bmsgw group)", path, key, why)
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def secret_keys(schema: dict, data: Any, prefix: str = "") -> Iterator[str]:
    """Key paths of the non-empty values in ``data`` that ``schema`` marks ``writeOnly``."""
    if not isinstance(schema, dict):
        return
    if schema.get("writeOnly"):
        if data not in (None, "", [], {}):
            yield prefix
        return
    if isinstance(data, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in data.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from secret_keys(sub, value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(data):
            yield from secret_keys(schema["items"], item, f"{prefix}[{i}]")


def config_schema(gateway) -> dict:
    from .config import full_schema

    return full_schema(gateway.extra_sections)


def check_config(gateway) -> list[str]:
    """Warnings about the config file's secrets (empty when there are none or the file is private)."""
    keys = list(secret_keys(config_schema(gateway), gateway.config.data))
    why = exposure(gateway.config.path) if keys else None
    if not why:
        return []
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return [f"{gateway.config.path} holds secrets ({shown}) and {why}: chmod 640 it (owner and group bmsgw), "
            "or move them out (password_file, pin_file; `bmsgw snmp-key` master keys)"]


@hookimpl
def bmsgw_gateway_ready(gateway) -> None:
    for msg in check_config(gateway):
        log.warning("%s", msg)


@hookimpl
def bmsgw_status(gateway) -> dict:
    found = check_config(gateway)  # a stat and a walk over the config: the file's mode may change meanwhile
    return {"secrets": {"warnings": found}} if found else {}


__all__ = ["exposure", "read_secret", "secret_keys", "check_config"]
