"""Files the gateway owns, written so that a power cut leaves the old file or the new one, never half of one.

Every write of a whole file (the config from the web page, the users and tokens file, the SNMP engine state,
the self-signed certificate, reports, a generated MIB) goes through this module::

    from gateway.fsutil import atomic_write, atomic_open
    atomic_write(path, text_or_bytes, mode=0o600)        # the whole file at once
    with atomic_open(path, "w") as fh:                   # streamed (a large report)
        fh.write(...)

How: a temporary file in the same folder (so the rename stays on one file system), written, flushed and
fsynced, given its final mode, renamed over the target with ``os.replace`` (atomic on POSIX), then the folder
is fsynced so the rename itself is on the card.  A failure (a full disk) removes the temporary file and
leaves the target as it was; the error propagates.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

DEFAULT_MODE = 0o644
StrPath = str | os.PathLike[str]


def fsync_dir(folder: StrPath) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is as durable as they make it
        pass
    finally:
        os.close(fd)


def _final_mode(path: Path, mode: int | None) -> int:
    if mode is not None:
        return mode
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return DEFAULT_MODE & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, in every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_open(path: StrPath, mode: str = "w", *, file_mode: int | None = None,
                encoding: str | None = "utf-8", newline: str | None = None) -> Iterator[IO[Any]]:
    """Write ``path`` through a file object; it replaces ``path`` only when the block ends without an error.

    ``mode`` is "w" (text) or "wb"; ``file_mode`` the permission bits (default: those of the file it
    replaces, else 0644 minus the umask).  The temporary file is created 0600, so a secret is never readable
    by others on its way in.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    folder = path.parent
    perms = _final_mode(path, file_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        fh: IO[Any] = os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, perms)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def atomic_write(path: StrPath, data: str | bytes, *, mode: int | None = None,
                 backup: bool = False) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) in one step.

    ``mode``: permission bits (default: kept from the file replaced).  ``backup``: first keep the current
    file as ``<name>.bak`` (written the same way), so the previous version is one rename away.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if backup:
        try:
            old = path.read_bytes()
        except FileNotFoundError:
            old = None
        if old is not None:
            atomic_write(path.with_name(path.name + ".bak"), old, mode=_final_mode(path, mode))
    with atomic_open(path, "wb", file_mode=mode) as fh:
        fh.write(payload)


def replace_durably(tmp: StrPath, path: StrPath) -> None:
    """For a file another library wrote itself at ``tmp`` (a PDF): fsync it, rename it over ``path`` (same
    folder), fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def remove_stale_temporaries(folder: StrPath, name: str, min_age_s: float = 60.0) -> int:
    """Delete the temporary files that writes of ``name`` left in ``folder`` when the process was killed
    mid-write; returns how many.  Only files older than ``min_age_s`` go, so a write in progress in another
    process (the CLI beside the service) keeps its file."""
    removed = 0
    limit = time.time() - min_age_s
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime <= limit:
                tmp.unlink()
                removed += 1
    return removed


__all__ = ["atomic_open", "atomic_write", "fsync_dir", "remove_stale_temporaries", "replace_durably"]
