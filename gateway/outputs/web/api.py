"""The REST API under /api/v1: JSON by default, XML on ``Accept: application/xml`` or ``?format=xml``.

Every operation is declared once with ``@operation`` (path, method, parameters with their schemas, the
response schema, the role it needs); the same declaration parses and checks the request and builds the
OpenAPI document at /api/v1/openapi.json, so the document cannot drift from what is served.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Blueprint, g, jsonify, make_response, request

from gateway.commands import NotWritable, WriteDenied, WriteError, WriteFailed, WriteRejected
from gateway.errors import ConfigError, GatewayError
from gateway.regmap import COLUMNS, rows

from .context import ctx, principal, requires
from .data import predicted_curve, table_csv
from .errors import error_response, respond

api = Blueprint("api", __name__)
YEAR_S = 365.25 * 86400.0

@dataclass(frozen=True)
class Param:
    name: str
    schema: dict
    where: str = "query"
    required: bool = False
    description: str = ""


@dataclass
class Operation:
    rule: str
    method: str
    endpoint: str
    summary: str
    response: dict
    params: tuple[Param, ...] = ()
    role: str | None = "viewer"
    body: dict | None = None
    tag: str = "bank"
    description: str = ""
    errors: tuple[int, ...] = field(default_factory=tuple)

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", self.rule)


OPERATIONS: list[Operation] = []


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


# -- parameters ------------------------------------------------------------------------------------------------
def _convert(p: Param, raw: str) -> int | float | str:
    s = p.schema
    t = s.get("type")
    value: int | float | str
    if t == "integer":
        if not re.fullmatch(r"[+-]?\d{1,18}", raw.strip()):
            raise ApiError(400, f"parameter {p.name}: expected an integer, got {raw[:40]!r}", p.name)
        value = int(raw)
    elif t == "number":
        try:
            number = float(raw)
        except ValueError:
            raise ApiError(400, f"parameter {p.name}: expected a number, got {raw[:40]!r}", p.name) from None
        if not math.isfinite(number):
            raise ApiError(400, f"parameter {p.name}: expected a finite number", p.name)
        value = number
    else:
        if "maxLength" in s and len(raw) > s["maxLength"]:
            raise ApiError(400, f"parameter {p.name}: at most {s['maxLength']} characters", p.name)
        if "minLength" in s and len(raw) < s["minLength"]:
            raise ApiError(400, f"parameter {p.name}: at least {s['minLength']} characters", p.name)
        if "pattern" in s and not re.search(s["pattern"], raw):
            raise ApiError(400, f"parameter {p.name}: does not match {s['pattern']}", p.name)
        value = raw
    if "enum" in s and value not in s["enum"]:
        raise ApiError(400, f"parameter {p.name}: one of {', '.join(map(str, s['enum']))}", p.name)
    if "minimum" in s and value < s["minimum"]:
        raise ApiError(400, f"parameter {p.name}: at least {s['minimum']}", p.name)
    if "maximum" in s and value > s["maximum"]:
        raise ApiError(400, f"parameter {p.name}: at most {s['maximum']}", p.name)
    return value


def _parse_query(op: Operation) -> dict:
    out = {}
    for p in op.params:
        if p.where != "query":
            continue
        values = request.args.getlist(p.name)
        if not values:
            if p.required:
                raise ApiError(400, f"parameter {p.name} is required", p.name)
            out[p.name.replace("-", "_")] = p.schema.get("default")
            continue
        if len(values) > 1:
            raise ApiError(400, f"parameter {p.name} given more than once", p.name)
        out[p.name.replace("-", "_")] = _convert(p, values[0])
    return out


FORMAT_PARAM = Param("format", {"type": "string", "enum": ["json", "xml"]},
                     description="response format; default from the Accept header, else JSON")


def operation(rule: str, method: str, summary: str, response: dict, params=(), role: str | None = "viewer",
              body: dict | None = None, tag: str = "bank", description: str = "", errors=()):
    def deco(fn: Callable):
        op = Operation(rule, method, fn.__name__, summary, response, tuple(params) + (FORMAT_PARAM,), role, body,
                       tag, description or (fn.__doc__ or "").strip(), tuple(errors))

        def view(**path_args):
            try:
                query = _parse_query(op)
                for p in op.params:
                    if p.where == "path":
                        path_args[p.name] = _convert(p, str(path_args[p.name]))
                result = fn(**path_args, **{k: v for k, v in query.items() if k != "format"})
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.field)
            if isinstance(result, tuple):
                return respond(*result)
            return respond(result)

        view.__name__ = fn.__name__
        requires(role)(view)
        api.add_url_rule(rule, fn.__name__, view, methods=[method])
        OPERATIONS.append(op)
        return fn
    return deco


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}




def _view():
    return ctx().view


STRING_ID = Param("string_id", {"type": "integer", "minimum": 1, "maximum": 4}, "path", True, "string number")
CELL = Param("cell", {"type": "integer", "minimum": 1, "maximum": 256}, "path", True, "battery number in the string")
TIME_PARAMS = (
    Param("from", {"type": "number", "minimum": 0, "maximum": 32503680000},
          description="start, Unix seconds (default: one hour before `to`)"),
    Param("to", {"type": "number", "minimum": 0, "maximum": 32503680000},
          description="end, Unix seconds (default: now)"),
    Param("max_points", {"type": "integer", "minimum": 1, "maximum": 20000, "default": 500},
          description="at most this many samples; longer ranges are averaged down"),
)


def _string(string_id: int) -> None:
    if not _view().has_string(string_id):
        raise ApiError(404, f"no string {string_id}; configured: {', '.join(map(str, _view().string_ids())) or 'none'}")


def _cell(string_id: int, cell: int) -> None:
    _string(string_id)
    if not _view().has_cell(string_id, cell):
        raise ApiError(404, f"string {string_id} has no battery {cell}")


# -- operations ------------------------------------------------------------------------------------------------
@operation("/status", "GET", "Gateway status", ref("Status"), tag="gateway")
def status():
    """Site, uptime, number of points, per-bus counters and every plugin's status."""
    c = ctx()
    out = dict(c.gateway.status())
    history = "history module" if c.sources.history_plugged else "in-memory buffer"
    out["web"] = {**(out.get("web") or {}), "history": history,
                  "alarms": c.sources.alarms_plugged, "sessions": len(c.sessions),
                  "user": g.user.name if g.get("user") else None}
    return out


