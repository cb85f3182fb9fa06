"""Helpers for the web face's tests: a gateway with its web server on a free port, stand-in alarm and
history plugins speaking the hook contract, and an HTTP client that logs in like a browser."""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from gateway.commands import Command
from gateway.hookspecs import hookimpl
from gateway.points import PointRef
from tests.support import GatewayThread, free_port, small_bank, write_config

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
PASSWORD = "correct-horse-42"


class FakeAlarmEngine:
    """The alarm engine's side of the contract (``bmsgw_alarms``, and the ``gateway.acknowledge_alarm`` command
    written through ``Gateway.write``), with a fixed table.

    Also plays the alarm engine's and analytics' part in the store: cell.alarm_level for the alarmed
    batteries and a cell.eol_date forecast for every battery, so the charts have something to colour.
    """

    def __init__(self) -> None:
        now = time.time()
        self.table = {
            "37": {"id": "37", "severity": "critical", "active": True, "raised": now - 600,
                           "point": "cell.ohmic", "string": 1, "cell": 37, "value": 0.0061, "threshold": 0.0058,
                           "rule": "cell_ohmic_baseline_critical",
                           "message": "String 1 battery 37: ohmic value 6.1 mOhm, +34 % over baseline "
                                      "(alarm at +30 %)"},
            "12": {"id": "12", "severity": "warning", "active": True, "raised": now - 300,
                          "point": "cell.voltage", "string": 1, "cell": 12, "value": 13.05, "threshold": 13.1,
                          "message": "String 1 battery 12: voltage 13.05 V, 0.35 V below the string average"},
            "3": {"id": "3", "severity": "warning", "active": False, "raised": now - 86400,
                      "cleared": now - 80000, "message": "Ambient temperature 28.1 C above 27 C"},
        }
        self.acks: list[tuple[str, str]] = []
        self.fail = False

    @hookimpl
    def bmsgw_alarms(self, gateway, active, limit):
        if self.fail:
            raise RuntimeError("alarm table exploded (a test asked it to)")
        rows = [a for a in self.table.values() if a["active"] == active or not active]
        return sorted(rows, key=lambda a: -a["raised"])[:limit]

    @hookimpl
    def bmsgw_commands(self, gateway):
        def acknowledge(ref, value, by):
            alarm_id = str(int(value))
            alarm = self.table.get(alarm_id)
            if alarm is None or not alarm["active"]:
                raise ValueError(f"no active alarm has the number {alarm_id}")
            alarm["acknowledged_by"], alarm["acknowledged"] = by.name, time.time()
            self.acks.append((alarm_id, by.name))
            return f"alarm {alarm_id} acknowledged"

        return [Command("gateway.acknowledge_alarm", acknowledge)]

    def publish(self, gateway) -> None:
        """Alarm levels and forecasts into the store, as the alarm engine and analytics would."""
        now = time.time()
        items = []
        for s in gateway.topology.strings:
            for c in range(1, s.cells + 1):
                level = 2 if (s.id, c) == (1, 37) else 1 if (s.id, c) == (1, 12) else 0
                items.append((PointRef("cell.alarm_level", s.id, c), float(level)))
                years = 3.0 - 2.5 * ((c * 37) % 100) / 100 - (1.2 if c == 37 else 0)
                items.append((PointRef("cell.eol_date", s.id, c), round(now + years * 365 * 86400)))
                items.append((PointRef("cell.eol_date_early", s.id, c), round(now + (years - 0.3) * 365 * 86400)))
                items.append((PointRef("cell.eol_date_late", s.id, c), round(now + (years + 0.3) * 365 * 86400)))
        from gateway.points import Quality, Reading

        gateway.store.put_many([(ref, Reading(v, Quality.GOOD, now)) for ref, v in items])


class FakeHistory:
    """The history module's side of bmsgw_history_query: a synthetic day of samples."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def bmsgw_history_query(self, gateway, ref, start, end, max_points):
        self.calls += 1
        if ref.point != "cell.voltage":
            return None
        n = min(max_points, 200)
        step = (end - start) / n
        return [(start + k * step, 13.5 + 0.01 * (k % 10)) for k in range(n)]


class WebGateway:
    """A running gateway with its web face; ``url`` ends with a slash."""

    def __init__(self, gt: GatewayThread, alarms: FakeAlarmEngine | None) -> None:
        self.gt = gt
        self.gateway = gt.gateway
        self.alarms = alarms
        self.service = gt.gateway.service("web")
        self.ctx = self.service.ctx
        self.url = self.service.url

    def token(self, role: str = "admin") -> str:
        return self.ctx.users.add_token(f"t-{role}-{time.monotonic_ns() % 10**9}", role)[1]

    def user(self, name: str, role: str) -> Client:
        if self.ctx.users.get(name) is None:
            self.ctx.users.add(name, role, PASSWORD)
        return Client(self.url).login(name, PASSWORD)


@contextmanager
def web_gateway(tmp_path: Path, strings: int = 1, cells: int = 8, web: dict | None = None,
                alarms: bool = True, history: FakeHistory | None = None, overrides: dict | None = None):
    port = free_port()
    web_cfg = {"listen": f"127.0.0.1:{port}", "trend_buffer": {"interval_s": 1}, **(web or {})}
    # the real alarm engine and history are off here: these tests drive the web face through fakes of their
    # hooks (tests/test_face_glue.py runs the real ones behind the web face)
    real_off = {"plugins": {"disable": ["gateway.alarms", "gateway.history"]}}
    path = write_config(tmp_path, base=small_bank(strings, cells),
                        overrides={"web": web_cfg, **real_off, **(overrides or {})})
    gt = GatewayThread(path)
    engine = FakeAlarmEngine() if alarms else None
    if engine is not None:
        gt.gateway.pm.register(engine, name="test-alarms")
    if history is not None:
        gt.gateway.pm.register(history, name="test-history")
    with gt:
        if engine is not None:
            engine.publish(gt.gateway)
        yield WebGateway(gt, engine)


class Client(requests.Session):
    """A browser-like session: follows the login form and sends the page's CSRF token on POSTs."""

    def __init__(self, base: str, verify=True) -> None:
        super().__init__()
        self.base = base.rstrip("/")
        self.verify = verify

    def request(self, method, url, *args, **kwargs):
        if url.startswith("/"):
            url = self.base + url
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)

    def csrf(self, page: str = "/login") -> str:
        html = self.get(page).text
        m = re.search(r'name="csrf-token" content="([^"]+)"', html)
        assert m, f"no CSRF token on {page}"
        return m.group(1)

    def login(self, name: str, password: str = PASSWORD) -> Client:
        token = self.csrf("/login")
        r = self.post("/login", data={"csrf": token, "username": name, "password": password}, allow_redirects=False)
        assert r.status_code == 302, (r.status_code, r.text[:500])
        return self

    def form(self, page: str, action: str, data: dict, **kw):
        return self.post(action, data={"csrf": self.csrf(page), **data}, allow_redirects=False, **kw)
