"""The data files bmsgw ships, found through importlib.resources wherever the package is installed.

``profiles/`` (the point catalog and the profile schema) and ``mibs/`` (BMSGW-MIB and the IETF modules it
imports) stay at the top of the repository, where people and tools look for them.  ``gateway/_data/profiles``
and ``gateway/_data/mibs`` are relative symlinks to them, so that one lookup works in every layout: a checkout
or an editable install (through the links), the wheel (setuptools' package discovery follows the links and
copies the files as package data), and the .deb (debian/build-app.py keeps the links, which lead to
/usr/share/bmsgw/profiles and /usr/share/bmsgw/mibs).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_dir(name: str) -> Path:
    """The shipped folder ``name`` (``profiles`` or ``mibs``): the real folder, so that messages name the file
    a person would open and paths compare equal however they were reached."""
    folder = files(__name__) / name
    if not isinstance(folder, Path):  # a zip import: bmsgw is only ever installed unpacked
        raise RuntimeError(f"bmsgw's {name} folder is not on the file system: {folder}")
    return folder.resolve()
