"""Reports: CSV export of any range, a PDF report per string, a discharge-event report.

    bmsgw report --from 2026-01-01 --to 2026-02-01 --format pdf --string 2 --out feb.pdf
    bmsgw report --from 2026-01-01 --to 2026-02-01 --format csv --out jan.csv [--resolution 1h] [--points 'cell.*']
    bmsgw report --kind discharge --from 2026-01-01 --format pdf --out discharges.pdf

Python API (web/REST): ``make_report(gateway, start, end, fmt, out, kind="summary", strings=None)``.
The alarm section reads the alarm log through the ``bmsgw_alarm_log`` hook; with no plugin answering it the
report says "no alarm log".
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import fsutil
from ..errors import GatewayError
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger(__name__)

KINDS = ("summary", "discharge")
FORMATS = ("csv", "pdf")


def make_report(gateway: Gateway, start: float, end: float, fmt: str, out: str | Path, kind: str = "summary",
                strings: list[int] | None = None, resolution: str = "auto", points: list[str] | None = None,
                event: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Write a report to ``out``; returns what was written (``{"rows": n}`` or ``{"strings"/"events": n}``)."""
    from .data import ReportContext

    if fmt not in FORMATS:
        raise GatewayError(f"unknown format {fmt!r}; use csv or pdf")
    if kind not in KINDS:
        raise GatewayError(f"unknown report kind {kind!r}; use summary or discharge")
    progress = progress or (lambda msg: log.info("report: %s", msg))
    try:
        ctx = ReportContext.open(gateway, start, end, strings)
        ctx.strings(strings)  # validates --string
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    try:
        if fmt == "csv":
            from .csv_export import export_discharges, export_history

            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                if kind == "discharge":
                    result = {"rows": export_discharges(ctx, fh, strings)}
                else:
                    from ..history import HistoryError

                    try:
                        result = {"rows": export_history(ctx, fh, strings, points, resolution, progress=progress)}
                    except HistoryError as exc:
                        raise GatewayError(str(exc)) from None
        else:
            from .pdf import discharge_report, string_report

            if kind == "discharge":
                result = {"events": discharge_report(ctx, strings, str(tmp), progress, event)}
            else:
                result = {"strings": string_report(ctx, strings, str(tmp), progress)}
        fsutil.replace_durably(tmp, out)
    finally:
        ctx.close()
        if tmp.exists():
            tmp.unlink()
    return result


def cmd_report(args) -> int:
    from ..cliargs import config_path, offline_gateway
    from .data import parse_when

    gw = offline_gateway(config_path(args))
    try:
        end = parse_when(args.to) if args.to else time.time()
        start = parse_when(args.from_) if args.from_ else end - 30 * 86400
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    tty = sys.stderr.isatty()
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        text = f"[{time.monotonic() - t0:5.1f} s] {msg}"
        if tty:
            print("\r" + text[:100].ljust(100), end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    result = make_report(gw, start, end, args.format, args.out, args.kind, [args.string] if args.string else None,
                         args.resolution, args.points, args.event, progress)
    if tty:
        print(file=sys.stderr)
    what = ", ".join(f"{v} {k}" for k, v in result.items())
    print(f"{args.out}: {args.kind} report ({args.format}), {what}", file=sys.stderr)
    return 0


@hookimpl
def bmsgw_cli_commands(subparsers) -> None:
    from ..cliargs import add_config_option

    p = subparsers.add_parser(
        "report", help="write a report: CSV export of a range, PDF per string, discharge events",
        description="Reports from the history and analytics in the state folder (the gateway may be running). "
                    "Times: YYYY-MM-DD (UTC), an ISO date-time or unix seconds. Progress goes to stderr.")
    add_config_option(p)
    p.add_argument("--from", dest="from_", metavar="TIME", help="start (default: 30 days before --to)")
    p.add_argument("--to", metavar="TIME", help="end (default: now)")
    p.add_argument("--format", choices=FORMATS, default="pdf")
    p.add_argument("--kind", choices=KINDS, default="summary",
                   help="summary: per-string report or history export; discharge: discharge events")
    p.add_argument("--string", type=int, help="only this string")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--resolution", default="auto", help="CSV: auto, raw, 15m, 1h, 1d or seconds")
    p.add_argument("--points", nargs="+", metavar="GLOB", help="CSV: point families to export, e.g. 'cell.*'")
    p.add_argument("--event", type=int, help="discharge report: only this event id")
    p.set_defaults(func=cmd_report)
