"""A face written outside the core, in a plugin folder, gets what every face gets: the life cycle (start, stop,
reload, status, endpoints), the store's change feed, the bounded server's limits, and its section checked with
the rest of the config.  Nothing in the core names it."""
from __future__ import annotations

import importlib
import socket
import time
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.errors import ConfigError
from gateway.plugins import BUILTIN_PLUGINS
from tests.slowclients import SlowClients
from tests.support import GatewayThread, free_port, small_bank, write_config

# One line per request: "GET <json path>" answers the reading; "CHANGES" answers how many of the points it has
# already shown were written since the connection last asked (the change feed, per connection).
LINES_FACE = '''
from gateway.config import parse_listen
from gateway.net.limits import Limits, allow_from, limits_from_section, with_network_keys
from gateway.net.server import BindError, BoundedConnection, BoundedServer
from gateway.service import ReloadResult, Service, face_plugin

DEFAULTS = Limits(max_connections=8, max_connections_per_address=8, idle_timeout_s=60, request_timeout_s=5,
                  send_timeout_s=10, max_request_bytes=256)
SCHEMA = with_network_keys({"type": "object", "additionalProperties": False, "default": {}, "properties": {
    "enabled": {"type": "boolean", "default": True},
    "listen": {"type": "string", "default": "127.0.0.1:0"}}}, DEFAULTS)


class LineConnection(BoundedConnection):
    def opened(self):
        self.buf, self.seen, self.shown = bytearray(), self.server.face_obj.store.generation, set()

    def data_received(self, data):
        self.request_started()
        self.buf += data
        while (end := self.buf.find(b"\\n")) >= 0:
            line, self.buf = bytes(self.buf[:end]).decode(errors="replace").strip(), self.buf[end + 1:]
            self.request_complete()
            self.transport.write(self.server.face_obj.answer(self, line).encode() + b"\\n")
        if self.buf:
            self.request_started()
        if len(self.buf) > self.server.limits.max_request_bytes:
            self.close()


class LinesFace(Service):
    name, sections, face = "lines", ("lines",), True

    def __init__(self, gateway, cfg):
        self.gateway, self.store = gateway, gateway.store
        self.paths = {e.json_path.lstrip("/"): e.ref for e in gateway.pointmap}
        src = str(gateway.config.path)
        host, port = parse_listen(cfg["listen"])
        self.server = BoundedServer("lines", LineConnection, host=host, port=port, src=src,
                                    limits=limits_from_section(cfg, DEFAULTS, "lines", src),
                                    allow_from=allow_from(cfg, "lines", src))
        self.server.face_obj = self

    def answer(self, conn, line):
        verb, _, path = line.partition(" ")
        if verb == "CHANGES":
            conn.seen, changed = self.store.changes_since(conn.seen)
            return str(len(conn.shown) if changed is None else len(conn.shown & changed))
        ref = self.paths.get(path)
        if verb != "GET" or ref is None:
            return "ERR"
        conn.shown.add(ref)
        return repr(self.store.value(ref))

    async def start(self):
        await self.server.start()

    async def stop(self):
        await self.server.stop()

    async def reload(self, config, changed):
        cfg, src, result = config.section("lines"), str(config.path), ReloadResult()
        self.server.apply(limits_from_section(cfg, DEFAULTS, "lines", src), allow_from(cfg, "lines", src))
        host, port = parse_listen(cfg["listen"])
        if (host, port) != (self.server.host, self.server.port):
            try:
                await self.server.rebind(host, port)
            except BindError as exc:
                result.failed["lines.listen"] = exc.message
        return result

    def status(self):
        return self.server.status()

    def endpoints(self):
        return [f"lines://{self.server.host}:{self.server.port}"]


def config_problems(cfg, gateway_config, catalog):
    try:
        parse_listen(cfg["listen"])
    except ValueError as exc:
        return [f"lines.listen: {exc}"]
    return []


bmsgw_config_schema, bmsgw_check_config, bmsgw_services = face_plugin("lines", SCHEMA, LinesFace,
                                                                      check=config_problems)
'''


def config(tmp_path, lines: dict) -> str:
    face = tmp_path / "faces" / "lines_face"
    face.mkdir(parents=True, exist_ok=True)
    (face / "__init__.py").write_text(LINES_FACE)
    base = small_bank(1, 2)
    base.update(plugins={"dirs": [str(face.parent)]}, lines=lines)
    return write_config(tmp_path, base=base)


