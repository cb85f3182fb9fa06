"""The NUT network protocol's lexical rules: how a request line splits into words and how a value is quoted.

Written after Network UPS Tools' ``docs/net-protocol.txt`` and the parser upsd reads requests with (parseconf):
words are separated by white space; a word may be "quoted" to hold spaces; a backslash makes the next character
literal (inside quotes too); ``#`` outside quotes starts a comment; ``=`` is a word of its own; only printable
ASCII is kept; at most 32 words count (more are dropped).  Where upsd's parser reads on into the next line (a
quote or a backslash left open at the end of a line) or answers nothing (``#`` inside quotes), this server
answers ``ERR INVALID-ARGUMENT``: a request is one line here.
"""
from __future__ import annotations

MAX_WORDS = 32
_SPACE = frozenset(b" \t\r\v\f")
_ESCAPED = frozenset('#\\"')
# how a value is written between quotes: " \ # escaped, control characters left out
_QUOTING = str.maketrans({**{ch: "\\" + ch for ch in _ESCAPED}, **{chr(i): None for i in (*range(0x20), 0x7F)}})
# the bytes of a line that needs no quoting rules: printable ASCII but " \ # =, and blanks
_PLAIN = bytes(sorted(set(range(0x21, 0x7F)) - set(b'"\\#=') | set(b" \t\r\v\f")))

# the error names of net-protocol.txt ("Error responses") this server sends
ACCESS_DENIED = "ACCESS-DENIED"
UNKNOWN_UPS = "UNKNOWN-UPS"
VAR_NOT_SUPPORTED = "VAR-NOT-SUPPORTED"
CMD_NOT_SUPPORTED = "CMD-NOT-SUPPORTED"
INVALID_ARGUMENT = "INVALID-ARGUMENT"
FEATURE_NOT_CONFIGURED = "FEATURE-NOT-CONFIGURED"
ALREADY_SSL_MODE = "ALREADY-SSL-MODE"
DATA_STALE = "DATA-STALE"
ALREADY_LOGGED_IN = "ALREADY-LOGGED-IN"
ALREADY_SET_PASSWORD = "ALREADY-SET-PASSWORD"
ALREADY_SET_USERNAME = "ALREADY-SET-USERNAME"
USERNAME_REQUIRED = "USERNAME-REQUIRED"
PASSWORD_REQUIRED = "PASSWORD-REQUIRED"
UNKNOWN_COMMAND = "UNKNOWN-COMMAND"


class LineError(ValueError):
    """A line that cannot be split into words (answered ERR INVALID-ARGUMENT)."""


def split_words(line: bytes) -> list[str]:
    """The words of one request line (its newline removed), as upsd's parser reads them."""
    if not line.translate(None, _PLAIN):  # nothing quoted, escaped, commented or dropped: split at the blanks
        return line.decode("ascii").split()[:MAX_WORDS]
    words: list[str] = []
    word: list[str] | None = None  # the word being collected (None: between words)
    quoted = escaped = False
    for byte in line:
        if byte in _SPACE and not quoted and not escaped:
            if word is not None:
                words.append("".join(word))
                word = None
            continue
        if byte < 0x20 or byte > 0x7E:
            continue  # upsd's parser keeps printable ASCII only (CVE-2012-2944)
        ch = chr(byte)
        if escaped:
            escaped = False
            if word is None:
                word = []
            word.append(ch)
            continue
        if ch == "\\":
            escaped = True
            continue
        if quoted:
            if ch == '"':
                words.append("".join(word or []))
                word, quoted = None, False
            elif ch == "#":
                raise LineError("an unescaped # inside quotes")
            else:
                assert word is not None
                word.append(ch)
            continue
        if ch == "#":
            break  # the rest is a comment
        if ch == '"' and word is None:
            word, quoted = [], True
            continue
        if ch == "=":  # a word of its own
            if word is not None:
                words.append("".join(word))
                word = None
            words.append("=")
            continue
        if word is None:
            word = []
        word.append(ch)
    if quoted:
        raise LineError("a quote left open at the end of the line")
    if escaped:
        raise LineError("a backslash at the end of the line")
    if word is not None:
        words.append("".join(word))
    return words[:MAX_WORDS]


def quote(text: str) -> str:
    """``text`` between double quotes, escaped as upsd does (``\\"``, ``\\\\``, ``\\#``); control characters,
    which would break the line, are left out."""
    return f'"{text.translate(_QUOTING)}"'


def error(name: str) -> str:
    return f"ERR {name}\n"
