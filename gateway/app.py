"""The gateway assembled: plugins, profiles, config, catalog, point map, store, engine, simulator, faces."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from .commands import AUDIT_LOGGER, Command, NotWritable, Principal, WriteDenied, WriteError, WriteFailed, WriteRejected
from .config import CORE_SCHEMA, Config, build_topology, load_config, read_raw, validate
from .engine import CommEvent, DeviceWriteError, Engine
from .errors import ConfigError, GatewayError
from .plugins import PluginError, make_plugin_manager
from .pointmap import Catalog, CatalogError, PointMap
from .points import PointRef, PointSpec, PointStore
from .profiles import CATALOG_PATH, PROFILES_DIR, load_catalog_file, load_profiles
from .service import ReloadResult, Service, StartError, start_order

log = logging.getLogger(__name__)
audit = logging.getLogger(AUDIT_LOGGER)
T = TypeVar("T")

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


class ConfigProblems(ConfigError):
    """Every problem ``Gateway.check`` found; reads as the first one, ``problems`` has them all."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.file, first.path, first.message)
        self.problems = problems

    def __str__(self) -> str:  # the CLI prefixes the first line with "bmsgw: ": every line then reads the same
        return "\nbmsgw: ".join(str(p) for p in self.problems)


@dataclass
class ReloadReport:
    """What ``Gateway.reload`` did with each changed section (the web page and ``PUT /api/v1/config`` show
    it): ``applied`` live, waiting for a restart, or ``failed`` (the running setting kept, with the reason)."""

    changed: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "applied": self.applied, "restart_required": self.restart_required,
                "failed": self.failed, "notes": self.notes}


