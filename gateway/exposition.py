"""Prometheus exposition of the point store, shared by every face that serves ``/metrics``.

The Prometheus exporter (``gateway.outputs.prometheus``, a port of its own) and the web face both serve the
same text, so it lives here, below the faces: ``render_metrics(gateway) -> (body, content_type)``.

Two renderers produce the same bytes from one model of the metric families:

* ``BankCollector``, a prometheus-client custom collector read at scrape time; ``generate_latest`` over it
  is the reference implementation (``tests/test_prometheus.py`` compares the two byte for byte);
* ``ExpositionModel.render``, the fast path: every series' ``name{labels} `` prefix is built once from the
  point map, so a render is one pass over the store's snapshot.  The result is cached per store generation
  (and alarm-table version): scrapes between two poll batches cost nothing.

Names and units follow ``DOMAIN.md`` section 8 through the point map (``MappedPoint.metric``,
``metric_factor``, ``labels``); values are rounded to the catalog's northbound resolution; only GOOD readings
are exported (a stale point disappears instead of reading 0).
"""
from __future__ import annotations

import gzip
import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import __version__
from .points import PointRef, Quality, Reading

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .app import Gateway
    from .pointmap import MappedPoint, PointMap
    from .topology import Topology

log = logging.getLogger(__name__)

# prometheus-client's CONTENT_TYPE_PLAIN_0_0_4 (gateway/outputs/prometheus/tests checks it): prometheus-client, with
# the http.server, wsgiref and email modules it imports, is loaded by the first scrape, not at start (about
# 1.5 MB of the controller's memory while no Prometheus server scrapes)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_UNIT_WORDS = {"V": "volts", "A": "amperes", "C": "degrees Celsius", "ohm": "ohms", "s": "seconds",
               "Ah": "ampere-hours", "unix_s": "Unix time, seconds"}
_NEG_INF = float("-inf")
LABEL_MAX = 200  # longest label value taken from an alarm event
CURRENT_SIGN = "positive = charging (into the battery), negative = discharging"

Snapshot = dict[PointRef, Reading]


def escape_label_value(value: str) -> str:
    """Label value escaping of the text format (what prometheus-client does)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def series_prefix(name: str, labels: Iterable[tuple[str, str]]) -> str:
    """``name{a="1",b="2"} `` with labels sorted by name, as prometheus-client writes them."""
    pairs = sorted(labels)
    if not pairs:
        return name + " "
    return name + "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs) + "} "


def decimals_for(scale: float, factor: float) -> int | None:
    """Decimal places that keep the catalog's northbound resolution after the unit factor (None: keep all)."""
    if scale <= 0 or factor <= 0:
        return None
    step = scale * factor
    places = -math.floor(math.log10(step) + 1e-9)
    return max(0, min(places, 12))


def convert(value: float, factor: float, places: int | None) -> float:
    """Store value to metric value: unit factor, then rounding to the resolution (no float noise)."""
    if factor != 1.0:
        inverse = 1.0 / factor
        value = value / round(inverse) if abs(inverse - round(inverse)) < 1e-9 else value * factor
    if places is not None and math.isfinite(value):
        value = round(value, places)
    return float(value)


# -- the families ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class AlarmBoard:
    """Active alarms as reported through the ``bmsgw_alarm_event`` hook, for ``bms_alarm_active``."""

    active: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # severity -> events since start
    version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, event: Any) -> None:
        def text(name: str, default: str = "") -> str:  # label values, bounded
            value = getattr(event, name, None)
            value = getattr(value, "value", value)  # an enum: its value
            return str(value if value not in (None, "") else default)[:LABEL_MAX]

        alarm_id, obj, severity = text("alarm_id"), text("object"), text("severity", "unknown")
        # the label keeps its published name (alert rules match on it): the point family under "metric"
        labels = {"alarm": alarm_id, "object": obj, "metric": text("point"), "severity": severity}
        with self.lock:
            if getattr(event, "active", False):
                self.active[(alarm_id, obj)] = labels
            else:
                self.active.pop((alarm_id, obj), None)
            self.events[severity] = self.events.get(severity, 0) + 1
            self.version += 1

    def state(self) -> tuple[list[dict[str, str]], dict[str, int]]:
        with self.lock:
            return [self.active[k] for k in sorted(self.active)], dict(sorted(self.events.items()))


@dataclass(slots=True)
class RenderContext:
    snapshot: Snapshot
    alarms: list[dict[str, str]]
    alarm_events: dict[str, int]
    total_points: int


