"""requirements.lock as the tests read it: with debian/lockfile.py, the module the package build uses."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.conftest import ROOT


def _load_lockfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bmsgw_debian_lockfile", ROOT / "debian" / "lockfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lockfile = _load_lockfile()


def bundled_pins() -> list:
    """The runtime part of the lock, as the .deb bundles it, with the tested .venv's metadata."""
    return lockfile.runtime_closure(lockfile.project_dependencies(), lockfile.read_lock(),
                                    lockfile.installed_requirements)
