"""The setpoints page: every alarm rule's limits as a table (effective value and where it comes from), editable
by admins, read-only for everybody else.

The table comes from the alarm engine (``bmsgw_setpoints``); a change is written as an override at the scope
the admin picks (this string, its battery model, the whole site) into the config document and saved through the
one check-and-reload path of every config change (``configedit.save_and_reload``: ``Gateway.check``, atomic
save, ``Gateway.reload``), so the alarm rules are resolved again and the present values judged by them at once.
"""
from __future__ import annotations

import logging
import math

from flask import Blueprint, g, make_response, redirect, render_template, request, url_for

from gateway.errors import ConfigError

from .context import ctx, flash, requires

log = logging.getLogger(__name__)

setpoints = Blueprint("setpoints", __name__)

ROOM = "room"
SOURCE_TITLES = {"default": "the built-in default",
                 "analytics": "the analytics' ohmic thresholds (analytics.thresholds)",
                 "site": "the site's override (alarms.rules)", "model": "the battery model's override (alarms.models)",
                 "string": "the string's override (alarms.strings)"}


def _table_source():
    gw = ctx().gateway
    return gw.pm.hook.bmsgw_setpoints(gateway=gw)


def _which(sp) -> tuple[str, int | None]:
    """The table asked for: a string's (``?string=2``) or the room's (``?string=room``); the first string's
    by default."""
    ids = [s["id"] for s in sp.strings()]
    asked = (request.values.get("string") or "")[:8]
    if asked == ROOM:
        return ROOM, None
    try:
        sid = int(asked)
    except ValueError:
        sid = ids[0] if ids else -1
    if sid not in ids:
        return ROOM, None
    return str(sid), sid


def _render(sp, which: str, string: int | None, code: int = 200, submitted: dict | None = None,
            errors: dict | None = None, message: str | None = None, scope: str | None = None):
    from gateway.alarms.setpoints import COLUMNS, format_value

    scopes = sp.scopes(string)
    return make_response(render_template(
        "setpoints.html", tables=sp.strings(), which=which, string=string, rows=sp.table(string), columns=COLUMNS,
        scopes=scopes, scope=scope or sp.default_scope(string), fmt=format_value, submitted=submitted or {},
        errors=errors or {}, message=message, editable=g.user.can("admin"), source_titles=SOURCE_TITLES), code)


@setpoints.route("/setpoints", methods=["GET"])
def page():
    sp = _table_source()
    if sp is None:
        return make_response(render_template(
            "error.html", status=404, title="No setpoints",
            message="The alarm engine is off (alarms.enabled, or the gateway.alarms plugin is disabled)."), 404)
    which, string = _which(sp)
    return _render(sp, which, string)


@setpoints.route("/setpoints", methods=["POST"])
@requires("admin")
def save():
    from gateway.alarms.setpoints import FIELDS, SetpointError, format_value

    from .configedit import read_document, save_and_reload
    from .pages import reload_summary

    c = ctx()
    sp = _table_source()
    if sp is None:
        flash("error", "The alarm engine is off: there are no setpoints to change.")
        return redirect(url_for("setpoints.page"))
    which, string = _which(sp)
    scope = request.form.get("scope", "")
    if scope not in {s for s, _ in sp.scopes(string)}:
        scope = ""
    form = request.form
    changes: dict[tuple[str, str], float | None] = {}
    resets: set[str] = set()
    submitted: dict[str, str] = {}
    errors: dict[str, str] = {}
    for row in sp.table(string):
        if form.get(f"reset.{row.rule_id}"):
            resets.add(row.rule_id)
        for name in FIELDS:
            key = f"{row.rule_id}.{name}"
            text = form.get(f"v.{key}")
            if text is None:
                continue
            text = text.strip()[:32]
            submitted[key] = text
            if text == form.get(f"o.{key}", format_value(row.cell(name).value)):
                continue  # not touched: stays where it comes from
            if text == "":
                changes[(row.rule_id, name)] = None
                continue
            try:
                value = float(text.replace(",", "."))
            except ValueError:
                errors[key] = f"enter a number, not {text!r}"
                continue
            if not math.isfinite(value):
                errors[key] = "enter a finite number"
                continue
            changes[(row.rule_id, name)] = value
    if not scope:
        errors[""] = "choose where to save the change"
    if not errors and not changes and not resets:
        flash("ok", "Nothing changed.")
        return redirect(url_for("setpoints.page", string=which))
    if not errors:
        try:
            sp.check(string, scope, changes)
            doc = sp.edit(read_document(c.gateway), string, scope, changes, frozenset(resets))
            result = save_and_reload(c.gateway, doc, g.user.name)
        except SetpointError as exc:
            for rid, name, message in exc.problems:
                errors[f"{rid}.{name}" if rid else ""] = message
        except ConfigError as exc:
            errors[""] = f"{exc.path}: {exc.message}" if exc.path else exc.message
        else:
            log.info("setpoints changed by %s at scope %s: %s%s", g.user.name, scope,
                     ", ".join(f"{rid}.{name}={v}" for (rid, name), v in changes.items()),
                     f"; reset {', '.join(sorted(resets))}" if resets else "")
            flash("ok", reload_summary(result))
            return redirect(url_for("setpoints.page", string=which))
    first = next(iter(errors.items()))
    message = first[1] if first[0] == "" else f"{first[0]}: {first[1]}"
    return _render(sp, which, string, 400, submitted, errors, message, scope)
