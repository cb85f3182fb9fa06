"""Secrets the notifiers need in clear (an SMTP password, a SIM PIN), read from a file the bmsgw user owns."""
from __future__ import annotations

import logging
import stat
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)


def read_secret(path: str | Path, key: str) -> str:
    """The first line of ``path``; a clear error naming ``key`` when it cannot be read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", key, f"cannot read {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s (%s) can be read by other users: chmod 600 it", path, key)
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


__all__ = ["read_secret"]
