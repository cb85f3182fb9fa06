"""HTTP/1.1 for the web and Prometheus faces: h11 on the bounded server, the WSGI application in a thread pool.

Every request is read on the event loop, headers and body, under the bounded server's deadlines; no thread
waits for a slow or silent client.  Only a request that has arrived whole is handed to the application, in a
pool of ``threads`` workers; its answer streams back through the loop (a worker waits only while the client's
socket buffer is full, and that wait ends with ``send_timeout_s``).

The server's own answers (400 malformed, 408 too slow, 413 body too large, 431 head too large, 500 the
application failed before its headers, 503 request memory exhausted) close the connection and carry the face's
``error_headers`` (the web face's security headers).  HEAD, ``Expect: 100-continue``, chunked bodies both ways,
keep-alive and pipelining are h11's; TLS is ``gateway.net.tls``.

Memory: a request body is read whole before the application runs, so the bodies being read at one time are
bounded too: at most four times ``max_request_bytes`` (at least 1 MiB) for the whole server, beyond that a
request with a body gets 503.  Request heads are at most 64 KiB each.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

from ..errors import one_line
from .limits import Limits
from .server import ABORT_AFTER_S, BoundedConnection, BoundedServer
from .tls import TlsSettings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
RESPONSE_CHUNK = 64 * 1024  # application output handed to the loop in pieces of about this size
MIN_BODY_BUDGET = 1024 * 1024

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _ErrorStream:
    """``wsgi.errors``: what an application writes there goes to the log."""

    def __init__(self, face: str) -> None:
        self.face = face

    def write(self, text: str) -> int:
        if text.strip():
            log.warning("%s: %s", self.face, text.rstrip())
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


class HttpServer:
    """A WSGI application served over HTTP/1.1 (and HTTPS) by a ``BoundedServer``."""

    def __init__(self, face: str, app: WsgiApp, *, host: str, port: int, limits: Limits,
                 allow_from: Sequence[Any] = (), threads: int = 4, tls: TlsSettings | None = None,
                 error_headers: Sequence[tuple[str, str]] = (), src: str = "config",
                 listen_key: str | None = None) -> None:
        self.face = face
        self.app = app
        self.threads = threads
        self.scheme = "https" if tls is not None else "http"
        self.error_headers = [(str(k), str(v)) for k, v in error_headers]
        self.server = BoundedServer(face, lambda server: HttpConnection(server, self), host=host, port=port,
                                    limits=limits, allow_from=allow_from, tls=tls, src=src, listen_key=listen_key)
        self.counters = {"requests": 0, "refused_requests": 0, "application_errors": 0}
        self.body_bytes = 0  # request body bytes held by all connections now
        self.errors = _ErrorStream(face)
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        if tls is not None and tls.plaintext_answer is None:
            tls = TlsSettings(tls.context, self.error_response(
                400, "The client sent a plain HTTP request, but this server only speaks HTTPS on this port."))
            self.server.tls = tls

    # -- life cycle --------------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def limits(self) -> Limits:
        return self.server.limits

    async def start(self) -> None:
        """Bind (``BindError`` when the address cannot be bound), then serve."""
        await self.server.start()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads,
                                                          thread_name_prefix=f"{self.face}-http")

    async def stop(self) -> None:
        await self.server.stop()
        if self.pool is not None:
            # requests already running finish on their own; what they write to a closed connection is dropped
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def apply(self, limits: Limits, allow_from: Sequence[Any] = ()) -> int:
        return self.server.apply(limits, allow_from)

    async def rebind(self, host: str, port: int, close_clients: bool = True) -> int:
        return await self.server.rebind(host, port, close_clients)

    def status(self) -> dict[str, Any]:
        return {**self.server.status(), **self.counters}

    @property
    def body_budget(self) -> int:
        return max(MIN_BODY_BUDGET, 4 * self.server.limits.max_request_bytes)

    # -- the server's own answers ------------------------------------------------------------------------------
    def error_response(self, status: int, text: str, body: bool = True) -> bytes:
        payload = (text + "\n").encode("utf-8") if body else b""
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(payload))),
                   ("Cache-Control", "no-store"), ("Connection", "close"), *self.error_headers]
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n" + \
            "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        return head.encode("latin-1") + payload


class HttpConnection(BoundedConnection):
    """One HTTP client: h11 frames requests on the loop; the application runs in the pool."""

    idle_evictable = True  # a server may close a keep-alive connection between requests (RFC 9112, 9.5)

    def __init__(self, server: BoundedServer, http: HttpServer) -> None:
        super().__init__(server)
        self.http = http
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.request: h11.Request | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.eof = False
        self._drained: asyncio.Future[None] | None = None

    # -- reading requests ------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.request_started()
        self.h11.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        if self.closed:
            return None
        if not self.eof:  # (with TLS, the client's close_notify and then the socket's end both say so)
            self.eof = True
            self.h11.receive_data(b"")
        if not self.answering:
            self._process()
        return True if self.answering and not self.closed else None

    def _process(self) -> None:
        while not self.closed and not self.answering:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                hint = exc.error_status_hint
                text = "The request line and headers are too large." if hint == 431 else \
                    f"Malformed request: {one_line(str(exc), 200)}"
                self._refuse(hint, text)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_body(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()

    def _on_request(self, request: h11.Request) -> None:
        self.request, self.body, self.body_size = request, [], 0
        # h11 bounds a head that is still arriving; one that came whole in one read is measured here
        head = len(request.method) + len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers)
        if head > MAX_HEAD_BYTES:
            self._refuse(431, "The request line and headers are too large.")
            return
        length = next((int(v) for k, v in request.headers if k == b"content-length"), None)
        limit = self.server.limits.max_request_bytes
        if length is not None and length > limit:
            self._refuse(413, f"The request body ({length} bytes) is larger than {self.server.face}.limits."
                              f"max_request_bytes ({limit}) allows.")
            return
        if length and self.http.body_bytes + length > self.http.body_budget:
            self._refuse(503, "Too many request bodies are arriving at once; try again shortly.")
            return
        if self.h11.they_are_waiting_for_100_continue:
            self.transport.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))

    def _on_body(self, data: bytes) -> None:
        limit = self.server.limits.max_request_bytes
        if self.body_size + len(data) > limit:
            self._refuse(413, f"The request body is larger than {self.server.face}.limits.max_request_bytes "
                              f"({limit}) allows.")
            return
        if self.http.body_bytes + len(data) > self.http.body_budget:
            self._refuse(503, "Too many request bodies are arriving at once; try again shortly.")
            return
        self.body_size += len(data)
        self.http.body_bytes += len(data)
        self.body.append(data)

    def _release_body(self) -> bytes:
        body = b"".join(self.body)
        self.http.body_bytes -= self.body_size
        self.body, self.body_size = [], 0
        return body

    def _dispatch(self) -> None:
        request = self.request
        assert request is not None
        self.request_complete()
        self.answer_pending()
        self.set_reading_paused(True)  # one request at a time: the next is read once this one is answered
        environ = self._environ(request, self._release_body())
        self.http.counters["requests"] += 1
        pool = self.http.pool
        if pool is None:  # stopping
            self.abort()
            return
        try:
            pool.submit(self._run_app, environ, request.method == b"HEAD")
        except RuntimeError:  # the pool was shut down: the server is stopping
            self.abort()

    def _environ(self, request: h11.Request, body: bytes) -> dict[str, Any]:
        target = request.target
        if target[:1] != b"/" and b"://" in target:  # absolute-form (to a proxy): the path is what counts
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        path, _, query = target.partition(b"?")
        sock = self.transport.get_extra_info("sockname") or (self.server.host, self.server.port)
        peer = self.transport.get_extra_info("peername") or (self.peer, 0)
        env: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"), "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"), "QUERY_STRING": query.decode("latin-1"),
            "REQUEST_URI": target.decode("latin-1"), "RAW_URI": target.decode("latin-1"),
            "SERVER_NAME": str(sock[0]), "SERVER_PORT": str(sock[1]),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_ADDR": self.peer, "REMOTE_PORT": str(peer[1]),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0), "wsgi.url_scheme": self.http.scheme, "wsgi.input": io.BytesIO(body),
            "wsgi.errors": self.http.errors, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "wsgi.input_terminated": True,
        }
        if self.http.scheme == "https":
            env["HTTPS"] = "on"
        for raw_name, raw_value in request.headers:
            name = raw_name.decode("latin-1")
            if "_" in name:  # X_Forwarded would pass for X-Forwarded: dropped, as proxies do
                continue
            key = name.upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if key == "CONTENT_LENGTH":
                continue
            if key != "CONTENT_TYPE":
                key = "HTTP_" + key
            if key in env:
                env[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
            else:
                env[key] = value
        return env

    def _refuse(self, status: int, text: str) -> None:
        """One of the server's own answers, then close (whatever else the client sent is not read)."""
        self.http.counters["refused_requests"] += 1
        log.debug("%s: answering %s to %s: %s", self.server.face, status, self.peer, text)
        head_only = self.request is not None and self.request.method == b"HEAD"
        self.transport.write(self.http.error_response(status, text, body=not head_only))
        self.close()

    def timed_out(self, reason: str) -> None:
        if reason == "request" and not self.answering and self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.http.counters["refused_requests"] += 1
            self.transport.write(self.http.error_response(
                408, f"The request did not arrive in time ({self.server.face}.limits.request_timeout_s)."))
        self.close()

    # -- closing: a worker waiting to write is let go at once ------------------------------------------------
    def close(self) -> None:
        super().close()
        self._wake_writer()

    def abort(self) -> None:
        super().abort()
        self._wake_writer()

    def lost(self, exc: Exception | None) -> None:
        self._release_body()
        self._wake_writer()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the connection was closed"))
            self._drained.exception()  # retrieved: no "never retrieved" warning when nobody waits any more

    # -- the answer (a worker thread runs the application) ---------------------------------------------------
    def _run_app(self, environ: dict[str, Any], head_only: bool) -> None:
        state: dict[str, Any] = {"head": None, "sent": False}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            if exc_info is not None:
                try:
                    if state["sent"]:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif state["head"] is not None:
                raise AssertionError("start_response was called twice")
            state["head"] = (status, headers)
            return write

        pending: list[bytes] = []

        def write(data: bytes) -> None:  # the old WSGI write() callable
            pending.append(bytes(data))

        try:
            result = self.http.app(environ, start_response)
            try:
                size = sum(map(len, pending))
                for chunk in result:
                    if not chunk:
                        continue
                    # what is held goes out when more comes: a body of one piece (most) is handed over once,
                    # with the end of the message, and the worker does not wait for it
                    if size >= RESPONSE_CHUNK and state["head"] is not None:
                        self._hand_over(state, pending, head_only, final=False)
                        pending, size = [], 0
                    pending.append(chunk)
                    size += len(chunk)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if state["head"] is None:
                raise RuntimeError("the application returned without calling start_response")
            self._hand_over(state, pending, head_only, final=True)
        except (ConnectionError, concurrent.futures.TimeoutError):
            pass  # the client went away, or stopped reading, or the gateway stopped: the connection is closed
        except Exception:
            self._application_failed(environ, state["sent"], sys.exc_info())

    def _application_failed(self, environ: dict[str, Any], sent: bool, exc_info: Any) -> None:
        log.error("%s: the application failed on %s %s", self.server.face, environ.get("REQUEST_METHOD"),
                  environ.get("PATH_INFO"), exc_info=exc_info)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway stopped
            self.loop.call_soon_threadsafe(self._answer_failure, sent)

    def _answer_failure(self, sent: bool) -> None:
        self.http.counters["application_errors"] += 1
        if self.closed:
            return
        if sent:
            self.abort()  # half an answer went out: the client must see it broken
        else:
            self._refuse(500, "The server failed to answer this request (see its log).")

    def _hand_over(self, state: dict[str, Any], chunks: list[bytes], head_only: bool, final: bool) -> None:
        """Give the loop the head (once) and ``chunks``; the last piece does not wait, the others wait until the
        client's socket buffer has room (at most send_timeout_s, then the connection is closed)."""
        head = None if state["sent"] else state["head"]
        state["sent"] = True
        if head_only:
            chunks = []
        if self.loop.is_closed():
            raise ConnectionResetError("the gateway stopped")
        try:
            if final:
                self.loop.call_soon_threadsafe(self._write, head, chunks, True)
                return
            writing = self._write_and_drain(head, chunks)
            try:
                done = asyncio.run_coroutine_threadsafe(writing, self.loop)
            except BaseException:
                writing.close()
                raise
        except RuntimeError:  # the loop closed meanwhile
            raise ConnectionResetError("the gateway stopped") from None
        done.result(self.server.limits.send_timeout_s + ABORT_AFTER_S)

    async def _write_and_drain(self, head: tuple[str, list[tuple[str, str]]] | None, chunks: list[bytes]) -> None:
        self._write(head, chunks, False)
        if self.closed:
            raise ConnectionResetError("the connection was closed")
        if self.writing_paused:
            self._drained = self.loop.create_future()
            await self._drained

    def _write(self, head: tuple[str, list[tuple[str, str]]] | None, chunks: list[bytes], final: bool) -> None:
        if self.closed:
            return
        try:
            out: list[bytes] = []
            if head is not None:
                status, headers = head
                out.append(self.h11.send(h11.Response(
                    status_code=int(status[:3]), reason=status[4:].encode("latin-1"),
                    headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers])))
            for chunk in chunks:
                out.extend(self.h11.send_with_data_passthrough(h11.Data(data=chunk)) or [])
            if final:
                out.append(self.h11.send(h11.EndOfMessage()))
        except (h11.LocalProtocolError, ValueError, UnicodeError) as exc:
            # e.g. a body longer than the application's own Content-Length: the client must not trust it
            self.http.counters["application_errors"] += 1
            log.error("%s: the application's answer to %s is not valid HTTP: %s", self.server.face, self.peer, exc)
            if head is not None and not out:
                self._refuse(500, "The server failed to answer this request (see its log).")
            else:
                self.abort()
            return
        self.transport.writelines(out)
        if final:
            self._next_request()

    def _next_request(self) -> None:
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state in (h11.CLOSED, h11.MUST_CLOSE) \
                or self.eof:
            self.close()
            return
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.close()
            return
        self.request = None
        self.answer_sent()
        if self.h11.trailing_data[0]:
            self.request_started()  # a pipelined request is already arriving
        self.set_reading_paused(False)
        self._process()
