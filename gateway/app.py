"""The gateway assembled: plugins, profiles, config, catalog, point map, store, engine, simulator, faces."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from .config import CORE_SCHEMA, Config, load_config, read_raw
from .engine import CommEvent, Engine
from .errors import ConfigError, GatewayError
from .hookspecs import Service
from .plugins import make_plugin_manager
from .pointmap import Catalog, CatalogError, PointMap
from .points import PointSpec, PointStore
from .profiles import CATALOG_PATH, PROFILES_DIR, load_catalog_file, load_profiles

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATHS = ("config.yaml", "/etc/bmsgw/config.yaml")


def default_config_path() -> str:
    env = os.environ.get("BMSGW_CONFIG")
    if env:
        return env
    for p in DEFAULT_CONFIG_PATHS:
        if Path(p).exists():
            return p
    return DEFAULT_CONFIG_PATHS[0]


def validate_section(raw: dict, name: str, src: str) -> dict:
    """One core section of a raw config, validated and with its defaults filled in."""
    from .config import CORE_SCHEMA, fill_defaults, validate_value

    return fill_defaults(CORE_SCHEMA[name], validate_value(raw.get(name, {}), CORE_SCHEMA[name], src, name))


def check_sim_ports(config: Config) -> None:
    """A bus on port 'sim' needs ``simulator.enabled: true``; raise the ConfigError ``bmsgw run`` would."""
    if config.section("simulator").get("enabled"):
        return
    for i, b in enumerate(config.topology.buses):
        if b.port == "sim":
            raise ConfigError(str(config.path), f"buses[{i}].port",
                              "port 'sim' needs the built-in simulator: set simulator.enabled: true, "
                              "or name the serial device (e.g. /dev/ttyS1)")


class Gateway:
    def __init__(self, config_path: str | Path, *, simulator: bool | None = None,
                 port_overrides: dict[str, str] | None = None, entry_points: bool = True) -> None:
        config_path = Path(config_path)
        raw = read_raw(config_path)
        # the plugins section decides which plugins (and so which config sections) exist: check it first
        plugin_cfg = validate_section(raw, "plugins", str(config_path))
        base = config_path.resolve().parent

        def rel(p: str) -> Path:
            return Path(p) if Path(p).is_absolute() else base / p

        for i, d in enumerate(plugin_cfg["dirs"]):
            if not rel(d).is_dir():
                raise ConfigError(str(config_path), f"plugins.dirs[{i}]", f"plugin folder {rel(d)} does not exist")
        self.pm = make_plugin_manager([rel(d) for d in plugin_cfg["dirs"]], plugin_cfg["disable"],
                                      entry_points=entry_points)
        dirs = [PROFILES_DIR]
        for result in self.pm.hook.bmsgw_profile_dirs():
            dirs.extend(result or [])
        for i, d in enumerate(plugin_cfg["profile_dirs"]):
            if not rel(d).is_dir():
                raise ConfigError(str(config_path), f"plugins.profile_dirs[{i}]",
                                  f"profile folder {rel(d)} does not exist")
            dirs.append(rel(d))
        self.profiles = load_profiles(dirs)
        sections: dict[str, dict] = {}
        for result in self.pm.hook.bmsgw_config_schema():
            for name, schema in (result or {}).items():
                if name in sections or name in CORE_SCHEMA:
                    raise ConfigError(str(config_path), name, "config section claimed twice (by two plugins, or "
                                                              "by a plugin and the core)")
                sections[name] = schema
        self.config: Config = load_config(config_path, self.profiles, sections)
        self.catalog = self._build_catalog()
        self.topology = self.config.topology
        self.store = PointStore()
        self.pointmap = PointMap(self.catalog, self.topology, self.profiles)
        self.started_at = time.time()
        self.simulator = None
        sim_cfg = self.config.section("simulator")
        use_sim = sim_cfg.get("enabled", False) if simulator is None else simulator
        ports = dict(port_overrides or {})
        sim_buses = [b.name for b in self.topology.buses if b.port == "sim" and b.name not in ports]
        if sim_buses and not use_sim:
            check_sim_ports(self.config)
            idx = next(i for i, b in enumerate(self.topology.buses) if b.name == sim_buses[0])
            raise ConfigError(str(config_path), f"buses[{idx}].port",
                              "port 'sim' needs the built-in simulator, but it is not started here")
        if sim_buses:
            self.simulator = self.make_simulator(sim_buses)
            ports.update(self.simulator.ports())
        decode_impls = self.pm.hook.bmsgw_decode_register.get_hookimpls()
        self.engine = Engine(self.topology, self.profiles, self.store, self.config.data["gateway"]["poll"],
                             ports=ports,
                             decode_hook=self._decode if decode_impls else None,
                             comm_callback=self._on_comm_event,
                             discovery=self.config.data["gateway"]["discovery"])
        self.services: list[Service] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- construction helpers --------------------------------------------------------------------------------
    def _build_catalog(self) -> Catalog:
        catalog = Catalog()

        def add(spec: PointSpec, origin: str, where: str) -> None:
            try:
                catalog.add(spec, origin)
            except CatalogError as exc:
                raise ConfigError(origin, where, str(exc)) from None

        for i, spec in enumerate(load_catalog_file()):
            add(spec, str(CATALOG_PATH), f"points[{i}]")
        for prof in self.profiles.values():
            for i, spec in enumerate(prof.points):
                add(spec, prof.source, f"points[{i}]")
        for impl in self.pm.hook.bmsgw_point_families.get_hookimpls():
            specs = impl.function() or []
            if not isinstance(specs, Iterable):  # pluggy types a hook's result as object
                raise ConfigError(f"plugin {impl.plugin_name}", "bmsgw_point_families",
                                  f"expected a list of PointSpec, got {type(specs).__name__}")
            for spec in specs:
                add(spec, f"plugin {impl.plugin_name}", f"bmsgw_point_families: {spec.id}")
        for prof in self.profiles.values():
            for i, reg in enumerate(prof.registers):
                if reg.point not in catalog:
                    raise ConfigError(prof.source, f"registers[{i}].point",
                                      f"unknown point family {reg.point!r}; declare it under `points:` in the profile")
                spec = catalog[reg.point]
                if spec.scope != ("cell" if reg.per_cell_stride else prof.scope):
                    raise ConfigError(prof.source, f"registers[{i}].point",
                                      f"{reg.point} is a {spec.scope} point; this device measures a {prof.scope}")
        return catalog

    def _decode(self, profile, register, words):
        return self.pm.hook.bmsgw_decode_register(profile=profile, register=register, words=words)

    def _encode(self, profile, register, value):
        return self.pm.hook.bmsgw_encode_register(profile=profile, register=register, value=value)

    def make_simulator(self, buses: list[str] | None = None, **overrides):
        """A simulator for ``buses`` (default: every bus) from the config's ``simulator`` section, with the
        plugins' encoders; ``overrides`` replace config values (e.g. ``wire_time=False``)."""
        from .sim import simulator_from_config

        if self.pm.hook.bmsgw_encode_register.get_hookimpls():
            overrides.setdefault("encode_hook", self._encode)
        names = buses if buses is not None else [b.name for b in self.topology.buses]
        return simulator_from_config(self.config, buses=names, **overrides)

    def _on_comm_event(self, event: CommEvent) -> None:
        self.pm.hook.bmsgw_comm_event(gateway=self, event=event)

    def config_problems(self) -> list[str]:
        """What the plugins find wrong in their config sections (``bmsgw_check_config``), each as
        ``"file: key.path: what is wrong"``; [] when all is well."""
        out: list[str] = []
        for problems in self.pm.hook.bmsgw_check_config(gateway_config=self.config, catalog=self.catalog):
            out.extend(f"{self.config.path}: {p}" for p in problems or [])
        return out

    # -- running ---------------------------------------------------------------------------------------------
    async def start(self, services: bool = True) -> None:
        problems = self.config_problems()
        if problems:  # the CLI prefixes the first line with "bmsgw: ": every line then reads the same
            raise GatewayError("\nbmsgw: ".join(problems))
        self.loop = asyncio.get_running_loop()
        if self.simulator is not None:
            self.simulator.start()
        self.pm.hook.bmsgw_gateway_ready(gateway=self)
        if services:
            for result in self.pm.hook.bmsgw_services(gateway=self):
                for svc in result or []:
                    try:
                        await svc.start()
                    except Exception as exc:  # e.g. a port in use: say which face, stop what started
                        log.error("%s failed to start: %s", getattr(svc, "name", svc), exc)
                        await self.stop()
                        raise GatewayError(f"{getattr(svc, 'name', svc)} cannot start: {exc}") from exc
                    self.services.append(svc)
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()
        for svc in reversed(self.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("stopping %s failed", getattr(svc, "name", svc))
        self.services.clear()
        if self.simulator is not None:
            self.simulator.stop()

    def endpoints(self) -> list[str]:
        out: list[str] = []
        for svc in self.services:
            out.extend(f"{svc.name}: {e}" for e in svc.endpoints())
        return out

    def status(self) -> dict:
        out = {"site": self.config.section("site"), "uptime_s": round(time.time() - self.started_at, 1),
               "points": len(self.pointmap), "readings": len(self.store), "buses": self.engine.counters()}
        for result in self.pm.hook.bmsgw_status(gateway=self):
            out.update(result or {})
        return out

    @staticmethod
    def freeze_startup_objects() -> None:
        """Move everything built at start-up out of the garbage collector's way (``gc.freeze``).

        The catalog, the point map, the faces' indexes and images are a few hundred thousand objects that live
        as long as the process; left in the collector's oldest generation, each full collection walks all of
        them: 0.1 s on a PC at rest, 0.13-0.34 s under the soak's load (bench/soak.py), 15-25x that on the
        controller's CPU, a pause for every face and every poll.  Frozen, a full collection only walks what
        was allocated since.  (An object made at start-up and dropped later is still freed by its reference
        count; only a reference cycle among such objects would stay.)"""
        gc.collect()
        gc.freeze()
        log.debug("moved %d start-up objects out of the garbage collector's way", gc.get_freeze_count())

    async def serve_forever(self) -> None:
        """``bmsgw run``: start everything, say where each face listens, run until SIGTERM/SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        self.freeze_startup_objects()
        sc = self.config.section("site")
        log.info("bmsgw started for %s: %d strings, %d batteries, %d devices on %d buses, %d points",
                 sc.get("name"), len(self.topology.strings), self.topology.cell_count,
                 len(self.topology.devices), len(self.topology.buses), len(self.pointmap))
        for name, bs in self.engine.buses.items():
            log.info("bus %s: %s at %d baud, %d devices", name, bs.port, bs.bus.baud, len(bs.devices))
        for line in self.endpoints():
            log.info("listening: %s", line)
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await self.stop()
