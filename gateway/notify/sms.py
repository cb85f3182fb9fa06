"""SMS through a 4G modem on a serial port (AT commands in text mode, see ``modem.py``)."""
from __future__ import annotations

import logging
import re

from ..errors import ConfigError
from ..hookspecs import hookimpl
from .base import Item, Message, Notifier
from .modem import Modem, ModemError, gsm_text
from .secrets import read_secret

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")

SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": False},
        "port": {"type": "string", "maxLength": 4096, "default": "/dev/ttyUSB2",
                 "description": "the modem's AT command port"},
        "baud": {"type": "integer", "enum": [9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600],
                 "default": 115200},
        "pin": {"type": "string", "pattern": "^([0-9]{4,8})?$", "default": "", "writeOnly": True,
                "description": "the SIM's PIN, when it asks for one (prefer pin_file)"},
        "pin_file": {"type": "string", "maxLength": 4096, "default": ""},
        "max_length": {"type": "integer", "minimum": 40, "maximum": 160, "default": 160},
        "timeout_s": {"type": "number", "minimum": 0.5, "maximum": 60, "default": 5},
        "send_timeout_s": {"type": "number", "minimum": 1, "maximum": 300, "default": 60,
                           "description": "how long the network may take to accept a message"},
        "check_network": {"type": "boolean", "default": True, "description": "ask AT+CREG? before sending"},
    },
}


def recipient_problem(recipient: str) -> str | None:
    """Why ``recipient`` is not a phone number the modem can send to (None when it is)."""
    return None if _NUMBER.match(recipient) else "not a phone number (digits, optionally with a leading +)"


class SmsNotifier(Notifier):
    name = "sms"
    routed = True

    def __init__(self, cfg: dict, resolve=lambda p: p) -> None:
        pin = cfg["pin"]
        if cfg.get("pin_file"):
            pin = read_secret(resolve(cfg["pin_file"]), "notify.sms.pin_file")
            if pin and not re.fullmatch(r"[0-9]{4,8}", pin):
                raise ConfigError("config", "notify.sms.pin_file", "a SIM PIN is 4 to 8 digits")
        self.max_length = int(cfg["max_length"])
        self.modem = Modem(cfg["port"], int(cfg["baud"]), pin, float(cfg["timeout_s"]), float(cfg["send_timeout_s"]),
                           bool(cfg["check_network"]))
        self.sent = 0

    def check_recipient(self, recipient: str) -> str | None:
        return recipient_problem(recipient)

    def describe(self) -> str:
        return f"modem {self.modem.port} at {self.modem.baud} baud"

    def deliver(self, recipient: str | None, item: Item) -> None:
        if not isinstance(item, Message) or not recipient:
            return
        text = gsm_text(item.short, self.max_length)
        try:
            ref = self.modem.send_sms(recipient, text)
        except ModemError as exc:
            if exc.kind != "CMS":  # the line or the SIM state is in doubt: start over next time
                self.modem.close()
            raise
        self.sent += 1
        log.info("SMS to %s sent (reference %s)", recipient, ref)

    def close(self) -> None:
        self.modem.close()


@hookimpl
def bmsgw_check_config(gateway_config) -> list[str]:
    cfg = gateway_config.section("notify")["sms"]
    if cfg.get("enabled") and cfg.get("pin_file") and not gateway_config.resolve(cfg["pin_file"]).is_file():
        return [f"notify.sms.pin_file: file {gateway_config.resolve(cfg['pin_file'])} does not exist"]
    return []


@hookimpl
def bmsgw_notifiers(gateway) -> list[Notifier]:
    cfg = gateway.config.section("notify")["sms"]
    if not cfg.get("enabled"):
        return []
    return [SmsNotifier(cfg, gateway.config.resolve)]
