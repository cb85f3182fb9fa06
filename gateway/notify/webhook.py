"""A webhook: every alarm event (and acknowledgement) as a JSON POST, with urllib."""
from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from ..alarms.model import AlarmEvent
from ..errors import ConfigError
from ..hookspecs import hookimpl
from .base import Ack, DeliveryError, Item, Notifier

log = logging.getLogger(__name__)

SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": False},
        "url": {"type": "string", "maxLength": 2048, "default": ""},
        "severities": {"type": "array", "items": {"enum": ["warning", "critical"]}, "uniqueItems": True,
                       "default": ["warning", "critical"]},
        "acks": {"type": "boolean", "default": True, "description": "also post acknowledgements"},
        "headers": {"type": "object", "default": {}, "maxProperties": 16,
                    "additionalProperties": {"type": "string", "maxLength": 1024, "writeOnly": True},
                    "description": "extra request headers, e.g. Authorization"},
        "timeout_s": {"type": "number", "minimum": 1, "maximum": 120, "default": 10},
    },
}


def url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"expected an http:// or https:// URL, got {url!r}"
    return None


# the posted JSON is a published format: it keeps the keys it had before the event took the alarm record's words
_POSTED_KEYS = {"message": "text", "active": "raised", "raised": "raised_ts", "point": "metric",
                "acknowledged": "acknowledged_ts"}


def posted_fields(event: AlarmEvent) -> dict[str, Any]:
    """The event's fields as the webhook posts them (``text``, ``raised`` true/false, ``raised_ts``, ``metric``,
    ``acknowledged_ts``)."""
    return {_POSTED_KEYS.get(k, k): v for k, v in event.to_dict().items()}


class WebhookNotifier(Notifier):
    name = "webhook"
    routed = False

    def __init__(self, cfg: dict, site: dict) -> None:
        url = cfg["url"]
        problem = url_problem(url)
        if problem:
            raise ConfigError("config", "notify.webhook.url", problem)
        self.url = url
        self.severities = frozenset(cfg["severities"])
        self.acks = bool(cfg["acks"])
        self.headers = {"Content-Type": "application/json", "User-Agent": "bmsgw",
                        **{str(k): str(v) for k, v in (cfg.get("headers") or {}).items()}}
        self.timeout = float(cfg["timeout_s"])
        self.site = {"name": site.get("name"), "id": site.get("id")}
        self.posted = 0

    def describe(self) -> str:
        p = urlsplit(self.url)
        return f"{p.scheme}://{p.netloc}{p.path}"

    def payload(self, item: Item) -> dict | None:
        if isinstance(item, AlarmEvent):
            return {"type": "alarm", "state": "raised" if item.active else "cleared", "site": self.site,
                    **posted_fields(item)}
        if isinstance(item, Ack):
            return {"type": "acknowledgement", "state": "acknowledged", "site": self.site,
                    **posted_fields(item.event)}
        return None

    def deliver(self, recipient: str | None, item: Item) -> None:
        body = self.payload(item)
        if body is None:
            return
        import urllib.error  # imported by the first post, not at start: memory on the controller
        import urllib.request

        data = json.dumps(body).encode()
        req = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            retry = exc.code >= 500 or exc.code in (408, 429)
            raise DeliveryError(f"{self.describe()} answered {exc.code} {exc.reason}", permanent=not retry) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"{self.describe()}: {reason}") from None
        self.posted += 1


@hookimpl
def bmsgw_check_config(gateway_config) -> list[str]:
    cfg = gateway_config.section("notify")["webhook"]
    problem = url_problem(cfg["url"]) if cfg.get("enabled") else None
    return [f"notify.webhook.url: {problem}"] if problem else []


@hookimpl
def bmsgw_notifiers(gateway) -> list[Notifier]:
    cfg = gateway.config.section("notify")["webhook"]
    if not cfg.get("enabled"):
        return []
    return [WebhookNotifier(cfg, gateway.config.section("site"))]
