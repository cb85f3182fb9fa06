"""The SNMP face (plugin): config section ``snmp``, the agent service, alarm notifications, ``bmsgw mib``.

See gateway/outputs/snmp/ for the parts: the OID index (tree, sections), the generated MIB (mib), the
pysnmp side (agent, controller) and the SNMPv2c read fast path (fastpath, ber).
"""
from __future__ import annotations

import asyncio
import getpass
import logging
import sys
import weakref

from .. import fsutil
from ..config import parse_listen, parse_networks
from ..errors import ConfigError, GatewayError
from ..hookspecs import hookimpl

log = logging.getLogger(__name__)

DEFAULT_ENTITY_SENSORS = ["io.ambient_temperature", "io.ambient_humidity", "bank.voltage", "bank.charger_current",
                          "string.voltage", "string.current", "cell.voltage", "cell.temperature"]
_KEY = {"type": "string", "minLength": 8, "maxLength": 256, "writeOnly": True}

SCHEMA = {
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "listen": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]*:[0-9]{1,5}$",
                   "default": "127.0.0.1:1161",
                   "description": "UDP HOST:PORT (IPv4) the agent answers on; 0.0.0.0 for every interface"},
        "base_oid": {"type": "string", "pattern": r"^1\.3\.6\.1\.4\.1(\.[0-9]{1,10}){1,8}$",
                     "default": "1.3.6.1.4.1.32473",
                     "description": "the MIB's root: enterprises.<your PEN>; 32473 is the RFC 5612 documentation PEN"},
        "engine_id": {"type": ["string", "null"], "pattern": r"^(0x)?([0-9A-Fa-f]{2}){5,32}$", "default": None,
                      "description": "SNMPv3 engine ID in hex; default: generated once and kept in the state folder"},
        "v2c": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "community": {"type": ["string", "null"], "minLength": 1, "maxLength": 64, "default": None,
                              "description": "read-only community; null turns SNMPv2c off (SNMPv1 is never "
                                             "answered)"},
                "allow_from": {"type": "array", "maxItems": 64, "default": [],
                               "items": {"type": "string", "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"},
                               "description": "addresses or networks whose community requests are answered; "
                                              "empty = any.  SNMPv3 requests are not affected"},
            },
        },
        "v3_users": {
            "type": "array", "maxItems": 16, "default": [],
            "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "auth_key", "priv_key"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,32}$"},
                    "auth": {"enum": ["sha", "sha224", "sha256", "sha384", "sha512"], "default": "sha256"},
                    "auth_key": _KEY,
                    "priv": {"enum": ["aes", "aes128", "aes192", "aes256", "aes192c", "aes256c"], "default": "aes128"},
                    "priv_key": _KEY,
                    "key_format": {"enum": ["passphrase", "master"], "default": "passphrase",
                                   "description": "master: the keys are hex master keys (bmsgw snmp-key), "
                                                  "not passphrases"},
                },
            },
        },
        "system": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "name": {"type": "string", "maxLength": 255, "default": "",
                         "description": "sysName; default: site.name"},
                "contact": {"type": "string", "maxLength": 255, "default": ""},
                "location": {"type": "string", "maxLength": 255, "default": ""},
                "description": {"type": "string", "maxLength": 255, "default": ""},
            },
        },
        "max_bulk_varbinds": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 64,
                              "description": "cap on the varbinds of one GETBULK answer"},
        "fast_path": {"type": "boolean", "default": True,
                      "description": "answer SNMPv2c reads from pre-encoded varbinds (same bytes as pysnmp, faster)"},
        "ups": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "low_charge_percent": {"type": "number", "minimum": 0, "maximum": 100, "default": 40},
                "depleted_charge_percent": {"type": "number", "minimum": 0, "maximum": 100, "default": 10},
                "low_minutes_remaining": {"type": "number", "minimum": 0, "default": 5},
            },
        },
        "entity_sensors": {"type": "array", "items": {"type": "string"}, "default": DEFAULT_ENTITY_SENSORS,
                           "description": "point families published as ENTITY-SENSOR-MIB sensors"},
        "notifications": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "targets": {
                    "type": "array", "maxItems": 16, "default": [],
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["host"],
                        "properties": {
                            "host": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,253}$",
                                     "description": "IPv4 address or host name of the receiver"},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 162},
                            "version": {"enum": ["v2c", "v3"], "default": "v2c"},
                            "community": {"type": "string", "minLength": 1, "maxLength": 64},
                            "user": {"type": "string", "description": "a name from snmp.v3_users"},
                            "type": {"enum": ["trap", "inform"],
                                     "description": "default: trap for v2c, inform for v3"},
                            "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 60, "default": 3},
                            "retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
                        },
                    },
                },
            },
        },
    },
}

