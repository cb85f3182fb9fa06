"""Errors a user can act on: each names the file, the key path and what was expected."""
from __future__ import annotations


class GatewayError(Exception):
    """Base class for errors the CLI reports without a traceback."""


class ConfigError(GatewayError):
    def __init__(self, file: str, path: str, message: str) -> None:
        self.file = file
        self.path = path or "(top level)"
        self.message = message
        super().__init__(f"{file}: {self.path}: {message}")


def key_path(parts) -> str:
    """``['strings', 0, 'cells']`` -> ``strings[0].cells``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
