"""Errors a user can act on: each names the file, the key path and what was expected."""
from __future__ import annotations

from collections.abc import Iterable

MAX_MESSAGE = 400  # characters of a ConfigError's message: a line or two on a terminal


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` fit for one line of a terminal or log: control characters escaped, the middle of a very long
    text (a whole section echoed by a schema message) cut out."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    if len(text) > limit:
        keep = (limit - 5) // 2
        text = f"{text[:keep]} ... {text[-keep:]}"
    return text


class GatewayError(Exception):
    """Base class for errors the CLI reports without a traceback."""


class ConfigError(GatewayError):
    def __init__(self, file: str, path: str, message: str) -> None:
        self.file = file
        self.path = one_line(path or "(top level)", 200)
        self.message = one_line(message)
        super().__init__(f"{file}: {self.path}: {self.message}")


def key_path(parts: Iterable[str | int]) -> str:
    """``['strings', 0, 'cells']`` -> ``strings[0].cells``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
