"""The request context the web face's views share: the per-gateway ``WebContext``, who the request acts for,
CSRF, flashes and the session cookies. Views (``pages.py``, ``api.py``) and the application (``app.py``) import
it; it imports none of them.  Flask is imported by the functions that run in a request, not here: the face
builds its Flask app at the first request (``face.WebService.app``), so a gateway nobody browses never loads it."""
from __future__ import annotations

import dataclasses
import ipaddress
import secrets

from gateway.commands import Principal

from .auth import Csrf, DeviceKeys, LoginThrottle, SessionStore, User, UserStore
from .data import BankView, BatteryTable
from .schema import WebSettings
from .sources import Sources

SESSION_COOKIE = "bmsgw_session"
PRELOGIN_COOKIE = "bmsgw_pre"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
HSTS = "max-age=31536000"


def security_headers(tls: bool) -> dict[str, str]:
    """The headers every response carries: the app's (after_request) and the HTTP server's own error answers."""
    return {**_HEADERS, "Strict-Transport-Security": HSTS} if tls else dict(_HEADERS)


def requires(role: str | None):
    """Decorator: the role a view needs (None: reachable without login)."""
    def mark(fn):
        fn._bmsgw_role = role
        return fn
    return mark


class WebContext:
    """Everything the views share for one gateway."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.settings = WebSettings.from_section(gateway.config.section("web"), str(gateway.config.path))
        self.users = UserStore(gateway.config.state_dir, self.settings.config_users)
        self.sessions = SessionStore(self.settings.idle_s, self.settings.max_age_s)
        self.csrf = Csrf(secrets.token_bytes(32), self.settings.max_age_s)
        self.throttle = LoginThrottle(self.settings.max_failures, self.settings.lockout_s,
                                      self.settings.max_failures_per_client, self.settings.max_failures_per_user)
        self.devices = DeviceKeys(gateway.config.state_dir / "web")
        self.sources = Sources(gateway)
        self.view = BankView(gateway)
        self.table = BatteryTable(self.view)

    def reload(self, config) -> None:
        """Apply a reloaded ``web`` section (what can change without re-binding the socket)."""
        new = WebSettings.from_section(config.section("web"), str(config.path))
        old = self.settings
        # TLS and the worker threads are the running server's (they wait for a restart); the listen address
        # is the face's to move (WebService.reload)
        self.settings = dataclasses.replace(new, threads=old.threads, tls=old.tls, tls_cert=old.tls_cert,
                                            tls_key=old.tls_key)
        self.users.config_users = {u["name"]: u for u in new.config_users}
        self.sessions.idle_s, self.sessions.max_age_s = new.idle_s, new.max_age_s
        th = self.throttle
        th.max_failures, th.lockout_s = new.max_failures, new.lockout_s
        th.max_failures_per_client, th.max_failures_per_user = new.max_failures_per_client, new.max_failures_per_user


def ctx() -> WebContext:
    from flask import current_app

    return current_app.extensions["bmsgw"]


def is_api() -> bool:
    from flask import request

    return request.path.startswith("/api/")


def is_local(addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def principal() -> Principal:
    """Who the request acts for, as ``Gateway.write`` takes it: the user (or API token) and its role."""
    from flask import g, request

    user = g.user
    return Principal(user.name, user.role, "rest" if is_api() else "web", request.remote_addr or "")


def csrf_binding() -> str | None:
    from flask import g, request

    sess = g.get("session")
    if sess is not None:
        return sess.sid
    return request.cookies.get(PRELOGIN_COOKIE)


def csrf_token() -> str:
    """For templates: a token for this visitor (sets the pre-login cookie when there is no session)."""
    from flask import g

    binding = csrf_binding()
    if binding is None:
        binding = g.setdefault("new_prelogin", secrets.token_urlsafe(24))
    return ctx().csrf.token(binding)


def flash(kind: str, message: str) -> None:
    from flask import g

    sess = g.get("session")
    if sess is not None:
        sess.flash.append((kind, message))


def take_flashes() -> list[tuple[str, str]]:
    from flask import g

    sess = g.get("session")
    if sess is None:
        return []
    out, sess.flash[:] = list(sess.flash), []
    return out


def login_user(user: User):
    from flask import g

    c = ctx()
    sess = c.sessions.create(user)
    g.session, g.user, g.auth = sess, user, "session"
    return sess


def set_session_cookie(resp, sess) -> None:
    c = ctx()
    resp.set_cookie(SESSION_COOKIE, sess.sid, httponly=True, samesite="Strict", secure=c.settings.tls, path="/",
                    max_age=int(c.settings.max_age_s))


def set_device_cookie(resp, user: str, device: str | None) -> None:
    """Mark this browser as one that logged in as ``user`` (see LoginThrottle); sent to /login only."""
    c = ctx()
    resp.set_cookie(DeviceKeys.COOKIE, c.devices.issue(user, device), httponly=True, samesite="Strict",
                    secure=c.settings.tls, path="/login", max_age=DeviceKeys.MAX_AGE_S)
