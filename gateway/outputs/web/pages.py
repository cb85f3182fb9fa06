"""The HTML pages: overview, string bar charts, trends, forecast, alarms, I/O, configuration, users."""
from __future__ import annotations

import logging
import re
import time

from flask import Blueprint, g, make_response, redirect, render_template, request, url_for

from gateway.commands import WriteError
from gateway.errors import ConfigError, GatewayError

from .auth import AuthError, DeviceKeys
from .context import (
    PRELOGIN_COOKIE,
    SESSION_COOKIE,
    ctx,
    flash,
    is_local,
    login_user,
    principal,
    requires,
    set_device_cookie,
    set_session_cookie,
)

log = logging.getLogger(__name__)

pages = Blueprint("pages", __name__)


# a path on this site: printable ASCII without spaces (browsers drop tabs and newlines, so "/\t/evil.example"
# would become "//evil.example"), not "//" or "/\" (another host), no backslash anywhere
_SAFE_NEXT = re.compile(r"/(?![/\\])[\x21-\x5b\x5d-\x7e]*")


def _safe_next(target: str | None) -> str:
    if target and len(target) <= 2048 and _SAFE_NEXT.fullmatch(target):
        return target
    return url_for("pages.index")


def _page(template: str, code: int = 200, **kw):
    return make_response(render_template(template, **kw), code)


# -- login -----------------------------------------------------------------------------------------------------
@pages.route("/login", methods=["GET", "POST"])
@requires(None)
def login():
    c = ctx()
    if not c.users.has_users():
        if c.settings.setup_from_localhost and is_local(request.remote_addr):
            return redirect(url_for("pages.setup"))
        return _page("login.html", 503, error="No user exists yet. On the controller, run "
                                              "`bmsgw user add NAME --role admin`.", next=None)
    nxt = request.values.get("next")
    if request.method == "GET":
        return _page("login.html", next=nxt)
    name = request.form.get("username", "")[:64]
    password = request.form.get("password", "")
    addr = request.remote_addr or "?"
    device = c.devices.device(request.cookies.get(DeviceKeys.COOKIE), name)
    wait = c.throttle.locked(name, addr, device)
    if wait > 0:
        log.warning("login of %r from %s refused: locked out for %.0f s", name, addr, wait)
        resp = _page("login.html", 429, error=f"Too many failed attempts; try again in {int(wait) + 1} s.",
                     next=nxt, username=name)
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    user = c.users.authenticate(name, password)
    if user is None:
        c.throttle.failed(name, addr, device)
        log.warning("failed login for %r from %s%s", name, addr, " (a known browser)" if device else "")
        return _page("login.html", 401, error="Wrong user name or password.", next=nxt, username=name)
    c.throttle.succeeded(name, addr, device)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        c.sessions.drop(old)
    sess = login_user(user)
    log.info("%s (%s) logged in from %s", user.name, user.role, addr)
    resp = redirect(_safe_next(nxt))
    set_session_cookie(resp, sess)
    set_device_cookie(resp, user.name, device)
    resp.delete_cookie(PRELOGIN_COOKIE, path="/")
    return resp


@pages.route("/logout", methods=["POST"])
@requires(None)
def logout():
    ctx().sessions.drop(request.cookies.get(SESSION_COOKIE))
    resp = redirect(url_for("pages.login"))
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@pages.route("/setup", methods=["GET", "POST"])
@requires(None)
def setup():
    """The first admin, once: only while no user exists, only from a browser on the controller itself."""
    c = ctx()
    if c.users.has_users():
        return redirect(url_for("pages.login"))
    if not c.settings.setup_from_localhost or not is_local(request.remote_addr):
        return _page("error.html", 403, status=403, title="Not allowed",
                     message="The first user can only be set up from the controller itself "
                             "(a browser on 127.0.0.1, e.g. through an SSH tunnel) or with "
                             "`bmsgw user add NAME --role admin`.")
    if request.method == "GET":
        return _page("setup.html")
    name = request.form.get("username", "")
    pw, pw2 = request.form.get("password", ""), request.form.get("password2", "")
    try:
        if pw != pw2:
            raise AuthError("password: the two entries differ")
        user = c.users.add(name, "admin", pw)
    except AuthError as exc:
        return _page("setup.html", 400, error=str(exc), username=name)
    sess = login_user(user)
    flash("ok", f"Welcome, {user.name}. You are the administrator; add other users under Users.")
    resp = redirect(url_for("pages.index"))
    set_session_cookie(resp, sess)
    set_device_cookie(resp, user.name, None)
    return resp