_agents: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_section(cfg: dict, source: str) -> None:
    """Cross-field rules the schema cannot say; errors name the key path."""
    users = {u["name"] for u in cfg["v3_users"]}
    for i, target in enumerate(cfg["notifications"]["targets"]):
        where = f"snmp.notifications.targets[{i}]"
        if target["version"] == "v2c" and not target.get("community"):
            raise ConfigError(source, f"{where}.community", "a v2c target needs a community")
        if target["version"] == "v3" and target.get("user") not in users:
            known = ", ".join(sorted(users)) or "none"
            raise ConfigError(source, f"{where}.user", f"a v3 target needs a user from snmp.v3_users (known: {known})")
    try:
        parse_listen(cfg["listen"])
    except ValueError as exc:
        raise ConfigError(source, "snmp.listen", str(exc)) from None
    parse_networks(cfg["v2c"]["allow_from"], source, "snmp.v2c.allow_from")


@hookimpl
def bmsgw_config_schema():
    return {"snmp": SCHEMA}


@hookimpl
def bmsgw_services(gateway):
    cfg = gateway.config.section("snmp")
    if not cfg.get("enabled", True):
        return []
    check_section(cfg, str(gateway.config.path))
    from .snmp.agent import SnmpAgent

    agent = SnmpAgent(gateway, cfg)
    _agents[gateway] = agent
    return [agent]


@hookimpl
def bmsgw_alarm_event(gateway, event):
    agent = _agents.get(gateway)
    if agent is None:
        return
    loop = getattr(gateway, "loop", None)
    if loop is not None and loop.is_running() and not _in_loop(loop):
        loop.call_soon_threadsafe(_deliver, agent, event)
    else:
        _deliver(agent, event)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _deliver(agent, event) -> None:
    try:
        agent.alarm_event(event)
    except Exception:  # an alarm must never be lost for the other notifiers because of this one
        log.exception("SNMP: alarm event %r not processed", event)


@hookimpl
def bmsgw_status(gateway):
    agent = _agents.get(gateway)
    return {"snmp": agent.status()} if agent is not None and agent.engine is not None else {}


# -- CLI ---------------------------------------------------------------------------------------------------
def cmd_mib(args) -> int:
    if args.modules_dir:
        from .._data import data_dir

        print(data_dir("mibs"))
        return 0
    from ..cliargs import config_path, offline_gateway
    from .snmp.agent import parse_oid
    from .snmp.mib import mib_text

    gw = offline_gateway(config_path(args))
    base = args.base_oid or gw.config.section("snmp").get("base_oid", "1.3.6.1.4.1.32473")
    try:
        text = mib_text(gw.catalog, parse_oid(base))
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    if args.output:
        fsutil.atomic_write(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_snmp_key(args) -> int:
    """Print SNMPv3 master keys (hex) for passphrases, to store instead of the passphrases."""
    from pysnmp.proto.secmod.rfc3414.service import SnmpUSMSecurityModel

    from .snmp.agent import AUTH, PRIV

    auth = SnmpUSMSecurityModel.AUTH_SERVICES[AUTH[args.auth]]
    priv = SnmpUSMSecurityModel.PRIV_SERVICES[PRIV[args.priv]]
    if sys.stdin.isatty():
        auth_pass = getpass.getpass("authentication passphrase: ")
        priv_pass = getpass.getpass("privacy passphrase: ")
    else:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            raise GatewayError("expected two lines on stdin: the authentication and the privacy passphrase")
        auth_pass, priv_pass = lines[0], lines[1]
    for label, value in (("authentication", auth_pass), ("privacy", priv_pass)):
        if len(value) < 8:
            raise GatewayError(f"the {label} passphrase must have at least 8 characters")
    auth_key = auth.hash_passphrase(auth_pass.encode())
    priv_key = priv.hash_passphrase(AUTH[args.auth], priv_pass.encode())
    print(f"auth: {args.auth}\nauth_key: \"0x{bytes(auth_key).hex()}\"\npriv: {args.priv}\n"
          f"priv_key: \"0x{bytes(priv_key).hex()}\"\nkey_format: master")
    return 0


@hookimpl
def bmsgw_cli_commands(subparsers):
    from ..cliargs import add_config_option

    s = subparsers.add_parser("mib", help="print BMSGW-MIB (SMIv2) generated from the point catalog",
                              description="Generate the vendor MIB from the point catalog of a configuration "
                                          "(built-in families, profiles, plugins): the OIDs the agent serves.")
    add_config_option(s)
    s.add_argument("--base-oid", default=None, help="MIB root, e.g. 1.3.6.1.4.1.<PEN> (default: snmp.base_oid)")
    s.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
    s.add_argument("--modules-dir", action="store_true",
                   help="print the folder of the MIB modules bmsgw ships (BMSGW-MIB and the IETF modules it "
                        "imports), for net-snmp's -M, and exit")
    s.set_defaults(func=cmd_mib)

    s = subparsers.add_parser("snmp-key", help="derive SNMPv3 master keys from passphrases (to store instead)",
                              description="Reads the authentication and the privacy passphrase (prompted, or two "
                                          "lines on stdin) and prints config lines with the master keys (hex).")
    s.add_argument("--auth", default="sha256", choices=["sha", "sha224", "sha256", "sha384", "sha512"])
    s.add_argument("--priv", default="aes128", choices=["aes", "aes128", "aes192", "aes256", "aes192c", "aes256c"])
    s.set_defaults(func=cmd_snmp_key)