@operation("/strings", "GET", "All strings with their string-level values", ref("StringList"))
def strings():
    return {"strings": _view().strings()}


@operation("/strings/<int:string_id>", "GET", "One string", ref("String"), params=[STRING_ID], errors=(404,))
def string(string_id: int):
    _string(string_id)
    return _view().string(string_id)


@operation("/strings/<int:string_id>/cells", "GET", "Every battery of a string with its values",
           ref("CellList"), params=[STRING_ID], errors=(404,))
def cells(string_id: int):
    _string(string_id)
    return {"string": string_id, "cells": _view().cells(string_id)}


@operation("/strings/<int:string_id>/cells/<int:cell>", "GET", "One battery", ref("Cell"), params=[STRING_ID, CELL],
           errors=(404,))
def cell(string_id: int, cell: int):
    _cell(string_id, cell)
    return _view().cell(string_id, cell)


@operation("/strings/<int:string_id>/batteries", "GET", "A string's data table: every battery's values, "
           "baseline deviation, SOH, forecast and alarm level", ref("BatteryTable"), params=[STRING_ID],
           errors=(404,))
def batteries(string_id: int):
    """One row per battery (ohmic values in ohm, dates in Unix seconds, null where there is none yet); the
    same table as CSV at ``/api/v1/strings/{string_id}/batteries.csv``."""
    _string(string_id)
    c = ctx()
    now = time.time()
    return {"string": string_id, "name": c.view.topology.string(string_id).name,
            "thresholds": c.table.thresholds(), "now": now, "batteries": _battery_rows(string_id, now)}


def _battery_rows(string_id: int, now: float) -> list[dict]:
    """The data table's rows (the point store) with each battery's years in service (the analytics' state)."""
    c = ctx()
    rows = c.table.rows(string_id)
    since = c.sources.in_service_since(string_id)
    for row in rows:
        first = since.get(row["cell"])
        row["age_years"] = round(max(0.0, now - first) / YEAR_S, 4) if first is not None else None
    return rows


@api.route("/strings/<int:string_id>/batteries.csv")
@requires("viewer")
def batteries_csv(string_id: int):
    c = ctx()
    if not c.view.has_string(string_id):
        return error_response(404, f"no string {string_id}")
    resp = make_response(table_csv(string_id, _battery_rows(string_id, time.time())))
    resp.mimetype = "text/csv"
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    resp.headers["Content-Disposition"] = f'attachment; filename="string{string_id}-batteries-{stamp}.csv"'
    return resp


@operation("/strings/<int:string_id>/cells/<int:cell>/forecast", "GET", "A battery's predicted curve",
           ref("BatteryForecast"), params=[STRING_ID, CELL], errors=(404,))
def cell_forecast(string_id: int, cell: int):
    """The measured ohmic values (history), the analytics' fitted rise over the baseline and its extrapolation
    to the replacement threshold, with the early-late range of the date.  ``fit`` and ``extrapolation`` are
    empty until the analytics have fitted a trend."""
    _cell(string_id, cell)
    c = ctx()
    return predicted_curve(c.table, c.sources, string_id, cell, time.time(),
                           min(400, c.settings.max_history_points))