@pages.route("/account", methods=["GET", "POST"])
def account():
    c = ctx()
    if request.method == "POST":
        # the current password is checked like a login: a borrowed session must not become a password oracle
        addr = request.remote_addr or "?"
        wait = c.throttle.locked(g.user.name, addr)
        if g.user.source != "file":
            flash("error", "Your user is declared in the config file; change its hash there.")
        elif wait > 0:
            flash("error", f"Too many wrong passwords; try again in {int(wait) + 1} s.")
        elif c.users.authenticate(g.user.name, request.form.get("current", "")) is None:
            c.throttle.failed(g.user.name, addr)
            log.warning("wrong current password for %r from %s on the account page", g.user.name, addr)
            flash("error", "The current password is wrong.")
        elif request.form.get("password", "") != request.form.get("password2", ""):
            flash("error", "The two new passwords differ.")
        else:
            try:
                c.users.set_password(g.user.name, request.form.get("password", ""))
            except AuthError as exc:
                flash("error", str(exc))
            else:
                c.sessions.drop_user(g.user.name)
                sess = login_user(g.user)
                flash("ok", "Password changed; your other sessions were logged out.")
                resp = redirect(url_for("pages.account"))
                set_session_cookie(resp, sess)
                return resp
        return redirect(url_for("pages.account"))
    return _page("account.html")


# -- the bank --------------------------------------------------------------------------------------------------
@pages.route("/")
def index():
    c = ctx()
    active = c.sources.alarms(active=True, limit=50)
    return _page("overview.html", data=c.view.strings(), io=c.view.io(), alarms=active,
                 alarms_plugged=active is not None)


@pages.route("/strings/<int:sid>")
def string_page(sid: int):
    c = ctx()
    if not c.view.has_string(sid):
        return _page("error.html", 404, status=404, title="Not found", message=f"There is no string {sid}.")
    return _page("string.html", s=c.view.string(sid), commands={cmd["point"]: cmd for cmd in c.view.commands(sid)})


@pages.route("/strings/<int:sid>/batteries/<int:cell>")
def battery_page(sid: int, cell: int):
    """One battery: its values, verdict and forecast, and its predicted curve."""
    c = ctx()
    if not c.view.has_cell(sid, cell):
        return _page("error.html", 404, status=404, title="Not found", message=f"String {sid} has no battery {cell}.")
    return _page("battery.html", s=c.view.string(sid), cell=cell, row=c.table.rows(sid, only=cell)[0],
                 thresholds=c.table.thresholds())


@pages.route("/write/<path:path>", methods=["POST"])
@requires("operator")
def write_command(path: str):
    """A command button or form of a page (reset a baseline, zero a current sensor, switch the relay ...):
    through the gateway's one write path, then back to the page it came from."""
    c = ctx()
    entry = c.view.writable.get(path[:128])
    back = request.form.get("next", "")
    back = back if back.startswith("/") and not back.startswith("//") else url_for("pages.index")
    if entry is None:
        flash("error", f"There is no command {path!r}.")
        return redirect(back)
    try:
        value = float(request.form.get("value", ""))
    except ValueError:
        flash("error", f"{entry.spec.description}: enter a number.")
        return redirect(back)
    try:
        done = c.gateway.write_from_thread(entry.ref, value, principal())
    except WriteError as exc:
        flash("error", f"{entry.spec.description}: {exc}.")
    except GatewayError as exc:
        flash("error", f"{entry.spec.description}: {exc}.")
    else:
        flash("ok", f"{done[:1].upper()}{done[1:]}.")
    return redirect(back)


