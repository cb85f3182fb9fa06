"""HTTP/1.1 on the bounded server (gateway/net/http.py), with a small WSGI app: what a client sees.

HEAD, 100-continue, chunked bodies both ways, keep-alive and pipelining, Connection: close; the server's own
answers (400, 408, 413, 431, 500) with the face's headers; a client that does not read its answer frees its
worker; HTTPS (a plain request to it, TLS 1.1 refused).  Raw sockets, so the bytes on the wire are checked.
"""
from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time

import pytest

from gateway.net.http import HttpServer
from gateway.net.limits import Limits
from gateway.net.tls import TlsSettings, server_context
from tests.fuzz.netcheck import recv_until_closed
from tests.test_net_server import LoopThread, wait_for

FACE_HEADERS = [("X-Content-Type-Options", "nosniff"), ("X-Face", "test")]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body))),
                                  ("X-Length-Seen", environ["CONTENT_LENGTH"])])
        return [body]
    if path == "/chunks":  # no Content-Length: chunked to an HTTP/1.1 client
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part %d;" % i for i in range(5))
    if path == "/big":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(8 * 2 ** 20))])
        return (b"x" * 2 ** 20 for _ in range(8))
    if path == "/boom":
        raise RuntimeError("the application broke (a test asked it to)")
    if path == "/env":
        text = f"{environ['REQUEST_METHOD']} {path} {environ['QUERY_STRING']} {environ['REMOTE_ADDR']} " \
               f"{environ['wsgi.url_scheme']} {environ.get('HTTP_X_A', '-')}"
        body = text.encode()
    else:
        body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def serve():
    lt = LoopThread()
    servers = []

    def start(tls: TlsSettings | None = None, threads: int = 2, application=app, **limits):
        defaults = {"max_connections": 16, "max_connections_per_address": 16, "idle_timeout_s": 30,
                    "request_timeout_s": 10, "send_timeout_s": 10, "max_request_bytes": 4096}
        server = HttpServer("test", application, host="127.0.0.1", port=0, limits=Limits(**{**defaults, **limits}),
                            threads=threads, tls=tls, error_headers=FACE_HEADERS)
        lt.call(server.start())
        servers.append(server)
        return server

    yield start
    for server in servers:
        lt.call(server.stop())
    lt.close()


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return recv_until_closed(s, 10)


def head_of(answer: bytes) -> tuple[str, dict[str, str]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return head[0], {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}


def test_get_head_keep_alive_pipelining_and_close(serve):
    server = serve()
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request("GET", "/env?x=1", headers={"X-A": "b"})
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"GET /env x=1 127.0.0.1 http b"
    c.request("HEAD", "/")  # the same connection (keep-alive)
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Length") == "5" and r.read() == b""
    c.close()
    # two requests in one segment: two answers, in order; the second asks to close, and the server does
    answer = exchange(server.port, b"GET /env?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                   b"GET /env?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 ") == 2 and answer.index(b"n=1") < answer.index(b"n=2")
    # an HTTP/1.0 client gets its answer, then the connection closes
    assert exchange(server.port, b"GET / HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nhello")
    assert server.status()["requests"] == 5


def test_a_pipelined_request_is_read_once_the_one_before_is_answered(serve):
    """While the application works on a request the connection's reads are paused (a client cannot pile up
    requests in the server); once the answer is sent they resume and the pipelined request is answered."""
    release = threading.Event()

    def held_app(environ, start_response):
        if environ["PATH_INFO"] == "/hold":
            release.wait(10)
        return app(environ, start_response)

    server = serve(application=held_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\nGET /env?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_for(lambda: any(c.reading_paused for c in server.server.connections), what="reads paused")
        release.set()
        answer = recv_until_closed(s, 10)
    assert answer.count(b"HTTP/1.1 200 ") == 2 and answer.endswith(b"n=2 127.0.0.1 http -")
    assert server.status()["requests"] == 2


def test_chunked_both_ways_and_100_continue(serve):
    server = serve()
    answer = exchange(server.port, b"GET /chunks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers = head_of(answer)
    assert headers["transfer-encoding"] == "chunked" and answer.endswith(b"0\r\n\r\n")
    assert b"part 0;" in answer and b"part 4;" in answer
    # a chunked request body reaches the app whole, with its length
    answer = exchange(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                   b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, headers = head_of(answer)
    assert answer.endswith(b"hello world") and headers["x-length-seen"] == "11"
    # Expect: 100-continue: the interim answer comes before the body is sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
                  b"Connection: close\r\n\r\n")
        interim = s.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        s.sendall(b"abc")
        assert recv_until_closed(s, 10).endswith(b"\r\n\r\nabc")


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),  # over max_request_bytes: not read
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"800\r\n" + b"a" * 2048 + b"\r\n") * 3
     + b"0\r\n\r\n", 413),  # chunked, over it as it arrives
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n", 500),
])
def test_the_servers_own_answers_carry_the_face_headers_and_close(serve, request_bytes, status, caplog):
    server = serve()
    with caplog.at_level(logging.ERROR):
        answer = exchange(server.port, request_bytes)
    line, headers = head_of(answer)
    assert line.startswith(f"HTTP/1.1 {status} "), answer[:200]
    assert headers["x-face"] == "test" and headers["x-content-type-options"] == "nosniff"
    assert headers["connection"] == "close" and headers["cache-control"] == "no-store"
    if status == 500:
        assert "the application failed on GET /boom" in caplog.text


