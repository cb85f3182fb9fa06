"""Commands as writable points: who may write, what a write is refused for, and who carries it out.

Every write -- a relay switched, an alarm acknowledged, an ohmic baseline reset, a current sensor zeroed --
goes through one entry, ``Gateway.write(ref, value, by=principal)``: it checks that the point is writable,
that the principal's role is enough, that the value is one the point takes, logs who did it (logger
``bmsgw.audit``) and calls the owning plugin's handler.  Faces (Modbus FC6/FC16, REST, the web page, SNMP SET)
only translate their request into that call and its errors into their protocol's.

A plugin owns a writable point family by returning a ``Command`` for it from ``bmsgw_commands(gateway)``;
writable device registers (a profile register with ``writable: true``, e.g. the I/O module's relay) are
owned by the engine.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import GatewayError
from .points import PointRef

ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may
AUDIT_LOGGER = "bmsgw.audit"


def role_rank(role: str) -> int:
    return ROLES.index(role) if role in ROLES else -1


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asks for a write.  ``via`` names the face (``web``, ``rest``, ``modbus``, ``snmp``, ``cli``),
    ``address`` the client's address when there is one."""

    name: str
    role: str
    via: str
    address: str = ""

    def may(self, role: str) -> bool:
        return role_rank(self.role) >= role_rank(role) >= 0

    def __str__(self) -> str:
        where = f" from {self.address}" if self.address else ""
        return f"{self.name} ({self.via}{where}, {self.role})"


# A handler gets the point, the value (already checked against the family's states and range) and who asked;
# it returns a short sentence of what it did (or None), or raises ValueError for a value it does not take.
CommandHandler = Callable[[PointRef, float, Principal], "Awaitable[str | None] | str | None"]


@dataclass(frozen=True, slots=True)
class Command:
    """The owner of a writable point family: ``point`` (a family of the catalog with ``writable: true``),
    the least ``role`` that may write it, and the ``handler`` (called in the gateway's event loop; it may be
    a coroutine function, and should be quick)."""

    point: str
    handler: CommandHandler
    role: str = "operator"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"command {self.point}: role {self.role!r} is not one of {', '.join(ROLES)}")


class WriteError(GatewayError):
    """A write that was not carried out.  Faces map the subclasses onto their protocol's answers."""


class NotWritable(WriteError):
    """No such writable point in this bank (Modbus exception 02, HTTP 404, SNMP notWritable)."""


class WriteDenied(WriteError):
    """The principal's role is not enough, or the face does not take writes from it (exception 02, HTTP 403,
    SNMP noAccess)."""


class WriteRejected(WriteError):
    """A value the point does not take (exception 03, HTTP 400, SNMP wrongValue)."""


class WriteFailed(WriteError):
    """The owner could not carry it out: a device did not answer (exception 0B, HTTP 502, SNMP commitFailed)."""
