"""The Flask application: authentication, roles, CSRF, security headers and error pages around the
pages (``pages.py``) and the REST API (``api.py``)."""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import secrets

from flask import Flask, g, redirect, render_template, request, url_for
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from gateway.commands import Principal
from gateway.exposition import metrics_response

from .auth import Csrf, DeviceKeys, LoginThrottle, SessionStore, User, UserStore
from .data import BankView
from .schema import ROLES, WebSettings
from .sources import Sources

log = logging.getLogger(__name__)

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
    user = g.user
    return Principal(user.name, user.role, "rest" if is_api() else "web", request.remote_addr or "")


def csrf_binding() -> str | None:
    sess = g.get("session")
    if sess is not None:
        return sess.sid
    return request.cookies.get(PRELOGIN_COOKIE)


def csrf_token() -> str:
    """For templates: a token for this visitor (sets the pre-login cookie when there is no session)."""
    binding = csrf_binding()
    if binding is None:
        binding = g.setdefault("new_prelogin", secrets.token_urlsafe(24))
    return ctx().csrf.token(binding)


def flash(kind: str, message: str) -> None:
    sess = g.get("session")
    if sess is not None:
        sess.flash.append((kind, message))


def take_flashes() -> list[tuple[str, str]]:
    sess = g.get("session")
    if sess is None:
        return []
    out, sess.flash[:] = list(sess.flash), []
    return out


def create_app(context: WebContext) -> Flask:
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.extensions["bmsgw"] = context
    app.config.update(MAX_CONTENT_LENGTH=context.settings.max_body, JSON_SORT_KEYS=False,
                      TEMPLATES_AUTO_RELOAD=False, PROPAGATE_EXCEPTIONS=False)
    if isinstance(app.json, DefaultJSONProvider):  # (Flask's default; a custom provider sorts as it likes)
        app.json.sort_keys = False
    app.jinja_env.globals.update(csrf_token=csrf_token, take_flashes=take_flashes)

    @app.context_processor
    def common():
        c = ctx()
        return {"user": g.get("user"), "site": c.gateway.config.section("site"),
                "strings": c.gateway.topology.strings, "roles": ROLES}

    from .api import api
    from .pages import pages
    from .setpoints import setpoints

    app.register_blueprint(pages)
    app.register_blueprint(setpoints)
    app.register_blueprint(api, url_prefix="/api/v1")

    @app.before_request
    def authenticate():
        c = ctx()
        g.user, g.session, g.auth = None, None, None
        token = _bearer()
        if token is not None:
            user = c.users.check_token(token)
            if user is None:
                return _deny(401, "invalid API token")
            g.user, g.auth = user, "token"
        else:
            sess = c.sessions.get(request.cookies.get(SESSION_COOKIE))
            if sess is not None:
                current = c.users.get(sess.user)
                if current is None:
                    c.sessions.drop(sess.sid)
                else:
                    if current.role != sess.role:
                        sess.role = current.role
                    g.session, g.user, g.auth = sess, User(sess.user, sess.role, current.source), "session"
        view = app.view_functions.get(request.endpoint) if request.endpoint else None
        if view is None:
            return None  # 404/405 follow; static files are handled below
        role = getattr(view, "_bmsgw_role", "viewer")
        if request.endpoint == "static":
            role = None
        if request.endpoint == "metrics" and c.settings.metrics_public:
            role = None
        if role is not None:
            if g.user is None:
                if is_api() or request.endpoint == "metrics":
                    return _deny(401, "login or an API token needed")
                return redirect(url_for("pages.login", next=request.full_path if request.args else request.path))
            if not g.user.can(role):
                return _deny(403, f"this needs the {role} role; you are {g.user.role}")
        if request.method in UNSAFE_METHODS and g.auth != "token":
            sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf")
            if not c.csrf.valid(sent, csrf_binding()):
                return _deny(403, "the form expired or did not come from this site (CSRF check failed); "
                                  "reload the page and try again")
        return None

    @app.after_request
    def headers(resp):
        if g.get("new_prelogin") and not request.cookies.get(PRELOGIN_COOKIE):
            resp.set_cookie(PRELOGIN_COOKIE, g.new_prelogin, httponly=True, samesite="Strict",
                            secure=ctx().settings.tls, path="/")
        h = resp.headers
        for name, value in security_headers(ctx().settings.tls).items():
            h[name] = value
        if request.endpoint == "static" and resp.status_code in (200, 304):
            h["Cache-Control"] = "public, max-age=3600"
        else:
            h["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _deny(exc.code or 500, exc.description or exc.name, headers=_allow_header(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.error("web request %s %s failed", request.method, request.path, exc_info=exc)
        return _deny(500, "internal error; the gateway log has the details")

    @app.route("/metrics")
    @requires("viewer")
    def metrics():
        c = ctx()
        if not c.settings.metrics_enabled:
            return _deny(404, "/metrics is turned off (web.metrics.enabled)")
        body, headers = metrics_response(c.gateway, request.headers.get("Accept-Encoding", ""))
        resp = app.response_class(body)
        for name, value in headers:
            resp.headers[name] = value
        return resp

    return app


def _allow_header(exc: HTTPException) -> dict:
    try:
        resp = exc.get_response()
    except Exception:
        return {}
    allow = resp.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _bearer() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Token")


def _deny(status: int, message: str, headers: dict | None = None):
    """An error as the client wants it: JSON/XML for the API (and API-like clients), HTML for pages."""
    from .api import error_response, wants_machine_format

    if is_api() or request.endpoint == "metrics" or wants_machine_format():
        resp = error_response(status, message)
    else:
        resp = app_error_page(status, message)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def app_error_page(status: int, message: str):
    from flask import make_response

    titles = {400: "Bad request", 401: "Login needed", 403: "Not allowed", 404: "Not found",
              405: "Method not allowed", 413: "Too large", 429: "Too many attempts", 500: "Internal error",
              503: "Unavailable"}
    try:
        body = render_template("error.html", status=status, title=titles.get(status, "Error"), message=message)
    except Exception:  # an error page must not fail in turn
        log.exception("rendering the error page failed")
        resp = make_response(f"{status} {titles.get(status, 'Error')}: {message}\n", status)
        resp.mimetype = "text/plain"
        return resp
    return make_response(body, status)


def login_user(user: User):
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
