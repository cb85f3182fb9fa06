"""The one life cycle every long-running part of the gateway shares: faces, alarms, history, analytics, notify.

A plugin returns its services from ``bmsgw_services(gateway)``.  The gateway owns them: it registers each one
in its plugin manager (so a service's ``@hookimpl`` methods -- ``bmsgw_alarm_event``, ``bmsgw_commands`` ... --
are called with the service's own state, no module-level registry), starts them in the order their ``after``
names ask for, reloads them when a section they read changes, and stops them in reverse order.

::

    class LineFace(Service):
        name = "lines"
        sections = ("lines", "site")       # reload() is called when one of these changes

        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        async def reload(self, config, changed) -> ReloadResult:
            ...                             # apply what it can; list the rest in ReloadResult.restart
        def status(self) -> dict: ...
        def endpoints(self) -> list[str]: ...
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import GatewayError
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .app import Gateway
    from .config import Config
    from .pointmap import Catalog


class StartError(GatewayError):
    """A service cannot start (a port that cannot be bound, a file it needs): start-up stops with this text,
    which names the service, the address or file, and the reason."""


@dataclass
class ReloadResult:
    """What a service made of a changed configuration.

    ``restart``: keys (``section`` or ``section.key``) that take effect at the next restart; ``failed``: key ->
    why the running setting was kept (a new listen address that cannot be bound); ``notes``: what a user should
    know about what was applied (``2 Modbus clients not in allow_from were disconnected``).  Everything of the
    changed sections not named in ``restart`` or ``failed`` is applied."""

    restart: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def merge(self, other: ReloadResult) -> None:
        self.restart.extend(k for k in other.restart if k not in self.restart)
        self.failed.update(other.failed)
        self.notes.extend(other.notes)


class Service:
    """Base class of a long-running part (see the module docstring).  Override what the service does; the
    defaults start nothing, report nothing and take no change live (a changed section waits for a restart)."""

    name: str = ""
    sections: tuple[str, ...] = ()  # config sections it reads; reload() is called when one of them changes
    after: tuple[str, ...] = ()  # services that must run before this one starts (ignored when not running)
    face: bool = False  # a northbound face (a server or uploader for clients), not a part of the gateway itself
    # A reload that sets ``<first section>.enabled: false`` stops the service at once; a service that cannot be
    # stopped from inside a reload (the web face answers the very request that turns it off) says False, and
    # its own reload reports ``enabled`` as waiting for a restart.
    stops_live: bool = True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Apply ``config`` (the new one, already checked) for the ``changed`` sections among ``sections``.

        Called in the gateway's event loop; the gateway's ``config`` is still the old one while this runs.
        The default takes nothing live."""
        return ReloadResult(restart=sorted(changed))

    def status(self) -> dict[str, Any]:
        return {}

    def endpoints(self) -> list[str]:
        """Where it listens or sends to, for a person: ``modbus-tcp://127.0.0.1:5020``."""
        return []


def start_order(services: Iterable[Service]) -> list[Service]:
    """``services`` ordered so that every service comes after those its ``after`` names (a name that is not
    among them is ignored: that service is off); otherwise in the order given.  GatewayError on a cycle or
    on two services of one name."""
    by_name: dict[str, Service] = {}
    for svc in services:
        if not svc.name:
            raise GatewayError(f"service {svc!r} has no name")
        if svc.name in by_name:
            raise GatewayError(f"two services are named {svc.name!r}")
        by_name[svc.name] = svc
    ordered: list[Service] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(svc: Service, chain: tuple[str, ...]) -> None:
        mark = state.get(svc.name)
        if mark == "done":
            return
        if mark == "visiting":
            raise GatewayError("services wait for each other: " + " -> ".join((*chain, svc.name)))
        state[svc.name] = "visiting"
        for dep in svc.after:
            if dep in by_name:
                visit(by_name[dep], (*chain, svc.name))
        state[svc.name] = "done"
        ordered.append(svc)

    for svc in by_name.values():
        visit(svc, ())
    return ordered


# -- a face's plugin module ------------------------------------------------------------------------------------
SectionCheck = Callable[[dict[str, Any], "Config", "Catalog"], list[str]]
ServiceFactory = Callable[["Gateway", dict[str, Any]], Service]


class FaceHooks(NamedTuple):
    """The hooks every face's plugin module has, to be bound to these names at its top level (pluggy registers
    a module's functions by their names)."""

    bmsgw_config_schema: Callable[[], dict[str, dict[str, Any]]]
    bmsgw_check_config: Callable[..., list[str]]
    bmsgw_services: Callable[..., list[Service]]


def face_plugin(section: str, schema: dict[str, Any], service: str | ServiceFactory,
                check: SectionCheck | None = None) -> FaceHooks:
    """The config section, its checks and its service, registered the same way for every face::

        bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
            "lines", SCHEMA, "lines_face.face:LinesFace", check=section_problems)

    ``schema``: the section's JSON Schema; ``service``: the Service class (or any ``(gateway, section) ->
    Service``), or where it is (``"module:Class"``), imported only when the section's ``enabled`` is on, so a
    face that is off loads nothing of its own; ``check(section, config, catalog)``: the problems of the section
    beyond its schema, for ``bmsgw check-config``, start-up and the web page's save (checks that only matter
    while the face is on say so themselves)."""

    @hookimpl
    def bmsgw_config_schema() -> dict[str, dict[str, Any]]:
        return {section: schema}

    @hookimpl
    def bmsgw_check_config(gateway_config: Config, catalog: Catalog) -> list[str]:
        return check(gateway_config.section(section), gateway_config, catalog) if check is not None else []

    @hookimpl
    def bmsgw_services(gateway: Gateway) -> list[Service]:
        cfg = gateway.config.section(section)
        if not cfg["enabled"]:
            return []
        factory = service
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
        return [factory(gateway, cfg)]

    return FaceHooks(bmsgw_config_schema, bmsgw_check_config, bmsgw_services)