def test_a_request_that_does_not_arrive_in_time_gets_408(serve):
    server = serve(request_timeout_s=0.5)
    t0 = time.monotonic()
    answer = exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert time.monotonic() - t0 < 5
    line, headers = head_of(answer)
    assert line.startswith("HTTP/1.1 408 ") and headers["x-face"] == "test"
    assert server.status()["timed_out"] == 1


def test_a_slow_client_holds_no_worker_and_a_non_reading_one_frees_its_worker(serve):
    server = serve(threads=1, send_timeout_s=0.5)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a request still arriving: no worker is taken
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    c.request("GET", "/")
    assert c.getresponse().read() == b"hello"
    # 8 MiB asked for and never read: the only worker waits for the client, then the send deadline frees it
    greedy = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: server.status()["timed_out"] == 1, "the send deadline")
    c.request("GET", "/")
    assert c.getresponse().read() == b"hello"
    for s in (slow, greedy):
        s.close()
    c.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    from gateway.outputs.web.tlscert import ensure_self_signed

    return ensure_self_signed(tmp_path_factory.mktemp("tls"), "127.0.0.1")


def client_context(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_https_plain_http_to_it_and_old_tls(serve, tls_files):
    cert, key = tls_files
    server = serve(tls=TlsSettings(server_context(str(cert), str(key))), request_timeout_s=1)
    c = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=client_context())
    c.request("GET", "/env")
    assert c.getresponse().read().endswith(b" https -")
    c.request("GET", "/")  # keep-alive over TLS
    assert c.getresponse().read() == b"hello"
    c.close()
    answer = exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"only speaks HTTPS" in answer and b"X-Face: test" in answer
    old = client_context(maximum=ssl.TLSVersion.TLSv1_1)
    with pytest.raises((ssl.SSLError, ConnectionResetError)), \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        old.wrap_socket(raw).close()
    # a handshake that stops half-way is closed by the request deadline
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        t0 = time.monotonic()
        recv_until_closed(s, 10)
        assert time.monotonic() - t0 < 5
    wait_for(lambda: server.status()["open_connections"] == 0, "every connection to close")


def test_stopping_the_server_while_a_request_runs_is_quiet(serve, caplog):
    release = threading.Event()

    def slow_app(environ, start_response):
        release.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    lt = LoopThread()
    server = HttpServer("test", slow_app, host="127.0.0.1", port=0, limits=Limits(), threads=1)
    lt.call(server.start())
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: server.status()["requests"] == 1, "the request to reach the app")
    with caplog.at_level(logging.ERROR):
        lt.call(server.stop())
        release.set()
        assert recv_until_closed(s, 10) == b""
        lt.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    s.close()
