"""The SNMP face (plugin): config section ``snmp``, the agent service, alarm notifications, ``bmsgw mib`` and
``bmsgw snmp-key``; see README.md beside this file.

The parts: face.py (the service), schema.py (the section), the OID index (tree.py, sections.py), the generated
MIB (mib.py), the agent (agent.py), the pysnmp side (stack.py, controller.py:
loaded by the first request that needs it) and the SNMPv2c read fast path (fastpath.py, ber.py).
"""
from __future__ import annotations

import getpass
import sys

from ... import fsutil
from ...errors import GatewayError
from ...hookspecs import hookimpl
from ...service import face_plugin
from .schema import SCHEMA, section_problems


def config_problems(cfg: dict, gateway_config, catalog) -> list[str]:
    return section_problems(cfg, str(gateway_config.path)) if cfg["enabled"] else []


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
    "snmp", SCHEMA, "gateway.outputs.snmp.face:SnmpService", check=config_problems)


def cmd_mib(args) -> int:
    if args.modules_dir:
        from ..._data import data_dir

        print(data_dir("mibs"))
        return 0
    from ...cliargs import config_path, offline_gateway
    from .agent import parse_oid
    from .mib import mib_text

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

    from .stack import AUTH, PRIV

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
    from ...cliargs import add_config_option

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