@pages.route("/trend")
def trend():
    c = ctx()
    return _page("trend.html", cell_families=c.view.series_families("cell"),
                 string_families=c.view.series_families("string"), bank_families=c.view.series_families("bank"),
                 history_plugged=c.sources.history_plugged, buffer_minutes=round(
                     c.settings.buffer_interval_s * c.settings.buffer_samples / 60))


@pages.route("/forecast")
def forecast():
    return _page("forecast.html")


@pages.route("/io")
def io_page():
    c = ctx()
    return _page("io.html", io=c.view.io(), commands=c.view.commands(0))


@pages.route("/alarms")
def alarms_page():
    c = ctx()
    active = c.sources.alarms(active=True, limit=500)
    log_rows = c.sources.alarms(active=False, limit=200) if active is not None else None
    return _page("alarms.html", active=active, log_rows=log_rows, plugged=active is not None,
                 commands=c.view.commands(0))


@pages.route("/alarms/<alarm_id>/ack", methods=["POST"])
@requires("operator")
def alarm_ack(alarm_id: str):
    c = ctx()
    result = c.sources.acknowledge(alarm_id[:128], principal())
    if result is None:
        flash("error", "No alarm engine is installed.")
    elif not result:
        flash("error", f"Alarm {alarm_id} no longer exists.")
    else:
        flash("ok", f"Alarm {alarm_id} acknowledged.")
    return redirect(url_for("pages.alarms_page"))


# -- configuration ---------------------------------------------------------------------------------------------
@pages.route("/config")
@requires("admin")
def config_index():
    from .configedit import document_schema

    props = document_schema(ctx().gateway)["properties"]
    sections = [(name, props[name].get("description", "")) for name in props]
    return _page("config_index.html", sections=sections, path=str(ctx().gateway.config.path))


@pages.route("/config/<section>", methods=["GET", "POST"])
@requires("admin")
def config_section(section: str):
    from .configedit import (
        MISSING,
        FieldError,
        document_schema,
        form_fields,
        read_document,
        save_and_reload,
        section_from_form,
    )

    c = ctx()
    props = document_schema(c.gateway)["properties"]
    if section not in props:
        return _page("error.html", 404, status=404, title="Not found", message=f"No config section {section!r}.")
    error = None
    if request.method == "POST":
        try:
            doc = section_from_form(c.gateway, section, request.form)
            result = save_and_reload(c.gateway, doc, g.user.name)
        except FieldError as exc:
            error = {"path": exc.path, "message": exc.message}
        except ConfigError as exc:
            error = {"path": exc.path, "message": exc.message}
        else:
            flash("ok", reload_summary(result))
            return redirect(url_for("pages.config_section", section=section))
        fields = form_fields(props[section], _submitted(props[section], request.form, section), section)
        return _page("config_section.html", 400, section=section, fields=fields, error=error)
    fields = form_fields(props[section], read_document(c.gateway).get(section, MISSING), section)
    return _page("config_section.html", section=section, fields=fields, error=None)


def reload_summary(result: dict) -> str:
    """What a save did, for the page: applied, waiting for a restart, not applied (and why)."""
    if not result["changed"]:
        return "Saved; nothing changed."
    parts = [f"Saved. Applied now: {', '.join(result['applied'])}." if result["applied"] else "Saved."]
    if result["restart_required"]:
        parts.append("Restart bmsgw to apply: " + ", ".join(result["restart_required"]) + ".")
    parts.extend(f"Not applied, {key}: {why}." for key, why in result["failed"].items())
    parts.extend(f"{note}." for note in result["notes"])
    return " ".join(parts)


