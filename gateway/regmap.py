"""The register map as documents: CSV, JSON and Markdown, straight from the point map."""
from __future__ import annotations

import csv
import io
import json

from .pointmap import PointMap

COLUMNS = ("address", "table", "point", "string", "cell", "channel", "type", "scale", "unit", "access",
           "words", "oid", "metric", "json_path", "description")


def rows(pointmap: PointMap, oid_base: str = "") -> list[dict]:
    """One row per register table the point is served in (input, and the holding mirror)."""
    out = []
    for e in pointmap:
        spec = e.spec
        base = {
            "address": e.address, "point": spec.id,
            "string": e.ref.string if e.ref.string is not None else "",
            "cell": e.ref.cell if e.ref.cell is not None else "",
            "channel": e.ref.channel if e.ref.channel is not None else "",
            "type": spec.dtype, "scale": _fmt_scale(spec.scale), "unit": spec.unit,
            "words": "high word first" if spec.width == 2 else "",
            "oid": (oid_base + "." if oid_base else "") + ".".join(map(str, e.oid)),
            "metric": e.metric, "json_path": e.json_path, "description": spec.description,
        }
        out.append({**base, "table": "input", "access": "r"})
        out.append({**base, "table": "holding", "access": "rw" if spec.writable else "r"})
    return out


def _fmt_scale(scale: float) -> str:
    return f"{scale:g}"


def render(pointmap: PointMap, fmt: str, oid_base: str = "") -> str:
    data = rows(pointmap, oid_base)
    if fmt == "json":
        return json.dumps({"columns": list(COLUMNS), "registers": data}, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(data)
        return buf.getvalue()
    if fmt == "md":
        cols = ("address", "table", "point", "string", "cell", "channel", "type", "scale", "unit", "access")
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in data:
            lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}; expected csv, json or md")