def ask(port: int, *lines: str) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("".join(f"{line}\n" for line in lines).encode())
        data = b""
        while data.count(b"\n") < len(lines):
            chunk = s.recv(4096)
            assert chunk, f"closed after {data!r}"
            data += chunk
    return data.decode().splitlines()


def test_a_face_from_a_plugin_folder_gets_the_life_cycle_the_change_feed_and_reload(tmp_path):
    port = free_port()
    path = config(tmp_path, {"listen": f"127.0.0.1:{port}"})
    with GatewayThread(path) as gt:
        gw = gt.gateway
        face = gw.service("lines")
        assert f"lines: lines://127.0.0.1:{port}" in gw.endpoints()
        value = ask(port, "GET strings/1/cells/1/voltage")[0]
        assert float(value) == pytest.approx(gw.store.value(face.paths["strings/1/cells/1/voltage"]), abs=0.05)
        # the change feed: the battery voltage it showed is written again by the next poll cycles
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET strings/1/cells/1/voltage\nCHANGES\n")
            generation = gw.store.generation
            gt.wait_for(lambda: gw.store.generation > generation + 5, what="more poll cycles")
            s.sendall(b"CHANGES\n")
            answers = b""
            while answers.count(b"\n") < 3:
                answers += s.recv(4096)
        assert answers.decode().splitlines()[2] == "1"
        assert gw.status()["lines"]["connections"] >= 2
        # reload: a new listen address, applied live (the face moves; the old port is free again)
        new_port = free_port()
        doc = gw.check({**gw.config.data, "lines": {"listen": f"127.0.0.1:{new_port}"}})
        report = gt.call(gw.reload(doc))
        assert report.applied == ["lines"] and report.restart_required == []
        assert ask(new_port, "GET strings/1/voltage")[0] != "ERR"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)
    assert gw.services == {}  # stopped with the gateway


def test_its_section_is_checked_with_the_config_and_a_busy_port_refuses_start_up(tmp_path):
    with pytest.raises(ConfigError, match=r"lines\.listen"):
        Gateway(config(tmp_path, {"listen": "7000"}), simulator=False, port_overrides={"bus1": "x"}).check()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        gt = GatewayThread(config(tmp_path, {"listen": f"127.0.0.1:{busy.getsockname()[1]}"}), wait_points=None)
        try:
            with pytest.raises(ConfigError, match=r"lines\.listen: cannot listen on 127\.0\.0\.1:\d+: Address"):
                gt.start()
        finally:
            gt.stop()


def test_its_bounds_serve_a_client_while_slow_ones_trickle(tmp_path):
    port = free_port()
    path = config(tmp_path, {"listen": f"127.0.0.1:{port}"})
    with GatewayThread(path) as gt, SlowClients(port, b"GET strings/1/volt", b"a", per_address=1) as slow:
        face = gt.gateway.service("lines")
        slow.wait_until(lambda s: s.attempts >= s.count, "every slow client to connect")
        gt.wait_for(lambda: face.status()["open_connections"] >= 8, what="the slow clients to fill the face")
        for _ in range(5):
            t0 = time.monotonic()
            assert ask(port, "GET strings/1/voltage")[0] != "ERR"
            assert time.monotonic() - t0 < 1.0  # a newcomer takes the place of a connection that sent no line
        assert face.status()["evicted"] > 0


FACES = sorted(p for p in (Path(__file__).resolve().parent.parent / "gateway" / "outputs").iterdir()
               if p.is_dir() and not p.name.startswith(("_", ".")))


@pytest.mark.parametrize("folder", FACES, ids=lambda p: p.name)
def test_every_face_is_a_folder_of_the_same_shape(folder):
    """module, schema, README and tests beside it; the package itself holds the plugin's hooks and nothing
    that keeps state (no module-level registry: a face's state is on its service object)."""
    for name in ("__init__.py", "face.py", "schema.py", "README.md"):
        assert (folder / name).is_file(), f"{folder.name}: no {name}"
    assert list((folder / "tests").glob("test_*.py")), f"{folder.name}: no tests beside it"
    init = (folder / "__init__.py").read_text()
    assert "WeakKeyDictionary" not in init and "\nclass " not in init, f"{folder.name}/__init__.py: hooks only"
    assert "= face_plugin(" in init, f"{folder.name}/__init__.py: the face registers through face_plugin"
    assert "docs/faces.md" in (folder / "README.md").read_text()
    module = importlib.import_module(f"gateway.outputs.{folder.name}")
    assert f"gateway.outputs.{folder.name}" in BUILTIN_PLUGINS and hasattr(module, "bmsgw_services")
