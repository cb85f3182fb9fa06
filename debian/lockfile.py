"""requirements.lock as the package build, debian/copyright and the tests read it.

The lock (written by `make lock`: uv pip compile --universal --generate-hashes) pins every Python package the
project installs: runtime, test, dev and build tools, each with the hashes of all its files.  The .deb bundles
only its runtime part: the dependency closure of pyproject.toml's [project].dependencies on the machine that
builds it, extras and environment markers evaluated there.

Why the closure is walked through the packages' own Requires-Dist and not read from the lock's "# via"
comments: those comments drop extras (a test tool asking for jsonschema[format] lists the format checkers as
"via jsonschema") and markers, so they would put test-only packages into the .deb.  ``runtime_closure`` takes
the metadata from its caller: the package build installs each step from the lock (with hashes) and reads what
it installed; the tests and debian/write-copyright.py read the tested .venv, which holds exactly the lock.
"""
from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
RELOCK = "change pyproject.toml and run `make lock`"


class LockError(Exception):
    """The lock cannot give what is asked of it (a package missing, a version that does not match)."""


@dataclass(frozen=True)
class Pin:
    """One package of the lock."""

    name: str  # canonical: lower case, runs of -_. as one -
    version: str
    marker: Marker | None  # where the package is needed at all (the lock is universal)
    hashes: tuple[str, ...]

    def applies(self, environment: Mapping[str, str] | None = None) -> bool:
        """Whether the package belongs on the machine described by ``environment`` (default: this one)."""
        return self.marker is None or self.marker.evaluate(dict(environment) if environment else None)

    def requirement_line(self) -> str:
        """The pin as one line of a requirements file that pip installs with --require-hashes."""
        marker = f" ; {self.marker}" if self.marker is not None else ""
        return f"{self.name}=={self.version}{marker} " + " ".join(f"--hash={h}" for h in self.hashes)


def read_lock(path: Path = LOCK) -> dict[str, Pin]:
    """Every pin of the lock by canonical name; a pin that is not ``==`` with hashes is an error."""
    pins: dict[str, Pin] = {}
    joined = re.sub(r"\\\n", " ", path.read_text())  # continuation lines: a pin and its hashes form one line
    for number, raw in enumerate(joined.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):  # uv writes its "# via" notes on lines of their own
            continue
        requirement_text, *options = re.split(r"\s+(?=--)", line)
        hashes = tuple(o.removeprefix("--hash=") for o in options if o.startswith("--hash="))
        requirement = Requirement(requirement_text)
        spec = list(requirement.specifier)
        if len(spec) != 1 or spec[0].operator != "==" or not hashes or len(hashes) != len(options):
            raise LockError(f"{path}:{number}: {requirement_text}: a lock entry is `name==version` with hashes only")
        name = canonicalize_name(requirement.name)
        pins[name] = Pin(name, spec[0].version, requirement.marker, hashes)
    return pins


def project_dependencies(pyproject: Path = PYPROJECT) -> list[str]:
    """pyproject.toml's [project].dependencies: what the gateway needs at run time."""
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def runtime_closure(roots: Iterable[str], lock: Mapping[str, Pin],
                    requirements_of: Callable[[list[Pin]], Mapping[str, list[str]]],
                    environment: Mapping[str, str] | None = None) -> list[Pin]:
    """The pins of ``roots`` (requirement strings) and of everything they need, recursively, on the machine
    described by ``environment`` (default: this one), sorted by name.

    ``requirements_of(pins)`` returns each given pin's Requires-Dist lines, keyed by name; it is called once
    per level of the dependency tree with the pins not asked about before.
    """
    base = dict(environment or {})

    def needed(requirement: Requirement, extras: Iterable[str]) -> bool:
        if requirement.marker is None:
            return True
        return any(requirement.marker.evaluate({**base, "extra": extra}) for extra in ("", *extras))

    wanted: dict[str, set[str]] = {}  # name -> the extras asked for

    def want(requirement: Requirement, asked_by: str) -> None:
        name = canonicalize_name(requirement.name)
        pin = lock.get(name)
        if pin is None:
            raise LockError(f"{asked_by} needs {requirement}, which the lock does not pin: {RELOCK}")
        if not requirement.specifier.contains(pin.version, prereleases=True):
            raise LockError(f"{asked_by} needs {requirement}, the lock pins {pin.version}: {RELOCK}")
        if not pin.applies(base):
            raise LockError(f"{asked_by} needs {name}, whose lock entry excludes this machine ({pin.marker}): "
                            f"{RELOCK}")
        wanted.setdefault(name, set()).update(requirement.extras)

    for root in map(Requirement, roots):
        if needed(root, ()):
            want(root, "pyproject.toml")
    requires: dict[str, list[Requirement]] = {}
    walked: dict[str, frozenset[str]] = {}  # name -> the extras whose requirements were followed
    while pending := [name for name in sorted(wanted) if walked.get(name) != wanted[name]]:
        unread = [lock[name] for name in pending if name not in requires]
        if unread:
            found: dict[str, list[str]] = {canonicalize_name(k): v for k, v in requirements_of(unread).items()}
            for pin in unread:
                if pin.name not in found:
                    raise LockError(f"no metadata for {pin.name} {pin.version}")
                requires[pin.name] = [Requirement(r) for r in found[pin.name]]
        for name in pending:
            walked[name] = frozenset(wanted[name])
            for requirement in requires[name]:
                if needed(requirement, walked[name]):
                    want(requirement, f"{name} {lock[name].version}")
    return [lock[name] for name in sorted(wanted)]


def installed_requirements(pins: Iterable[Pin], path: list[str] | None = None) -> dict[str, list[str]]:
    """The Requires-Dist lines of ``pins`` as installed in ``path`` (default: this interpreter's sys.path),
    the first installation of each on the path, as the import system would find it."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=path) if path is not None else metadata.distributions():
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    out = {}
    for pin in pins:
        if pin.name not in found:
            raise LockError(f"{pin.name} is in the lock but not installed in {path or 'this environment'}: "
                            "run `make install`")
        out[pin.name] = found[pin.name].requires or []
    return out
