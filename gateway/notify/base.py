"""The notifier contract: what a plugin returns from ``bmsgw_notifiers`` and what it is given to deliver."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..alarms.model import SEVERITIES, AlarmEvent


class DeliveryError(Exception):
    """A delivery failed.  ``permanent``: trying again cannot help (a refused login, a wrong SIM PIN, a bad
    address), so the router gives up at once instead of retrying."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Message:
    """A composed notification for people: one alarm, or a digest of many."""

    subject: str  # e-mail subject
    body: str  # e-mail body, plain text
    short: str  # one line for an SMS or a chat (the notifier shortens it further when it must)
    events: tuple[AlarmEvent, ...]
    route: str
    digest: bool
    severity: str  # the highest severity among the events
    ts: float


@dataclass(frozen=True, slots=True)
class Sync:
    """Asks a stateful notifier (the relay) to bring its output in line with the active-alarm table."""

    reason: str
    ts: float


@dataclass(frozen=True, slots=True)
class Ack:
    """An alarm was acknowledged (``event.acknowledged_by``/``acknowledged`` say by whom and when)."""

    event: AlarmEvent


Item = Message | AlarmEvent | Ack | Sync


class Notifier(ABC):
    """Base class of a notifier.

    ``deliver`` is called in the notifier's own worker thread (never in the event loop), one item at a time;
    it may block (SMTP, a serial modem, HTTP) and raises ``DeliveryError`` when it fails; the router retries
    with back-off and logs what could not be delivered.

    * ``routed = True``: it gets ``Message`` objects for the recipients the routes name under
      ``notify.routes[].recipients.<name>`` (e-mail, SMS).
    * ``routed = False``: it gets every ``AlarmEvent`` whose severity is in ``severities`` (``recipient`` is
      None), an ``Ack`` for every acknowledgement when ``acks`` is True, and a ``Sync``
      at start when ``sync_at_start`` is True (relay, webhook).
    """

    name: str = "notifier"
    routed: bool = False
    severities: frozenset[str] = frozenset(SEVERITIES)
    acks: bool = False
    sync_at_start: bool = False
    testable: bool = True  # ``bmsgw notify-test`` may send it a made-up alarm

    @abstractmethod
    def deliver(self, recipient: str | None, item: Item) -> None:
        """Send ``item`` to ``recipient``; raise DeliveryError when it could not be delivered."""

    def take_over(self, old: Notifier) -> None:
        """Carry over what matters from the notifier this one replaces at a config reload (default: nothing)."""
        return None

    def check_recipient(self, recipient: str) -> str | None:
        """Why ``recipient`` is not a valid address for this notifier (None when it is)."""
        return None

    def describe(self) -> str:
        """Where it sends to, for ``bmsgw run``'s start-up log (no secrets)."""
        return self.name

    def close(self) -> None:  # noqa: B027 optional: a notifier with nothing to release keeps this no-op
        """Release ports and connections (called once, from the worker thread's owner, at shutdown)."""


def describe_item(item: Item) -> str:
    if isinstance(item, Message):
        if item.digest:
            return f"digest of {len(item.events)} alarm changes"
        e = item.events[0]
        return f"alarm {e.alarm_id} ({'raised' if e.active else 'cleared'})"
    if isinstance(item, AlarmEvent):
        return f"alarm {item.alarm_id} ({'raised' if item.active else 'cleared'})"
    if isinstance(item, Ack):
        return f"alarm {item.event.alarm_id} (acknowledged)"
    return f"sync ({item.reason})"