class Family(ABC):
    """One metric family: exported name, type, HELP and how to find its samples."""

    name: str  # family name as prometheus-client keeps it (a counter without ``_total``)
    mtype: str  # gauge | counter
    help: str

    @property
    def exported(self) -> str:
        return self.name + "_total" if self.mtype == "counter" else self.name

    def header(self) -> str:
        return f"# HELP {self.exported} {escape_help(self.help)}\n# TYPE {self.exported} {self.mtype}\n"

    @abstractmethod
    def samples(self, ctx: RenderContext) -> Iterator[tuple[tuple[tuple[str, str], ...], str, float]]:
        """(labels, prefix, value) of every sample to export now."""

    # the fast path
    def render(self, ctx: RenderContext, out: list[str]) -> None:
        from prometheus_client.utils import floatToGoString

        lines = [prefix + floatToGoString(value) + "\n" for _, prefix, value in self.samples(ctx)]
        if lines:
            out.append(self.header())
            out.extend(lines)

    # the reference path
    def metric(self, ctx: RenderContext) -> Metric | None:
        samples = list(self.samples(ctx))
        if not samples:
            return None
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cls = CounterMetricFamily if self.mtype == "counter" else GaugeMetricFamily
        mf = cls(self.name, self.help, labels=[k for k, _ in samples[0][0]])
        for labels, _, value in samples:
            mf.add_metric([v for _, v in labels], value)
        return mf


class PointFamily(Family):
    """The points of one (or, with a shared ``metric`` override, several) catalog families."""

    def __init__(self, name: str, mtype: str, help_text: str, factor: float, places: int | None) -> None:
        self.name, self.mtype, self.help = name, mtype, help_text
        self.factor, self.places = factor, places
        inverse = 1.0 / factor if factor else 0.0
        # % -> ratio is a division by 100 (exact), not a multiplication by 0.01 (float noise)
        self.divisor = round(inverse) if factor != 1.0 and abs(inverse - round(inverse)) < 1e-9 else None
        # parallel lists, one item per series: the scrape loop reads them by position
        self.refs: list[PointRef] = []
        self.labels: list[tuple[tuple[str, str], ...]] = []
        self.prefixes: list[str] = []
        self._last: list[Reading | None] = []  # the reading the cached line was formatted from
        self._lines: list[str] = []

    def add(self, mp: MappedPoint) -> bool:
        """Add a point's series; False when its label names differ from the family's."""
        if self.labels and [k for k, _ in self.labels[0]] != [k for k, _ in mp.labels]:
            return False
        self.refs.append(mp.ref)
        self.labels.append(mp.labels)
        self.prefixes.append(series_prefix(self.exported, mp.labels))
        self._last.append(None)
        self._lines.append("")
        return True

    def forget(self) -> None:
        """Drop the formatted lines (the next render formats every series again)."""
        self._last = [None] * len(self.refs)

    def samples(self, ctx):
        snap, good, factor, places = ctx.snapshot, Quality.GOOD, self.factor, self.places
        for ref, labels, prefix in zip(self.refs, self.labels, self.prefixes, strict=True):
            r = snap.get(ref)
            if r is None or r.quality is not good or r.value is None:
                continue
            yield labels, prefix, convert(r.value, factor, places)

    def render(self, ctx, out):
        # The hot loop of a scrape.  Readings are immutable, so a series whose reading is the same object as
        # at the last render reuses its line; the others are formatted exactly as samples() + generate_latest
        # would: convert() inlined, and floatToGoString is repr() for finite values below 1e6.
        from prometheus_client.utils import floatToGoString

        get, good, places, divisor = ctx.snapshot.get, Quality.GOOD, self.places, self.divisor
        scaled = self.factor != 1.0 and divisor is None
        fmt, rep, isfinite = floatToGoString, repr, math.isfinite
        last, cache, prefixes = self._last, self._lines, self.prefixes
        lines: list[str] = []
        append = lines.append
        for i, ref in enumerate(self.refs):
            r = get(ref)
            if r is None or r.quality is not good:
                continue
            if r is last[i]:
                append(cache[i])
                continue
            v = r.value
            if v is None:
                continue
            if scaled:
                v = convert(v, self.factor, places)
            else:
                if divisor is not None:
                    v = v / divisor
                v = float(round(v, places)) if places is not None and isfinite(v) else float(v)
            last[i] = r
            cache[i] = line = prefixes[i] + (rep(v) if _NEG_INF < v < 1e6 else fmt(v)) + "\n"
            append(line)
        if lines:
            out.append(self.header())
            out.append("".join(lines))


