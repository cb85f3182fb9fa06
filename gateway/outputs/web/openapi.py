"""The OpenAPI 3.1 document, built from the same operation declarations that serve the API."""
from __future__ import annotations

import copy

from gateway import __version__

NUM = {"type": ["number", "null"]}
INT_OR_NULL = {"type": ["integer", "null"]}

SCHEMAS: dict[str, dict] = {
    "Error": {
        "type": "object", "required": ["status", "message"],
        "properties": {"status": {"type": "integer"}, "message": {"type": "string"},
                       "field": {"type": "string", "description": "the parameter or config key path at fault"}},
    },
    "PointValue": {
        "type": "object", "required": ["value", "unit", "quality", "ts"],
        "properties": {
            "value": {**NUM, "description": "in `unit`; the last value read, also when quality is not GOOD"},
            "unit": {"type": "string"},
            "quality": {"enum": ["GOOD", "STALE", "COMM_FAIL", "OUT_OF_RANGE"]},
            "ts": {"type": "number", "description": "when it was read, Unix seconds"},
            "state": {"type": "string", "description": "label of a state value (e.g. float, warning)"},
        },
    },
    "Battery": {
        "type": "object",
        "properties": {"model": {"type": "string"}, "nominal_voltage": {"type": "number"},
                       "capacity_ah": {"type": "number"}, "chemistry": {"type": "string"}},
    },
    "String": {
        "type": "object", "required": ["id", "name", "cells", "points"],
        "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"}, "cells": {"type": "integer"},
            "battery": {"$ref": "#/components/schemas/Battery"},
            "points": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/PointValue"},
                       "description": "string-level values by name (voltage, current, soc ...); a value "
                                      "appears once it has been read or computed"},
        },
    },
    "StringList": {"type": "object", "required": ["strings"],
                   "properties": {"strings": {"type": "array", "items": {"$ref": "#/components/schemas/String"}}}},
    "Cell": {
        "type": "object", "required": ["string", "cell", "points"],
        "properties": {
            "string": {"type": "integer"}, "cell": {"type": "integer"},
            "points": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/PointValue"},
                       "description": "battery values by name (voltage, temperature, ohmic, alarm_level ...)"},
        },
    },
    "CellList": {"type": "object", "required": ["string", "cells"],
                 "properties": {"string": {"type": "integer"},
                                "cells": {"type": "array", "items": {"$ref": "#/components/schemas/Cell"}}}},
    "BatteryRow": {
        "type": "object", "required": ["cell", "verdict", "stale", "alarm_level"],
        "properties": {
            "cell": {"type": "integer"}, "voltage": NUM, "temperature": NUM,
            "ohmic": {**NUM, "description": "ohm"}, "ohmic_baseline": {**NUM, "description": "ohm"},
            "ohmic_baseline_deviation": {**NUM, "description": "% over the baseline"},
            "ohmic_average_deviation": {**NUM, "description": "% from the string average"},
            "voltage_average_deviation": {**NUM, "description": "V from the string average"},
            "soh": NUM, "eol_date": {**NUM, "description": "predicted replacement date, Unix seconds"},
            "eol_date_early": NUM, "eol_date_late": NUM,
            "alarm_level": {**INT_OR_NULL, "description": "0 normal, 1 warning, 2 critical"},
            "alarm": {"type": ["string", "null"]}, "diagnosis": {"type": ["string", "null"]},
            "verdict": {"enum": ["good", "warning", "replace", "critical", "no baseline"],
                        "description": "the ohmic rise over the baseline against the analytics thresholds"},
            "stale": {"type": "boolean", "description": "a measured value is missing or not GOOD"},
            "age_years": {**NUM, "description": "years in service (since installation, replacement or first seen)"},
        },
    },
    "BatteryTable": {
        "type": "object", "required": ["string", "name", "thresholds", "now", "batteries"],
        "properties": {
            "string": {"type": "integer"}, "name": {"type": "string"}, "now": {"type": "number"},
            "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
            "batteries": {"type": "array", "items": {"$ref": "#/components/schemas/BatteryRow"}},
        },
    },
    "BatteryForecast": {
        "type": "object", "required": ["string", "cell", "measured", "fit", "extrapolation", "thresholds"],
        "properties": {
            "string": {"type": "integer"}, "cell": {"type": "integer"}, "unit": {"type": "string"},
            "now": {"type": "number"}, "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
            "baseline": NUM, "replace_level": NUM, "critical_level": NUM, "eol": NUM, "early": NUM, "late": NUM,
            "verdict": {"type": "string"}, "deviation_pct": NUM, "ohmic": NUM,
            "source": {"type": ["string", "null"], "description": "what limits the life: ohmic, emf or life"},
            "model": {"type": ["string", "null"]}, "fitted": NUM, "history_source": {"type": "string"},
            "measured": {"$ref": "#/components/schemas/Samples"}, "fit": {"$ref": "#/components/schemas/Samples"},
            "extrapolation": {"$ref": "#/components/schemas/Samples"},
        },
    },
    "Samples": {"type": "array", "items": {"type": "object", "required": ["t", "v"],
                                           "properties": {"t": {"type": "number"}, "v": NUM}}},
    "History": {
        "type": "object", "required": ["point", "unit", "from", "to", "source", "samples"],
        "properties": {
            "point": {"type": "string"}, "string": INT_OR_NULL, "cell": INT_OR_NULL, "channel": INT_OR_NULL,
            "unit": {"type": "string"}, "from": {"type": "number"}, "to": {"type": "number"},
            "source": {"enum": ["history", "memory", "none"],
                       "description": "history: the history module; memory: the web face's recent buffer"},
            "samples": {"type": "array", "items": {
                "type": "object", "required": ["t", "v"],
                "properties": {"t": {"type": "number"}, "v": NUM}}},
        },
    },
    "Alarm": {
        "type": "object", "required": ["id", "severity", "message", "raised", "active"],
        "properties": {
            "id": {"type": "string"}, "severity": {"type": "string"}, "message": {"type": "string"},
            "raised": {"type": "number"}, "active": {"type": "boolean"},
            "point": {"type": ["string", "null"]}, "string": INT_OR_NULL, "cell": INT_OR_NULL,
            "channel": INT_OR_NULL, "value": NUM, "threshold": NUM, "cleared": NUM,
            "acknowledged_by": {"type": ["string", "null"]}, "acknowledged": NUM,
            "rule": {"type": ["string", "null"], "description": "the name of the alarm rule that raised it "
                                                                 "(cell_voltage_float, device_comm, ...)"},
            "cleared_message": {"type": ["string", "null"], "description": "why it ended (null while active)"},
        },
    },
    "AlarmList": {
        "type": "object", "required": ["available", "state", "alarms"],
        "properties": {"available": {"type": "boolean", "description": "false: no alarm engine installed"},
                       "state": {"enum": ["active", "log"]},
                       "alarms": {"type": "array", "items": {"$ref": "#/components/schemas/Alarm"}}},
    },
    "Acknowledged": {"type": "object", "required": ["id", "acknowledged", "by"],
                     "properties": {"id": {"type": "string"}, "acknowledged": {"type": "boolean"},
                                    "by": {"type": "string"}}},
    "IoPoint": {
        "allOf": [{"$ref": "#/components/schemas/PointValue"},
                  {"type": "object", "required": ["point"],
                   "properties": {"point": {"type": "string"}, "channel": INT_OR_NULL,
                                  "description": {"type": "string"}}}],
    },
    "IoList": {"type": "object", "required": ["points"],
               "properties": {"points": {"type": "array", "items": {"$ref": "#/components/schemas/IoPoint"}}}},
    "Register": {
        "type": "object", "required": ["address", "table", "point"],
        "properties": {
            "address": {"type": "integer"}, "table": {"enum": ["input", "holding"]}, "point": {"type": "string"},
            "string": INT_OR_NULL, "cell": INT_OR_NULL, "channel": INT_OR_NULL, "type": {"type": "string"},
            "scale": {"type": "string"}, "unit": {"type": "string"}, "access": {"enum": ["r", "rw"]},
            "words": {"type": "string"}, "oid": {"type": "string"}, "metric": {"type": "string"},
            "json_path": {"type": "string"}, "description": {"type": "string"},
        },
    },
    "RegisterList": {
        "type": "object", "required": ["total", "offset", "columns", "registers"],
        "properties": {"total": {"type": "integer"}, "offset": {"type": "integer"},
                       "columns": {"type": "array", "items": {"type": "string"}},
                       "registers": {"type": "array", "items": {"$ref": "#/components/schemas/Register"}}},
    },
    "Status": {
        "type": "object", "required": ["site", "uptime_s", "points", "readings", "buses"],
        "properties": {"site": {"type": "object"}, "uptime_s": {"type": "number"}, "points": {"type": "integer"},
                       "readings": {"type": "integer"}, "buses": {"type": "object"}, "web": {"type": "object"},
                       "backfill": {"type": "object", "description": "the demo's simulated history (simulator."
                                    "backfill_days): state running/done/skipped/failed, percent, simulated_from"}},
    },
    "ConfigDocument": {"type": "object", "required": ["path", "config"],
                       "properties": {"path": {"type": "string"}, "config": {"type": "object"}}},
    "CommandList": {
        "type": "object", "required": ["commands"],
        "properties": {"commands": {"type": "array", "items": {
            "type": "object", "required": ["path", "point", "description", "role", "modbus_register"],
            "properties": {"path": {"type": "string"}, "point": {"type": "string"}, "string": {"type": "integer"},
                           "channel": {"type": "integer"}, "description": {"type": "string"},
                           "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
                           "modbus_register": {"type": "integer"},
                           "values": {"type": "object", "additionalProperties": {"type": "string"}},
                           "range": {"type": "array", "items": NUM}}}}},
    },
    "Written": {
        "type": "object", "required": ["point", "value", "result", "by"],
        "properties": {"point": {"type": "string"}, "string": {"type": "integer"}, "channel": {"type": "integer"},
                       "value": NUM, "result": {"type": "string", "description": "what was done"},
                       "by": {"type": "string"}},
    },
    "ConfigSaved": {
        "type": "object", "required": ["saved", "changed", "applied", "restart_required", "failed", "notes"],
        "properties": {"saved": {"type": "boolean"},
                       "changed": {"type": "array", "items": {"type": "string"}, "description": "sections changed"},
                       "applied": {"type": "array", "items": {"type": "string"},
                                   "description": "changed sections applied while running"},
                       "restart_required": {"type": "array", "items": {"type": "string"},
                                            "description": "sections or keys saved, applied at the next restart"},
                       "failed": {"type": "object", "additionalProperties": {"type": "string"},
                                  "description": "key -> why the running setting was kept (e.g. a listen "
                                                 "address that cannot be bound)"},
                       "notes": {"type": "array", "items": {"type": "string"},
                                 "description": "what else happened (clients disconnected, a face started)"}},
    },
}