def check_value(spec: PointSpec, value: Any) -> float:
    """A value written to ``spec``: a finite number, one of its states, inside its valid range and what its
    encoding can carry; WriteRejected saying what is accepted otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WriteRejected(f"{spec.id} takes a number, not {value!r}")
    value = float(value)
    states = dict(spec.states)
    if states and value not in states:
        raise WriteRejected(f"{spec.id} takes " + ", ".join(f"{v} ({label})" for v, label in sorted(states.items())))
    if spec.valid_range is not None and not spec.valid_range[0] <= value <= spec.valid_range[1]:
        raise WriteRejected(f"{spec.id} takes {spec.valid_range[0]:g} to {spec.valid_range[1]:g}, not {value:g}")
    if spec.dtype.startswith("uint") and value < 0:
        raise WriteRejected(f"{spec.id} takes no negative value")
    return value


def _keep_running(live: Config, old: Config, restart: list[str], failed: dict[str, str]) -> Config:
    """The running configuration: ``live`` with the old values of what waits for a restart or failed."""
    data = dict(live.data)
    for key in [*restart, *failed]:
        section, _, sub = key.partition(".")
        if section not in old.data and section not in data:
            continue
        if not sub:
            data[section] = old.data.get(section)
        elif isinstance(data.get(section), dict) and isinstance(old.data.get(section), dict) and "." not in sub:
            data[section] = {**data[section], sub: old.data[section].get(sub)}
    return Config(path=live.path, data=data, topology=live.topology, profiles=live.profiles)


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
        self.section_owners: dict[str, str] = {}  # config section -> the plugin that declared it
        for impl in self.pm.hook.bmsgw_config_schema.get_hookimpls():
            declared = impl.function() or {}
            if not isinstance(declared, dict):
                raise PluginError(f"plugin {impl.plugin_name}: bmsgw_config_schema must return a dict")
            for name, schema in declared.items():
                if name in sections or name in CORE_SCHEMA:
                    raise ConfigError(str(config_path), name, "config section claimed twice (by two plugins, or "
                                                              "by a plugin and the core)")
                sections[name] = schema
                self.section_owners[name] = impl.plugin_name
        self.extra_sections = sections
        self.config: Config = load_config(config_path, self.profiles, sections)
        self.catalog = self._build_catalog()
        self.topology = self.config.topology
        self.store = PointStore()
        self.pointmap = PointMap(self.catalog, self.topology, self.profiles)
        self.started_at = time.time()
        self.simulator = None
        sim_cfg = self.config.section("simulator")
        use_sim = sim_cfg["enabled"] if simulator is None else simulator
        ports = dict(port_overrides or {})
        sim_buses = [b.name for b in self.topology.buses if b.port == "sim" and b.name not in ports]
        if sim_buses and not use_sim:
            check_sim_ports(self.config)
            idx = next(i for i, b in enumerate(self.topology.buses) if b.name == sim_buses[0])
            raise ConfigError(str(config_path), f"buses[{idx}].port",
                              "port 'sim' needs the built-in simulator, but it is not started here")
        # the lived-in demo: a wholly simulated bank back-fills its history at the first start (gateway.backfill)
        self.backfill_plan = None
        self.backfill_status: dict[str, Any] | None = None
        self._backfill: Any = None
        if sim_buses and len(sim_buses) == len(self.topology.buses):
            from .backfill import plan

            self.backfill_plan = plan(self.config)
        if sim_buses:
            self.simulator = self.make_simulator(sim_buses)
            ports.update(self.simulator.ports())
        decode_impls = self.pm.hook.bmsgw_decode_register.get_hookimpls()
        self.engine = Engine(self.topology, self.profiles, self.store, self.config.data["gateway"]["poll"],
                             ports=ports,
                             decode_hook=self._decode if decode_impls else None,
                             comm_callback=self._on_comm_event,
                             discovery=self.config.data["gateway"]["discovery"])
        self.services: dict[str, Service] = {}  # running, in start order
        self.loop: asyncio.AbstractEventLoop | None = None
        self._shared: dict[Callable[..., Any], Any] = {}
        self._shared_lock = threading.Lock()

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
        backfill_plan = getattr(self, "backfill_plan", None)
        if backfill_plan is not None and "model" not in overrides:
            from .backfill import live_model

            overrides["model"] = live_model(self.config, backfill_plan)  # the back-filled batteries, aged
        return simulator_from_config(self.config, buses=names, **overrides)

    def _on_comm_event(self, event: CommEvent) -> None:
        self.pm.hook.bmsgw_comm_event(gateway=self, event=event)

    # -- checking ------------------------------------------------------------------------------------------
    def check(self, data: Any = None) -> Config:
        """Every check ``bmsgw run`` makes, on a document (default: the config file as it is now): the schema of
        every section, the topology against the known profiles, the simulator's ports and every plugin's own
        checks (``bmsgw_check_config``).  Builds nothing, opens and writes nothing.

        Returns the checked Config (defaults filled in); raises ConfigProblems listing every problem."""
        src = str(self.config.path)
        if data is None:
            data = read_raw(self.config.path)
        validated = validate(data, src, self.extra_sections)
        topology = build_topology(validated, src, self.profiles)
        config = Config(path=self.config.path, data=validated, topology=topology, profiles=self.profiles)
        check_sim_ports(config)
        problems = []
        for found in self.pm.hook.bmsgw_check_config(gateway_config=config, catalog=self.catalog):
            for problem in found or []:
                where, _, message = str(problem).partition(": ")
                problems.append(ConfigError(src, where, message) if message else ConfigError(src, "", where))
        if problems:
            raise ConfigProblems(problems)
        return config

    def shared(self, factory: Callable[[Gateway], T]) -> T:
        """The one object ``factory(gateway)`` made for this gateway, made on first use: state that several
        plugins share (the ``/metrics`` renderer serves the Prometheus face and the web face).  Any thread."""
        with self._shared_lock:
            obj = self._shared.get(factory)
            if obj is None:
                obj = self._shared[factory] = factory(self)
            return cast(T, obj)

    # -- services --------------------------------------------------------------------------------------------
    def service(self, name: str) -> Service | None:
        """A running service by name (``alarms``, ``snmp``, ``modbus_tcp`` ...), None when it is off."""
        return self.services.get(name)

    def _new_services(self, plugin: str | None = None) -> list[Service]:
        """The services the plugins (or one plugin) want for the current config, not yet running."""
        hook = self.pm.hook.bmsgw_services
        impls = [i for i in hook.get_hookimpls() if plugin is None or i.plugin_name == plugin]
        out: list[Service] = []
        for impl in reversed(impls):  # in the plugins' load order: the built-in list first
            made = impl.function(**dict.fromkeys(impl.argnames, self)) or []
            if not isinstance(made, (list, tuple)):
                raise GatewayError(f"plugin {impl.plugin_name}: bmsgw_services must return a list of services")
            for svc in made:
                if not isinstance(svc, Service):
                    raise GatewayError(f"plugin {impl.plugin_name}: {svc!r} is not a gateway.service.Service")
                if svc.name not in self.services:
                    out.append(svc)
        return out

    async def _start_service(self, svc: Service) -> None:
        """Start one service and let its hook methods be called; StartError naming the service on failure."""
        self.pm.register(svc, name=f"service:{svc.name}")
        try:
            await svc.start()
        except Exception as exc:
            self.pm.unregister(svc)
            with contextlib.suppress(Exception):
                await svc.stop()
            if isinstance(exc, StartError):
                raise
            raise StartError(f"{svc.name} cannot start: {exc}") from exc
        self.services[svc.name] = svc

    async def _stop_service(self, svc: Service) -> None:
        self.services.pop(svc.name, None)
        try:
            await svc.stop()
        except Exception:
            log.exception("stopping %s failed", svc.name)
        finally:
            if self.pm.is_registered(svc):
                self.pm.unregister(svc)

    async def start(self, faces: bool = True) -> None:
        """Check the config, start the simulator, every service (the faces too unless ``faces`` is False) in
        the order they ask for, then polling.  A service that cannot start (a port in use) stops start-up with
        its name, the address and the reason, after stopping what had started."""
        self.check(self.config.data)
        self.loop = asyncio.get_running_loop()
        await self.backfill()
        if self.simulator is not None:
            self.simulator.start()
        self.pm.hook.bmsgw_gateway_ready(gateway=self)
        wanted = [svc for svc in self._new_services() if faces or not svc.face]
        for svc in start_order(wanted):
            try:
                await self._start_service(svc)
            except StartError as exc:
                log.error("%s", exc)
                await self.stop()
                raise
        await self.engine.start()

    async def backfill(self) -> None:
        """The first start of a wholly simulated bank with ``simulator.backfill_days``: its simulated history,
        before anything else starts (``gateway.backfill``; progress in the log and in ``status()``).  A failure
        is logged and the gateway starts without it; a stop request ends it (BackfillCancelled)."""
        from . import backfill as bf

        p = self.backfill_plan
        if p is None:
            return
        if not p.needed:
            if p.skip_reason and bf.read_marker(p.state_dir) is None:
                bf.skip(p)
            self.backfill_status = bf.status_from_marker(p)
            return

        def progress(info: dict[str, Any]) -> None:
            self.backfill_status = info

        self._backfill = job = bf.Backfill(self.config, p, progress)
        self.backfill_status = {"state": "running", "percent": 0, "days": int(p.days)}
        try:
            await asyncio.to_thread(job.run)
        except bf.BackfillCancelled:
            raise
        except Exception as exc:
            log.exception("back-filling the simulated history failed; starting without it (delete %s to try "
                          "again)", p.marker)
            bf.failed(p, exc)
            self.backfill_status = {"state": "failed", "error": str(exc)}
        finally:
            self._backfill = None
        p.needed = False

    def cancel_backfill(self) -> None:
        job = self._backfill
        if job is not None:
            job.cancel()

    async def stop(self) -> None:
        await self.engine.stop()
        for svc in reversed(list(self.services.values())):
            await self._stop_service(svc)
        if self.simulator is not None:
            self.simulator.stop()

    def endpoints(self) -> list[str]:
        out: list[str] = []
        for svc in self.services.values():
            out.extend(f"{svc.name}: {e}" for e in svc.endpoints())
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"site": self.config.section("site"), "uptime_s": round(time.time() - self.started_at, 1),
                               "points": len(self.pointmap), "readings": len(self.store),
                               "buses": self.engine.counters()}
        if self.backfill_status is not None:
            out["backfill"] = dict(self.backfill_status)
        for svc in self.services.values():
            try:
                st = svc.status()
            except Exception:
                log.exception("%s: status failed", svc.name)
                continue
            if st:
                out[svc.name] = st
        for result in self.pm.hook.bmsgw_status(gateway=self):
            out.update(result or {})
        return out

    # -- live reconfiguration -------------------------------------------------------------------------------
    async def reload(self, new: Config) -> ReloadReport:
        """Apply a checked configuration (``check``) while running, in the event loop.

        Each changed section goes to what reads it: the core takes ``gateway`` (log level, poll settings,
        discovery) and ``site``; every running service whose ``sections`` name it gets ``reload``; a face
        turned on is started, one turned off (``enabled: false``) stopped.  Whatever nothing applies waits for
        a restart and is listed in ``restart_required`` -- there is no list of restart sections to keep: a
        section is live exactly when something takes it.  The running configuration keeps the old values of
        what waits for a restart."""
        old = self.config
        changed = sorted(k for k in set(old.data) | set(new.data) if old.data.get(k) != new.data.get(k))
        report = ReloadReport(changed=changed)
        if not changed:
            return report
        result = ReloadResult()
        handled: set[str] = set()
        core = self._reload_core(old, new, set(changed))
        handled.update(core.pop("handled"))
        result.merge(core["result"])
        live_data = dict(new.data)
        for key in changed:
            if key not in handled and key in CORE_SCHEMA:  # the bank's shape: buses, strings, plugins ...
                live_data[key] = old.data.get(key)
        live = Config(path=old.path, data=live_data, topology=old.topology, profiles=old.profiles)
        self.config = live
        for svc in list(self.services.values()):
            mine = frozenset(changed) & set(svc.sections)
            if not mine:
                continue
            handled.update(mine)
            if svc.stops_live and svc.sections and live.section(svc.sections[0]).get("enabled") is False:
                await self._stop_service(svc)
                result.notes.append(f"{svc.name} stopped ({svc.sections[0]}.enabled is false)")
                continue
            try:
                result.merge(await svc.reload(live, mine))
            except Exception as exc:
                log.exception("%s: reload failed", svc.name)
                result.failed.update(dict.fromkeys(mine, f"{svc.name} could not apply it: {exc}"))
        for section in changed:
            owner = self.section_owners.get(section)
            if section in handled or owner is None:
                continue
            handled.add(section)  # a face that was off: start it now, or nothing runs that could use it
            for svc in start_order(self._new_services(owner)):
                try:
                    await self._start_service(svc)
                    result.notes.append(f"{svc.name} started")
                except StartError as exc:
                    result.failed[section] = str(exc)
        result.restart.extend(k for k in changed if k not in handled and k not in result.restart)
        self.config = _keep_running(live, old, result.restart, result.failed)
        report.restart_required = sorted(result.restart)
        report.failed = dict(result.failed)
        report.notes = result.notes
        waiting = {k.split(".")[0].split("[")[0] for k in [*result.restart, *result.failed]}
        report.applied = [k for k in changed if k not in waiting]  # wholly: nothing of it waits or failed
        log.info("configuration reloaded; changed: %s; applied: %s%s%s", ", ".join(changed) or "nothing",
                 ", ".join(report.applied) or "nothing",
                 f"; at the next restart: {', '.join(report.restart_required)}" if report.restart_required else "",
                 "".join(f"; {k} not applied: {why}" for k, why in report.failed.items()))
        return report

    def _reload_core(self, old: Config, new: Config, changed: set[str]) -> dict[str, Any]:
        """The core's own live settings: ``site`` (read by the faces that name it), ``gateway.log_level``,
        ``gateway.poll`` and ``gateway.discovery``; ``gateway.state_dir`` waits for a restart."""
        result = ReloadResult()
        handled = {"site"} & changed
        if "gateway" in changed:
            handled.add("gateway")
            gw_old, gw_new = old.data["gateway"], new.data["gateway"]
            logging.getLogger().setLevel(gw_new["log_level"])
            self.engine.apply_config(gw_new["poll"])
            self.engine.discovery = dict(gw_new["discovery"])
            if gw_old["state_dir"] != gw_new["state_dir"]:
                result.restart.append("gateway.state_dir")
        return {"handled": handled, "result": result}

    def run_in_loop(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` in the gateway's event loop from another thread (a web request) and wait for it."""
        loop = self.loop
        if loop is None or not loop.is_running():
            raise GatewayError("the gateway is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    # -- writes ----------------------------------------------------------------------------------------------
    def commands(self) -> dict[str, Command]:
        """The owner of every writable point family: the plugins' (``bmsgw_commands``) and the engine's for
        writable device registers."""
        out: dict[str, Command] = {}
        for spec in self.catalog:
            if spec.writable and spec.kind != "command":
                out[spec.id] = Command(spec.id, self._write_device, role="operator")
        for found in self.pm.hook.bmsgw_commands(gateway=self):
            for cmd in found or []:
                out[cmd.point] = cmd
        return out

    async def _write_device(self, ref: PointRef, value: float, by: Principal) -> str:
        try:
            await self.engine.write_point(ref, value)
        except DeviceWriteError as exc:
            raise WriteFailed(str(exc)) from exc
        return "written to the device"

    async def write(self, ref: PointRef, value: float, by: Principal) -> str:
        """The one way to write a point or run a command (see ``gateway.commands``): checked, logged, carried
        out by its owner.  Returns what was done, for the person who asked; raises a WriteError subclass."""
        spec = self.catalog.get(ref.point)
        entry = self.pointmap.command(ref) if spec is not None and spec.kind == "command" else self.pointmap.get(ref)
        if spec is None or not spec.writable or entry is None:
            raise NotWritable(f"{ref} is not a writable point of this bank")
        command = self.commands().get(ref.point)
        if command is None or (spec.kind != "command" and self.engine.writable(ref) is None):
            raise NotWritable(f"nothing carries out writes to {ref} here (is its module turned off?)")
        if not by.may(command.role):
            audit.warning("%s refused: write %s = %s (needs the %s role)", by, ref, value, command.role)
            raise WriteDenied(f"writing {ref.point} needs the {command.role} role")
        checked = check_value(spec, value)
        try:
            done = command.handler(ref, checked, by)
            if inspect.isawaitable(done):
                done = await done
        except WriteError as exc:
            audit.warning("%s: write %s = %g failed: %s", by, ref, checked, exc)
            raise
        except ValueError as exc:
            audit.warning("%s: write %s = %g refused: %s", by, ref, checked, exc)
            raise WriteRejected(str(exc)) from exc
        except Exception as exc:
            log.exception("writing %s failed", ref)
            raise WriteFailed(f"writing {ref} failed: {exc}") from exc
        text = str(done) if done else "done"
        audit.info("%s wrote %s = %g: %s", by, ref, checked, text)
        return text

    def write_from_thread(self, ref: PointRef, value: float, by: Principal, timeout: float = 15.0) -> str:
        """``write`` from a thread that is not the event loop's (a web request)."""
        return self.run_in_loop(self.write(ref, value, by), timeout)

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

    async def reload_file(self) -> ReloadReport | None:
        """SIGHUP (``systemctl reload bmsgw``): check the config file again and apply it; a file that does not
        pass the checks is logged and the running configuration kept."""
        try:
            new = self.check()
        except ConfigError as exc:
            problems = exc.problems if isinstance(exc, ConfigProblems) else [exc]
            log.error("reload refused, the running configuration is kept: %s", "; ".join(map(str, problems)))
            return None
        return await self.reload(new)

    async def serve_forever(self) -> None:
        """``bmsgw run``: start everything, say where each face listens, run until SIGTERM/SIGINT; SIGHUP
        reloads the config file."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_stop() -> None:
            stop.set()
            self.cancel_backfill()  # a first start's back-fill stops at its next step

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)
        reloads: set[asyncio.Task[Any]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload_file())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
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
