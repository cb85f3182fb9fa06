"""The Flask application: authentication, roles, CSRF, security headers and error pages around the
pages (``pages.py``) and the REST API (``api.py``)."""
from __future__ import annotations

import logging

from flask import Flask, current_app, g, redirect, request, url_for
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from gateway.exposition import metrics_response

from .api import api
from .auth import User
from .context import (
    PRELOGIN_COOKIE,
    SESSION_COOKIE,
    UNSAFE_METHODS,
    WebContext,
    csrf_binding,
    csrf_token,
    ctx,
    is_api,
    requires,
    security_headers,
    take_flashes,
)
from .errors import allow_header, deny
from .pages import pages
from .schema import ROLES
from .setpoints import setpoints

log = logging.getLogger(__name__)


def create_app(context: WebContext) -> Flask:
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.extensions["bmsgw"] = context
    app.config.update(MAX_CONTENT_LENGTH=context.settings.max_body, JSON_SORT_KEYS=False,
                      TEMPLATES_AUTO_RELOAD=False, PROPAGATE_EXCEPTIONS=False)
    if isinstance(app.json, DefaultJSONProvider):  # (Flask's default; a custom provider sorts as it likes)
        app.json.sort_keys = False
    app.jinja_env.globals.update(csrf_token=csrf_token, take_flashes=take_flashes)
    app.context_processor(_template_globals)
    app.register_blueprint(pages)
    app.register_blueprint(setpoints)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.before_request(_authenticate)
    app.after_request(_add_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.add_url_rule("/metrics", "metrics", _metrics)
    return app


def _template_globals() -> dict:
    c = ctx()
    return {"user": g.get("user"), "site": c.gateway.config.section("site"),
            "strings": c.gateway.topology.strings, "roles": ROLES}


def _authenticate():
    """Who is asking (API token or session cookie), whether the view's role allows it, and the CSRF check."""
    c = ctx()
    g.user, g.session, g.auth = None, None, None
    token = _bearer()
    if token is not None:
        user = c.users.check_token(token)
        if user is None:
            return deny(401, "invalid API token")
        g.user, g.auth = user, "token"
    else:
        _resume_session()
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if view is None:
        return None  # 404/405 follow; static files are handled below
    role = _role_needed(view)
    if role is not None:
        if g.user is None:
            if is_api() or request.endpoint == "metrics":
                return deny(401, "login or an API token needed")
            return redirect(url_for("pages.login", next=request.full_path if request.args else request.path))
        if not g.user.can(role):
            return deny(403, f"this needs the {role} role; you are {g.user.role}")
    if request.method in UNSAFE_METHODS and g.auth != "token":
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf")
        if not c.csrf.valid(sent, csrf_binding()):
            return deny(403, "the form expired or did not come from this site (CSRF check failed); "
                             "reload the page and try again")
    return None


def _resume_session() -> None:
    """The session the cookie names, with the user's present role (a user removed meanwhile ends it)."""
    c = ctx()
    sess = c.sessions.get(request.cookies.get(SESSION_COOKIE))
    if sess is None:
        return
    current = c.users.get(sess.user)
    if current is None:
        c.sessions.drop(sess.sid)
        return
    if current.role != sess.role:
        sess.role = current.role
    g.session, g.user, g.auth = sess, User(sess.user, sess.role, current.source), "session"


def _role_needed(view) -> str | None:
    if request.endpoint == "static":
        return None
    if request.endpoint == "metrics" and ctx().settings.metrics_public:
        return None
    return getattr(view, "_bmsgw_role", "viewer")


def _add_headers(resp):
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


def _http_error(exc: HTTPException):
    return deny(exc.code or 500, exc.description or exc.name, headers=allow_header(exc))


def _unexpected(exc: Exception):
    log.error("web request %s %s failed", request.method, request.path, exc_info=exc)
    return deny(500, "internal error; the gateway log has the details")


@requires("viewer")
def _metrics():
    c = ctx()
    if not c.settings.metrics_enabled:
        return deny(404, "/metrics is turned off (web.metrics.enabled)")
    body, headers = metrics_response(c.gateway, request.headers.get("Accept-Encoding", ""))
    resp = current_app.response_class(body)
    for name, value in headers:
        resp.headers[name] = value
    return resp


def _bearer() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Token")
