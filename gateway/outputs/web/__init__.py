"""The web face: dashboard, configuration pages and the REST API (/api/v1, JSON and XML).

A plugin like every face: it declares the ``web`` config section, runs its HTTP(S) server as a Service,
keeps a small trend buffer when no history module is installed, and adds ``bmsgw user`` / ``bmsgw token``.
"""
from __future__ import annotations

import getpass
import logging
import sys

from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.service import face_plugin

from .schema import ROLES, SCHEMA, WebSettings

log = logging.getLogger(__name__)


def config_problems(sec: dict, gateway_config, catalog) -> list[str]:
    try:
        s = WebSettings.from_section(sec, str(gateway_config.path))
    except ConfigError as exc:
        return [f"{exc.path}: {exc.message}"]
    if s.tls and bool(s.tls_cert) != bool(s.tls_key):
        return ["web.tls: give both cert and key, or neither for a self-signed certificate"]
    problems = []
    for key, value in (("cert", s.tls_cert), ("key", s.tls_key)):
        if s.tls and value and not gateway_config.resolve(value).is_file():
            problems.append(f"web.tls.{key}: file {gateway_config.resolve(value)} does not exist")
    return problems


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin(
    "web", SCHEMA, "gateway.outputs.web.face:WebService", check=config_problems)


# -- bmsgw user / bmsgw token ------------------------------------------------------------------------------------
def _store(args):
    from gateway.cliargs import config_path, offline_gateway

    from .auth import UserStore

    gw = offline_gateway(config_path(args))
    s = WebSettings.from_section(gw.config.section("web"), str(gw.config.path))
    return UserStore(gw.config.state_dir, s.config_users)


def _read_password(args, confirm: bool = True) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != pw:
        raise _fail("the two entries differ")
    return pw


def _fail(message: str):
    from gateway.errors import GatewayError

    return GatewayError(message)


def _user_cmd(args) -> int:
    from .auth import AuthError, hash_password

    try:
        if args.action == "hash":
            print(hash_password(_read_password(args)))
            return 0
        store = _store(args)
        if args.action == "list":
            for u in store.users():
                print(f"{u.name}\t{u.role}\t{'config file' if u.source == 'config' else store.path}")
            return 0
        if not args.name:
            raise _fail(f"bmsgw user {args.action}: give a user NAME")
        if args.action == "add":
            store.add(args.name, args.role, _read_password(args))
            print(f"user {args.name} ({args.role}) added to {store.path}")
        elif args.action == "passwd":
            store.set_password(args.name, _read_password(args))
            print(f"password of {args.name} changed")
        elif args.action == "role":
            store.set_role(args.name, args.role)
            print(f"{args.name} is now {args.role}")
        elif args.action == "delete":
            store.delete(args.name)
            print(f"user {args.name} deleted")
    except AuthError as exc:
        raise _fail(str(exc)) from None
    except KeyError:
        raise _fail(f"no user {args.name!r} in {store.path}") from None
    return 0


def _token_cmd(args) -> int:
    from .auth import AuthError

    store = _store(args)
    try:
        if args.action == "add":
            if not args.label:
                raise _fail("bmsgw token add: give a LABEL (what the token is for)")
            tid, token = store.add_token(args.label, args.role)
            print(token)
            print(f"token {tid} ({args.label}, {args.role}); shown once, only its hash is kept", file=sys.stderr)
        elif args.action == "list":
            for t in store.tokens():
                print(f"{t['id']}\t{t['label']}\t{t['role']}")
        elif args.action == "revoke":
            store.revoke_token(args.label or "")
            print(f"token {args.label} revoked")
    except AuthError as exc:
        raise _fail(str(exc)) from None
    except KeyError:
        raise _fail(f"no token {args.label!r}") from None
    return 0


@hookimpl
def bmsgw_cli_commands(subparsers):
    from gateway.cliargs import add_config_option

    p = subparsers.add_parser(
        "user", help="web users: add, list, passwd, role, delete; hash prints an argon2 hash for web.users and "
                     "nut.users",
        description="Manage who can log in to the web page. The first admin: `bmsgw user add NAME --role admin`. "
                    "Passwords are read from the terminal, or from one line of stdin (--password-stdin).")
    p.add_argument("action", choices=["add", "list", "passwd", "role", "delete", "hash"])
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--role", choices=ROLES, default="viewer", help="for add and role (default viewer)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add_config_option(p)
    p.set_defaults(func=_user_cmd)

    p = subparsers.add_parser(
        "token", help="REST API tokens: add LABEL --role R (prints the token once), list, revoke ID",
        description="API tokens for programs: send `Authorization: Bearer TOKEN`. Only a hash is stored.")
    p.add_argument("action", choices=["add", "list", "revoke"])
    p.add_argument("label", nargs="?", default=None, help="add: what it is for; revoke: the token id")
    p.add_argument("--role", choices=ROLES, default="viewer")
    add_config_option(p)
    p.set_defaults(func=_token_cmd)