class StaticFamily(Family):
    """Info-style gauges whose series never change (site, strings, buses)."""

    def __init__(self, name: str, help_text: str, rows: list[tuple[tuple[str, str], ...]], value: float = 1.0):
        self.name, self.mtype, self.help = name, "gauge", help_text
        self.rows = [(tuple(sorted(r)), series_prefix(name, r), value) for r in rows]

    def samples(self, ctx):
        yield from self.rows


class QualityFamily(Family):
    """How many mapped points have a reading of each quality: stale points are left out of the families
    above, so this tells a dashboard how much is missing."""

    name, mtype = "bms_gateway_points", "gauge"
    help = "Mapped points by the quality of their latest reading (missing = never read)"
    QUALITIES = ("comm_fail", "good", "missing", "out_of_range", "stale")

    def samples(self, ctx):
        qualities = [r.quality for r in ctx.snapshot.values()]
        counts = {q.value.lower(): qualities.count(q) for q in Quality}
        counts["missing"] = max(0, ctx.total_points - len(ctx.snapshot))
        for q in self.QUALITIES:
            labels = (("quality", q),)
            yield labels, series_prefix(self.name, labels), float(counts[q])


class AlarmActiveFamily(Family):
    name, mtype = "bms_alarm_active", "gauge"
    help = "Active alarms (1 per alarm; cleared alarms disappear)"

    def samples(self, ctx):
        for labels in ctx.alarms:
            pairs = tuple(sorted(labels.items()))
            yield pairs, series_prefix(self.name, pairs), 1.0


class AlarmEventsFamily(Family):
    name, mtype = "bms_alarm_events", "counter"
    help = "Alarm raise and clear events since the gateway started, by severity"

    def samples(self, ctx):
        for severity, count in ctx.alarm_events.items():
            labels = (("severity", severity),)
            yield labels, series_prefix(self.exported, labels), float(count)


def help_text(mp: MappedPoint) -> str:
    spec = mp.spec
    text = spec.description.rstrip(". ")
    if spec.unit == "A" and spec.scope in ("string", "cell") and "positive" not in text:
        text += f"; {CURRENT_SIGN}"
    if spec.kind == "state" and spec.states:
        text += " [state: " + ", ".join(f"{v}={label}" for v, label in spec.states) + "]"
    elif spec.unit == "%":
        text += " [ratio 0-1]"
    elif spec.unit in _UNIT_WORDS:
        text += f" [{_UNIT_WORDS[spec.unit]}]"
    elif spec.unit:
        text += f" [{spec.unit}]"
    return text


class ExpositionModel:
    """Every family the gateway exports, in exposition order (sorted by name), built once from the map."""

    def __init__(self, pointmap: PointMap, topology: Topology, site: dict) -> None:
        self.total_points = len(pointmap)
        families: dict[str, Family] = {}
        point_families: dict[str, PointFamily] = {}
        for mp in pointmap.entries:
            name = mp.metric
            mtype = "counter" if mp.spec.kind == "counter" else "gauge"
            base = name[:-len("_total")] if mtype == "counter" and name.endswith("_total") else name
            fam = point_families.get(base)
            if fam is None:
                if not _NAME_RE.match(base):
                    log.warning("point %s: metric name %r is not valid in Prometheus; left out", mp.ref, name)
                    continue
                fam = PointFamily(base, mtype, help_text(mp), mp.metric_factor,
                                  decimals_for(mp.spec.scale, mp.metric_factor))
                point_families[base] = fam
            elif fam.mtype != mtype or fam.factor != mp.metric_factor:
                log.warning("point %s: metric %s is already a %s of another unit; left out", mp.ref, name, fam.mtype)
                continue
            if not fam.add(mp):
                log.warning("point %s: metric %s has other labels elsewhere; left out", mp.ref, name)
        families.update(point_families)
        statics = [
            StaticFamily("bms_gateway_info", "The gateway: software version and site",
                         [(("version", __version__), ("site", str(site.get("id", ""))),
                           ("site_name", str(site["name"])))]),
            StaticFamily("bms_string_info", "Configured battery strings: name and battery model",
                         [(("string", str(s.id)), ("name", s.name), ("battery_model", s.battery.model),
                           ("nominal_voltage", f"{s.battery.nominal_voltage:g}"),
                           ("capacity_ah", f"{s.battery.capacity_ah:g}"), ("batteries", str(s.cells)))
                          for s in topology.strings]),
            StaticFamily("bms_gateway_bus_info", "Configured RS485 buses: name, port and baud rate",
                         [(("bus", str(b.index)), ("name", b.name), ("port", b.port), ("baud", str(b.baud)))
                          for b in topology.buses]),
            QualityFamily(), AlarmActiveFamily(), AlarmEventsFamily(),
        ]
        for static in statics:
            if static.name in families:
                log.warning("metric %s is defined by a point family too; the gateway's own is left out",
                            static.name)
                continue
            families[static.name] = static
        self.families: list[Family] = [families[k] for k in sorted(families, key=lambda n: families[n].exported)]

    def render(self, ctx: RenderContext) -> bytes:
        out: list[str] = []
        for fam in self.families:
            fam.render(ctx, out)
        return "".join(out).encode("utf-8")

    def collect(self, ctx: RenderContext) -> Iterator[Metric]:
        for fam in self.families:
            mf = fam.metric(ctx)
            if mf is not None:
                yield mf