def _history(point: str, string_id, cell_no, channel, frm, to, max_points):
    c = ctx()
    entry = c.view.resolve(point, string_id, cell_no, channel)
    if entry is None:
        where = " ".join(f"{k}={v}" for k, v in (("string", string_id), ("cell", cell_no), ("channel", channel))
                         if v is not None)
        raise ApiError(404, f"no point {point} {where}".strip() + " in this bank", "point")
    to = time.time() if to is None else to
    frm = to - 3600 if frm is None else frm
    if frm >= to:
        raise ApiError(400, "from must be before to", "from")
    max_points = min(max_points or 500, c.settings.max_history_points)
    source, samples = c.sources.history(entry.ref, frm, to, max_points)
    return {"point": entry.spec.id, "string": entry.ref.string, "cell": entry.ref.cell, "channel": entry.ref.channel,
            "unit": entry.spec.unit, "from": frm, "to": to, "source": source,
            "samples": [{"t": round(t, 3), "v": v} for t, v in samples]}


POINT_NAME = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-z0-9_.]+$"}


@operation("/strings/<int:string_id>/cells/<int:cell>/history", "GET", "A battery's history", ref("History"),
           params=[STRING_ID, CELL, Param("point", POINT_NAME, required=True,
                                          description="family (cell.voltage) or its name (voltage)"), *TIME_PARAMS],
           errors=(400, 404))
def cell_history(string_id: int, cell: int, point: str, max_points: int, **kw):
    _cell(string_id, cell)
    return _history(point, string_id, cell, None, kw.get("from"), kw.get("to"), max_points)


@operation("/strings/<int:string_id>/history", "GET", "A string value's history", ref("History"),
           params=[STRING_ID, Param("point", POINT_NAME, required=True,
                                    description="family (string.voltage) or its name (voltage)"), *TIME_PARAMS],
           errors=(400, 404))
def string_history(string_id: int, point: str, max_points: int, **kw):
    _string(string_id)
    return _history(point, string_id, None, None, kw.get("from"), kw.get("to"), max_points)


@operation("/history", "GET", "Any point's history", ref("History"),
           params=[Param("point", POINT_NAME, required=True, description="point family, e.g. io.ambient_temperature"),
                   Param("string", {"type": "integer", "minimum": 1, "maximum": 4}),
                   Param("cell", {"type": "integer", "minimum": 1, "maximum": 256}),
                   Param("channel", {"type": "integer", "minimum": 1, "maximum": 64}), *TIME_PARAMS],
           errors=(400, 404))
def history(point: str, string, cell, channel, max_points: int, **kw):
    """Samples from the history module when one is installed, else from the web face's in-memory buffer
    (``source`` says which)."""
    return _history(point, string, cell, channel, kw.get("from"), kw.get("to"), max_points)


@operation("/alarms", "GET", "Active alarms or the alarm log", ref("AlarmList"), tag="alarms",
           params=[Param("state", {"type": "string", "enum": ["active", "log"], "default": "active"}),
                   Param("limit", {"type": "integer", "minimum": 1, "maximum": 5000, "default": 500})])
def alarms(state: str, limit: int):
    """``available`` is false when no alarm engine is installed."""
    result = ctx().sources.alarms(active=state == "active", limit=limit)
    return {"available": result is not None, "state": state, "alarms": list(result or [])[:limit]}


@operation("/alarms/<alarm_id>/acknowledge", "POST", "Acknowledge an alarm", ref("Acknowledged"), tag="alarms",
           params=[Param("alarm_id", {"type": "string", "minLength": 1, "maxLength": 128,
                                      "pattern": r"^[A-Za-z0-9_.:=@-]+$"}, "path", True)],
           role="operator", errors=(404, 503))
def acknowledge(alarm_id: str):
    """Needs the operator role. With a session, send the page's CSRF token in ``X-CSRF-Token``."""
    user = g.user.name
    result = ctx().sources.acknowledge(alarm_id, principal())
    if result is None:
        raise ApiError(503, "no alarm engine is installed")
    if not result:
        raise ApiError(404, f"no alarm {alarm_id}")
    return {"id": alarm_id, "acknowledged": True, "by": user}


@operation("/commands", "GET", "The commands and writable points, what they take and who may write them",
           ref("CommandList"), tag="commands",
           params=[Param("string", {"type": "integer", "minimum": 0, "maximum": 4},
                         description="only this string's (0: the gateway's and the bank's)")])
def commands(string: int | None):
    return {"commands": _view().commands(string)}