ERROR_TEXT = {400: "Bad request (the message names the parameter or key)", 401: "Login or API token needed",
              403: "The user's role does not allow it (or the CSRF check failed)", 404: "Not found",
              413: "Body too large", 415: "Body must be JSON", 502: "A device did not answer the write",
              503: "The module that answers this is not installed, or the gateway is not running"}


def _content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}, "application/xml": {"schema": schema}}


def build(operations, document_schema: dict, site_name: str = "") -> dict:
    paths: dict[str, dict] = {}
    error = {"$ref": "#/components/schemas/Error"}
    for op in operations:
        item = {
            "operationId": op.endpoint, "summary": op.summary, "tags": [op.tag],
            "parameters": [{"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                            "schema": p.schema, **({"description": p.description} if p.description else {})}
                           for p in op.params],
            "responses": {"200": {"description": "OK", "content": _content(op.response)}},
        }
        if op.description:
            item["description"] = op.description
        codes = set(op.errors) | {400} | ({401, 403} if op.role else set())
        for code in sorted(codes):
            item["responses"][str(code)] = {"description": ERROR_TEXT.get(code, "Error"), "content": _content(error)}
        item["responses"]["default"] = {"description": "Error", "content": _content(error)}
        if op.role is None:
            item["security"] = []
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        paths.setdefault(op.openapi_path, {})[op.method.lower()] = item
    error_content = _content(error)
    paths["/strings/{string_id}/batteries.csv"] = {"get": {
        "operationId": "batteries_csv", "summary": "A string's data table as CSV (a file to download)",
        "tags": ["bank"],
        "description": "The columns of GET /strings/{string_id}/batteries: ohmic values in milliohm, dates as "
                       "YYYY-MM-DD (UTC), empty where there is no value yet.",
        "parameters": [{"name": "string_id", "in": "path", "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 4}, "description": "string number"}],
        "responses": {"200": {"description": "OK", "content": {"text/csv": {"schema": {"type": "string"}}}},
                      **{str(code): {"description": ERROR_TEXT[code], "content": error_content}
                         for code in (401, 403, 404)},
                      "default": {"description": "Error", "content": error_content}}}}
    paths["/openapi.json"] = {"get": {
        "operationId": "openapi", "summary": "This document", "tags": ["gateway"], "security": [],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    schemas = dict(SCHEMAS)
    schemas["ConfigBody"] = {"type": "object", "required": ["config"],
                             "properties": {"config": copy.deepcopy(document_schema)}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "bmsgw REST API", "version": __version__,
                 "description": "Battery monitoring gateway" + (f" ({site_name})" if site_name else "") +
                                ". JSON by default; XML with `Accept: application/xml` or `?format=xml`. "
                                "Authenticate with a session cookie (log in on the web page) or an API token "
                                "(`Authorization: Bearer bmsgw_...`, from `bmsgw token add`)."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}, {"apiToken": []}, {"sessionCookie": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiToken": {"type": "apiKey", "in": "header", "name": "X-API-Token"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "bmsgw_session"},
            },
        },
    }
