"""requirements.lock is the whole truth about the Python packages: .venv holds exactly its entries for this
machine, and it is up to date with pyproject.toml (`make lock` was run after the last dependency change)."""
from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT
from tests.lock_support import lockfile

# The project itself is installed from the checkout (editable), not from the lock: it is what the lock is for.
# Nothing else is exempt: the lock pins pip and setuptools too, and `make install` replaces the venv's bundled
# copies with them.
PROJECT = "bmsgw"


def installed_distributions() -> list[tuple[str, str]]:
    """(name, version) of every distribution this interpreter can import from, the project left out."""
    found = [(canonicalize_name(d.metadata["Name"]), d.version) for d in metadata.distributions()]
    return sorted((name, version) for name, version in found if name != PROJECT)


def test_the_venv_holds_exactly_the_lock():
    lock = lockfile.read_lock()
    installed = installed_distributions()
    names = [name for name, _ in installed]
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not twice, f"installed more than once: {twice}; run `make clean install`"
    not_locked = [f"{name} {version}" for name, version in installed if name not in lock]
    assert not not_locked, f"installed but not in requirements.lock: {not_locked}; run `make clean install`"
    other_version = {name: (lock[name].version, version) for name, version in installed
                     if name in lock and lock[name].version != version}
    assert not other_version, f"(lock, installed) differ: {other_version}; run `make clean install`"
    missing = sorted(f"{pin.name}=={pin.version}" for pin in lock.values() if pin.applies() and pin.name not in names)
    assert not missing, f"in requirements.lock for this machine but not installed: {missing}; run `make clean install`"
    foreign = [name for name, _ in installed if name in lock and not lock[name].applies()]
    assert not foreign, f"installed, but the lock has them for other machines only: {foreign}"


def test_the_lock_is_up_to_date_with_pyproject():
    """Every requirement pyproject.toml declares (run time and every extra) is the lock's version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    lock = lockfile.read_lock()
    disagree = []
    for text in declared:
        requirement = Requirement(text)
        pin = lock.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin.version, prereleases=True):
            disagree.append(f"{text} (lock: {pin.version if pin else 'absent'})")
    assert not disagree, f"pyproject.toml and requirements.lock disagree: {disagree}; run `make lock`"


def test_the_lock_is_generated_and_pins_its_own_tools():
    header = (ROOT / "requirements.lock").read_text().splitlines()[:3]
    assert "Written by `make lock` from pyproject.toml: never edit it by hand" in header[2], header
    lock = lockfile.read_lock()  # refuses an entry that is not `==` with hashes
    # make lock runs the lock's uv; make install upgrades to the lock's pip and builds with its setuptools
    assert {"uv", "pip", "setuptools"} <= lock.keys()
