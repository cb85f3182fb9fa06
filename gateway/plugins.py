"""The plugin manager: built-in plugins from a default list, third-party ones from entry points and folders."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import pluggy

from . import hookspecs
from .errors import GatewayError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bmsgw.plugins"

# Built-in plugins, in load order.  Device families first, then what derives values, then the faces.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.cell_sensor",
    "plugins.string_sensor",
    "plugins.bmu",
    "plugins.cmu",
    "plugins.io_module",
    "gateway.outputs.modbus_tcp",
    "gateway.outputs.snmp",
    "gateway.strings",
    "gateway.alarms",
    "gateway.notify",
    "gateway.notify.mail",
    "gateway.notify.sms",
    "gateway.notify.relay",
    "gateway.notify.webhook",
    "gateway.analytics",
    "gateway.history",
    "gateway.reports",
    "gateway.outputs.web",
    "gateway.outputs.prometheus",
    "gateway.outputs.mqtt",
    "gateway.outputs.bacnet",
    "gateway.outputs.nut",
    "gateway.secretfiles",
)


class PluginError(GatewayError):
    pass


def load_plugin_folder(folder: Path):
    """Import a plugin folder (a package with ``__init__.py``) under a name that cannot clash."""
    init = folder / "__init__.py"
    name = f"bmsgw_ext_{folder.name}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise PluginError(f"{folder}: cannot load plugin")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"{init}: plugin failed to load: {exc}") from exc
    return module


class _FolderProfiles:
    """A plugin folder with profiles but no code."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookspecs.hookimpl
    def bmsgw_profile_dirs(self):
        return [self.folder / "profiles", self.folder]


def make_plugin_manager(plugin_dirs: Iterable[str | Path] = (), disable: Iterable[str] = (),
                        builtin: Iterable[str] = BUILTIN_PLUGINS, entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.GatewaySpecs)
    blocked = set(disable)
    for name in blocked:
        pm.set_blocked(name)
    for modname in builtin:
        if modname in blocked:
            continue
        pm.register(importlib.import_module(modname), name=modname)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for d in plugin_dirs:
        d = Path(d)
        if not d.is_dir():
            raise PluginError(f"plugin folder {d} does not exist")
        for folder in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            name = f"dir:{folder.name}"
            if folder.name in blocked or name in blocked:
                continue
            if (folder / "__init__.py").exists():
                module = load_plugin_folder(folder)
                pm.register(module, name=name)
                if (folder / "profiles").is_dir() and not hasattr(module, "bmsgw_profile_dirs"):
                    pm.register(_FolderProfiles(folder), name=f"{name}:profiles")  # its profiles come along
            else:
                pm.register(_FolderProfiles(folder), name=name)
            log.info("loaded plugin %s from %s", folder.name, folder)
    pm.check_pending()
    return pm