WRITE_STATUS = ((NotWritable, 404), (WriteDenied, 403), (WriteRejected, 400), (WriteFailed, 502))


@operation("/points/<path:path>", "POST", "Write a writable point or run a command", ref("Written"), role="operator",
           tag="commands", body={"type": "object", "required": ["value"], "additionalProperties": False,
                                 "properties": {"value": {"type": "number"}}},
           params=[Param("path", {"type": "string", "minLength": 1, "maxLength": 128,
                                  "pattern": r"^[a-z0-9_/]+$"}, "path", True,
                         "the point's JSON path, e.g. strings/1/commands/reset_ohmic_baseline (GET /commands)")],
           errors=(400, 403, 404, 415, 502, 503))
def write_point(path: str):
    """Through the gateway's one write path: the command's own role is checked (403 names it), the value
    against what the point takes (400), and the write is logged with who did it.  502: a device did not
    answer (the relay's I/O module)."""
    entry = _view().writable.get(path)
    if entry is None:
        raise ApiError(404, f"no writable point {path!r}; GET /api/v1/commands lists them", "path")
    if not request.is_json:
        raise ApiError(415, 'send {"value": NUMBER} as application/json')
    data = request.get_json(silent=True)
    value = data.get("value") if isinstance(data, dict) and set(data) == {"value"} else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, 'expected {"value": NUMBER}', "value")
    by = principal()
    try:
        done = ctx().gateway.write_from_thread(entry.ref, value, by)
    except WriteError as exc:
        status = next((code for cls, code in WRITE_STATUS if isinstance(exc, cls)), 500)
        raise ApiError(status, str(exc), "value" if status == 400 else None) from None
    except GatewayError as exc:  # not running
        raise ApiError(503, str(exc)) from None
    return {"point": entry.spec.id, **entry.ref.keys(), "value": value, "result": done, "by": by.name}


@operation("/io", "GET", "Charger monitor and room I/O (bank-level points)", ref("IoList"), tag="bank")
def io():
    return {"points": _view().io()}


@operation("/registers", "GET", "The Modbus register map (with OIDs, metric names and JSON paths)",
           ref("RegisterList"), tag="gateway",
           params=[Param("table", {"type": "string", "enum": ["input", "holding"]}),
                   Param("point", POINT_NAME),
                   Param("offset", {"type": "integer", "minimum": 0, "maximum": 1000000, "default": 0}),
                   Param("limit", {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1000})])
def registers(table, point, offset: int, limit: int):
    out = []
    for r in rows(ctx().gateway.pointmap):
        if (table and r["table"] != table) or (point and r["point"] != point):
            continue
        out.append({k: (None if r[k] == "" and k in ("string", "cell", "channel") else r[k]) for k in COLUMNS})
    return {"total": len(out), "offset": offset, "columns": list(COLUMNS), "registers": out[offset:offset + limit]}


@operation("/config", "GET", "The configuration file's content", ref("ConfigDocument"), role="admin", tag="config")
def get_config():
    """As written in the file (defaults not filled in). Needs the admin role."""
    from .configedit import read_document

    c = ctx()
    return {"path": str(c.gateway.config.path), "config": read_document(c.gateway)}


@operation("/config", "PUT", "Validate, save and apply a new configuration", ref("ConfigSaved"), role="admin",
           tag="config", body={"$ref": "#/components/schemas/ConfigBody"}, errors=(400, 415))
def put_config():
    """The whole document as JSON. Invalid: 400 with ``field`` naming the key path. Saved atomically (the
    previous file kept as .bak) and applied without restarting polling; ``restart_required`` lists what
    needs a restart (buses, strings, the web server's socket ...)."""
    from .configedit import save_and_reload

    if not request.is_json:
        raise ApiError(415, "send the configuration as application/json")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # [[[[... thousands deep: Python's JSON decoder gives up (silent= does not cover it)
        raise ApiError(400, "the JSON document is nested too deeply", "config") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ApiError(400, 'expected {"config": {...the whole document...}}', "config")
    c = ctx()
    try:
        return save_and_reload(c.gateway, data["config"], g.user.name)
    except ConfigError as exc:
        raise ApiError(400, f"{exc.path}: {exc.message}", exc.path) from None


@operation("/config/schema", "GET", "The configuration's JSON Schema (every plugin's section)", {"type": "object"},
           role="admin", tag="config")
def config_schema():
    from .configedit import document_schema

    return document_schema(ctx().gateway)


@api.route("/openapi.json")
@requires(None)
def openapi():
    from .configedit import document_schema
    from .openapi import build

    c = ctx()
    return jsonify(build(OPERATIONS, document_schema(c.gateway), c.gateway.config.section("site").get("name", "")))
