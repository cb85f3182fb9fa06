"""E-mail over SMTP: STARTTLS (or implicit TLS) and login, with smtplib, in the notifier's worker thread."""
from __future__ import annotations

import logging
import re
import ssl
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..hookspecs import hookimpl
from .base import DeliveryError, Item, Message, Notifier
from .secrets import read_secret

if TYPE_CHECKING:
    from email.message import EmailMessage

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.?[^@\s<>]*$")

SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": False},
        "host": {"type": "string", "maxLength": 253, "default": "localhost"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 587},
        "security": {"enum": ["starttls", "tls", "none"], "default": "starttls",
                     "description": "starttls (port 587), tls (implicit, port 465) or none (a local relay only)"},
        "username": {"type": "string", "maxLength": 256, "default": ""},
        "password": {"type": "string", "maxLength": 256, "default": "", "writeOnly": True,
                     "description": "prefer password_file (readable by the bmsgw user only)"},
        "password_file": {"type": "string", "maxLength": 4096, "default": ""},
        "sender": {"type": "string", "maxLength": 256, "default": "bmsgw@localhost"},
        "ca_file": {"type": "string", "maxLength": 4096, "default": "",
                    "description": "CA certificates to check the server against (default: the system's)"},
        "verify": {"type": "boolean", "default": True, "description": "check the server's certificate and name"},
        "timeout_s": {"type": "number", "minimum": 1, "maximum": 300, "default": 30},
    },
}


def recipient_problem(recipient: str) -> str | None:
    """Why ``recipient`` is not an e-mail address this notifier can send to (None when it is)."""
    return None if _ADDRESS.match(recipient) else "not an e-mail address"


def section_problems(cfg: dict, config) -> list[str]:
    """What ``notify.email`` gets wrong beyond its schema (``bmsgw_check_config``)."""
    out = []
    if cfg.get("security") == "none" and cfg.get("username"):
        out.append("notify.email.security: a login needs TLS: use starttls or tls")
    for key in ("password_file", "ca_file"):
        if cfg.get(key) and not config.resolve(cfg[key]).is_file():
            out.append(f"notify.email.{key}: file {config.resolve(cfg[key])} does not exist")
    return out


class EmailNotifier(Notifier):
    name = "email"
    routed = True

    def __init__(self, cfg: dict, resolve=lambda p: p) -> None:
        self.host = cfg["host"]
        self.port = int(cfg["port"])
        self.security = cfg["security"]
        self.username = cfg["username"]
        self.password = cfg["password"]
        if cfg.get("password_file"):
            self.password = read_secret(resolve(cfg["password_file"]), "notify.email.password_file")
        self.sender = cfg["sender"]
        self.timeout = float(cfg["timeout_s"])
        if self.security == "none" and self.username:
            raise ConfigError("config", "notify.email.security", "a login needs TLS: use starttls or tls")
        self.context = None
        if self.security != "none":
            if cfg["verify"]:
                self.context = ssl.create_default_context(cafile=str(resolve(cfg["ca_file"])) if cfg.get("ca_file")
                                                          else None)
            else:
                log.warning("notify.email: not checking the SMTP server's certificate (verify: false)")
                self.context = ssl.create_default_context()
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def check_recipient(self, recipient: str) -> str | None:
        return recipient_problem(recipient)

    def describe(self) -> str:
        return f"smtp://{self.host}:{self.port} ({self.security}{', login ' + self.username if self.username else ''})"

    def compose(self, recipient: str, msg: Message) -> EmailMessage:
        # smtplib and email are imported by the first message, not at start: memory on the controller
        from email.message import EmailMessage
        from email.utils import formatdate, make_msgid

        em = EmailMessage()
        em["From"] = self.sender
        em["To"] = recipient
        em["Subject"] = msg.subject
        em["Date"] = formatdate(msg.ts, localtime=True)
        em["Message-ID"] = make_msgid("bmsgw")
        em["X-Bmsgw-Severity"] = msg.severity
        em["X-Bmsgw-Alarms"] = " ".join(str(e.alarm_id) for e in msg.events[:50])
        em.set_content(msg.body)
        return em

    def deliver(self, recipient: str | None, item: Item) -> None:
        if not isinstance(item, Message) or not recipient:
            return
        import smtplib

        em = self.compose(recipient, item)
        try:
            client: smtplib.SMTP
            if self.security == "tls":
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.context)
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                client.ehlo()
                if self.security == "starttls":
                    if not client.has_extn("starttls"):
                        raise DeliveryError(f"{self.host}:{self.port} does not offer STARTTLS; not sending in clear "
                                            "text (set security: tls or none)", permanent=True)
                    client.starttls(context=self.context)
                    client.ehlo()
                if self.username:
                    client.login(self.username, self.password)
                client.send_message(em)
        except DeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"login as {self.username} refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                                permanent=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = "; ".join(f"{r}: {c} {_text(m)}" for r, (c, m) in exc.recipients.items())
            raise DeliveryError(f"recipient refused: {codes}", permanent=True) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"server said {exc.smtp_code} {_text(exc.smtp_error)}",
                                permanent=500 <= exc.smtp_code < 600 and exc.smtp_code != 554) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"TLS: the server's certificate is not trusted: {exc.verify_message}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{self.host}:{self.port}: {type(exc).__name__}: {exc}") from None


def _text(raw) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


@hookimpl
def bmsgw_check_config(gateway_config) -> list[str]:
    cfg = gateway_config.section("notify")["email"]
    return section_problems(cfg, gateway_config) if cfg.get("enabled") else []


@hookimpl
def bmsgw_notifiers(gateway) -> list[Notifier]:
    cfg = gateway.config.section("notify")["email"]
    if not cfg.get("enabled"):
        return []
    return [EmailNotifier(cfg, gateway.config.resolve)]