class BankCollector:
    """prometheus-client custom collector over the point store (the reference implementation).

    ``REGISTRY.register(BankCollector(exposition))`` or ``generate_latest(CollectorRegistry()...)``:
    it reads the store at collect time, through the same family model as the fast path.
    """

    def __init__(self, exposition: Exposition, context: Callable[[], RenderContext] | None = None) -> None:
        self.exposition = exposition
        self._context = context or exposition.context

    def collect(self) -> Iterator[Metric]:
        yield from self.exposition.model.collect(self._context())

    def describe(self) -> list[Metric]:
        return []  # families depend on what has been read; no up-front description


class Exposition:
    """The ``/metrics`` text of one gateway, rendered at most once per store generation."""

    def __init__(self, gateway: Gateway) -> None:
        self.store = gateway.store
        self._pointmap, self._topology = gateway.pointmap, gateway.topology
        self.model = ExpositionModel(gateway.pointmap, gateway.topology, gateway.config.section("site"))
        self.alarms = AlarmBoard()
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._body = b""
        self._gzip: bytes | None = None
        self.renders = 0
        self.last_render_s = 0.0

    def set_site(self, site: dict) -> None:
        """A renamed site (a config reload): its labels in the next render."""
        model = ExpositionModel(self._pointmap, self._topology, site)
        with self._lock:
            self.model, self._key = model, None

    def context(self, snapshot: Snapshot | None = None) -> RenderContext:
        active, events = self.alarms.state()
        return RenderContext(self.store.snapshot() if snapshot is None else snapshot, active, events,
                             self.model.total_points)

    def render(self, gzipped: bool = False) -> bytes:
        """The exposition text (gzip-compressed when asked), from the cache when nothing changed."""
        with self._lock:
            key = (self.store.generation, self.alarms.version)
            if key != self._key:
                t0 = time.perf_counter()
                self._body = self.model.render(self.context())
                self._gzip = None
                self._key = key
                self.renders += 1
                self.last_render_s = time.perf_counter() - t0
            if not gzipped:
                return self._body
            if self._gzip is None:
                self._gzip = gzip.compress(self._body, compresslevel=1, mtime=0)
            return self._gzip


def exposition_for(gateway: Gateway) -> Exposition:
    """The gateway's exposition (created on first use; one per gateway, shared by every face)."""
    return gateway.shared(Exposition)


def render_metrics(gateway: Gateway) -> tuple[bytes, str]:
    """``/metrics`` for any face: (body, content type) in the Prometheus text format 0.0.4."""
    return exposition_for(gateway).render(), CONTENT_TYPE


def metrics_response(gateway: Gateway, accept_encoding: str = "") -> tuple[bytes, list[tuple[str, str]]]:
    """Body and headers for a scrape, gzip-compressed when the scraper accepts it (Prometheus does)."""
    gz = "gzip" in (accept_encoding or "").lower()
    body = exposition_for(gateway).render(gzipped=gz)
    headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body))), ("Vary", "Accept-Encoding")]
    if gz:
        headers.append(("Content-Encoding", "gzip"))
    return body, headers


_INDEX = (b"<!doctype html><html><head><title>bmsgw exporter</title></head><body><h1>bmsgw exporter</h1>"
          b'<p><a href="/metrics">Metrics</a></p></body></html>\n')


def make_wsgi_app(gateway: Gateway, path: str = "/metrics") -> Callable:
    """A WSGI application serving ``path`` (GET/HEAD), e.g. to mount in another server."""

    def app(environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        url = environ.get("PATH_INFO", "") or "/"
        if url not in (path, "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found; metrics are at " + path.encode() + b"\n"]
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"method not allowed\n"]
        if url == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [b"" if method == "HEAD" else _INDEX]
        try:
            body, headers = metrics_response(gateway, environ.get("HTTP_ACCEPT_ENCODING", ""))
        except Exception:
            log.exception("rendering /metrics failed")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"rendering the metrics failed; see the gateway's log\n"]
        start_response("200 OK", headers)
        return [b"" if method == "HEAD" else body]

    return app
