"""Answers in the format the client wants: JSON or XML for the API and for programs, an HTML page for
browsers; the errors of every view and of the authentication in front of them."""
from __future__ import annotations

import logging
from typing import Any

from flask import jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException

from .context import is_api
from .xmlout import to_xml

log = logging.getLogger(__name__)

XML_TYPES = ("application/xml", "text/xml")


def response_format() -> str:
    fmt = request.args.get("format")
    if fmt in ("json", "xml"):
        return fmt
    best = request.accept_mimetypes.best_match(["application/json", *XML_TYPES], default="application/json")
    return "xml" if best in XML_TYPES else "json"


def wants_machine_format() -> bool:
    """A non-API URL asked for by a program (it prefers JSON/XML over HTML)."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json", *XML_TYPES])
    return best is not None and best != "text/html"


def respond(data: Any, status: int = 200, root: str = "response"):
    fmt = request.args.get("format")
    fmt = fmt if fmt in ("json", "xml") else response_format()
    if fmt == "xml":
        resp = make_response(to_xml(data, root), status)
        resp.mimetype = "application/xml"
        return resp
    resp = jsonify(data)
    resp.status_code = status
    return resp


def error_response(status: int, message: str, field: str | None = None):
    body = {"status": status, "message": message}
    if field:
        body["field"] = field
    try:
        return respond(body, status, root="error")
    except Exception:  # never let an error turn into a stack trace
        resp = jsonify(body)
        resp.status_code = status
        return resp


def deny(status: int, message: str, headers: dict | None = None):
    """An error as the client wants it: JSON/XML for the API (and API-like clients), HTML for pages."""
    if is_api() or request.endpoint == "metrics" or wants_machine_format():
        resp = error_response(status, message)
    else:
        resp = app_error_page(status, message)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def app_error_page(status: int, message: str):
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


def allow_header(exc: HTTPException) -> dict:
    try:
        resp = exc.get_response()
    except Exception:
        return {}
    allow = resp.headers.get("Allow")
    return {"Allow": allow} if allow else {}