def _submitted(schema: dict, form, path: str):
    """The form's raw texts shaped like the section, to show them again next to an error."""
    from .configedit import RawText, _kind

    if _kind(schema) == "object":
        out = {}
        for key, sub in schema["properties"].items():
            v = _submitted(sub, form, f"{path}.{key}")
            if v is not None:
                out[key] = v
        return out
    text = form.get(path)
    if text is None or text == "":
        return None
    return RawText(text)


# -- users -----------------------------------------------------------------------------------------------------
@pages.route("/users")
@requires("admin")
def users():
    c = ctx()
    return _page("users.html", users=c.users.users(), tokens=c.users.tokens(), new_token=None)


@pages.route("/users/add", methods=["POST"])
@requires("admin")
def users_add():
    c = ctx()
    f = request.form
    try:
        if f.get("password", "") != f.get("password2", ""):
            raise AuthError("password: the two entries differ")
        c.users.add(f.get("username", ""), f.get("role", ""), f.get("password", ""))
        flash("ok", f"User {f.get('username')} added.")
    except AuthError as exc:
        flash("error", str(exc))
    return redirect(url_for("pages.users"))


@pages.route("/users/<name>/role", methods=["POST"])
@requires("admin")
def users_role(name: str):
    c = ctx()
    try:
        c.users.set_role(name, request.form.get("role", ""))
        c.sessions.update_role(name, request.form.get("role", ""))
        flash("ok", f"{name} is now {request.form.get('role')}.")
    except (AuthError, KeyError) as exc:
        flash("error", str(exc) if isinstance(exc, AuthError) else f"No user {name}.")
    return redirect(url_for("pages.users"))


@pages.route("/users/<name>/password", methods=["POST"])
@requires("admin")
def users_password(name: str):
    c = ctx()
    try:
        c.users.set_password(name, request.form.get("password", ""))
        if name != g.user.name:
            c.sessions.drop_user(name)
        flash("ok", f"Password of {name} set.")
    except (AuthError, KeyError) as exc:
        flash("error", str(exc) if isinstance(exc, AuthError) else f"No user {name}.")
    return redirect(url_for("pages.users"))


@pages.route("/users/<name>/delete", methods=["POST"])
@requires("admin")
def users_delete(name: str):
    c = ctx()
    try:
        c.users.delete(name)
        c.sessions.drop_user(name)
        flash("ok", f"User {name} deleted.")
    except (AuthError, KeyError) as exc:
        flash("error", str(exc) if isinstance(exc, AuthError) else f"No user {name}.")
    return redirect(url_for("pages.users"))


@pages.route("/tokens/add", methods=["POST"])
@requires("admin")
def token_add():
    c = ctx()
    try:
        tid, token = c.users.add_token(request.form.get("label", ""), request.form.get("role", ""))
    except AuthError as exc:
        flash("error", str(exc))
        return redirect(url_for("pages.users"))
    return _page("users.html", users=c.users.users(), tokens=c.users.tokens(), new_token={"id": tid, "token": token})


@pages.route("/tokens/<tid>/revoke", methods=["POST"])
@requires("admin")
def token_revoke(tid: str):
    try:
        ctx().users.revoke_token(tid)
        flash("ok", f"Token {tid} revoked.")
    except KeyError:
        flash("error", f"No token {tid}.")
    return redirect(url_for("pages.users"))


@pages.app_template_filter("when")
def when(ts) -> str:
    if ts is None or ts == "":
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


@pages.app_template_filter("date")
def date(ts) -> str:
    """A Unix time as a UTC date (forecast dates: a day is their resolution)."""
    if ts is None or ts == "":
        return "–"
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(float(ts)))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


@pages.app_template_filter("num")
def num(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@pages.app_template_filter("sig")
def sig(value, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (alarm values come in any unit)."""
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return "–" if value is None else str(value)
