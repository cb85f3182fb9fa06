"""TLS for a bounded server, on memory BIOs between the socket and the face's connection.

Not asyncio's own TLS (``create_server(ssl=...)``): that admits a connection only once its handshake is done,
so silent or trickling handshakes would escape the connection limits, and a client that speaks plain HTTP to
the HTTPS port could not be told so.  Here the face's connection is admitted at TCP accept, the handshake runs
under the request deadline like any request (the first byte starts the clock), and a first byte that is not a
TLS handshake record gets ``TlsSettings.plaintext_answer`` in clear, then the connection is closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from .server import BoundedConnection

log = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class TlsSettings:
    context: ssl.SSLContext
    plaintext_answer: bytes | None = None  # for a client that speaks in clear to this port (then closed)

    def __post_init__(self) -> None:
        if self.context.minimum_version < ssl.TLSVersion.TLSv1_2:  # MINIMUM_SUPPORTED is below it too
            self.context.minimum_version = ssl.TLSVersion.TLSv1_2


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert``/``key`` (PEM): TLS 1.2 at least, Python's default ciphers, no
    renegotiation.  Raises OSError / ssl.SSLError when the files cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.load_cert_chain(cert, key)
    return context


class _TlsTransport(asyncio.Transport):
    """What the face's connection sees as its transport: plaintext in, records out."""

    def __init__(self, layer: TlsLayer) -> None:
        super().__init__()
        self._layer = layer

    @property
    def _raw(self) -> asyncio.Transport:
        raw = self._layer.raw
        assert raw is not None, "used before connection_made"
        return raw

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._layer.send(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self._layer.send(data)

    def close(self) -> None:
        self._layer.close()

    def abort(self) -> None:
        if self._layer.raw is not None:
            self._layer.raw.abort()

    def is_closing(self) -> bool:
        return self._layer.raw is None or self._layer.raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._layer.extra_info(name, default)

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return False


class TlsLayer(asyncio.Protocol):
    """The protocol the loop sees for a TLS connection; ``inner`` (the face's connection) sees plaintext."""

    def __init__(self, inner: BoundedConnection, settings: TlsSettings) -> None:
        self.inner = inner
        self.settings = settings
        self.raw: asyncio.Transport | None = None
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = settings.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshaken = False
        self.in_clear = False  # answered in plain text: no TLS shutdown
        self._first = True
        self._transport = _TlsTransport(self)

    # -- from the socket -------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self.inner.connection_made(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def eof_received(self) -> bool | None:
        if not self.handshaken or self.inner.closed:
            return None
        return self.inner.eof_received()

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner.closed or self.raw is None:
            return
        if self._first:
            self._first = False
            if data[0] != TLS_HANDSHAKE_RECORD and self.settings.plaintext_answer is not None:
                self.in_clear = True
                self.raw.write(self.settings.plaintext_answer)
                inner.close()
                return
        if not self.handshaken:
            inner.request_started()  # the handshake runs under the request deadline
        self._incoming.write(data)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                if self._outgoing.pending:  # our part of the handshake goes out: the client's next flight is due
                    inner.client_turn = True
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                log.debug("%s: TLS handshake with %s failed: %s", inner.server.face, inner.peer, exc)
                self._flush()
                inner.close()
                return
            self.handshaken = True
            inner.client_turn = False
            inner.between_requests()
        plain = self._read_plain()
        self._flush()
        if plain and not inner.closed:
            inner.data_received(plain)

    def _read_plain(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.tls.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the client's close_notify: like a half-close
                if self.inner.eof_received() is not True:
                    self.inner.close()
                break
            except (ssl.SSLError, OSError) as exc:
                log.debug("%s: TLS error from %s: %s", self.inner.server.face, self.inner.peer, exc)
                self.inner.abort()
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    # -- to the socket ---------------------------------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.raw is None or self.raw.is_closing():
            return
        if self.in_clear or not self.handshaken:
            return  # nothing to say before the handshake is done (a deadline passed during it)
        try:
            self.tls.write(data)
        except ssl.SSLError as exc:
            log.debug("%s: TLS error writing to %s: %s", self.inner.server.face, self.inner.peer, exc)
            self.raw.abort()
            return
        self._flush()

    def _flush(self) -> None:
        """Send what TLS has for the client."""
        pending = self._outgoing.pending
        if pending and self.raw is not None and not self.raw.is_closing():
            self.raw.write(self._outgoing.read(pending))

    def close(self) -> None:
        if self.raw is None or self.raw.is_closing():
            return
        if self.handshaken and not self.in_clear:
            with contextlib.suppress(ssl.SSLError, OSError):
                self.tls.unwrap()  # our close_notify; the client's is not waited for
            self._flush()
        self.raw.close()

    def extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.tls
        if name == "cipher":
            return self.tls.cipher() if self.handshaken else default
        if name == "peercert":
            return self.tls.getpeercert() if self.handshaken else default
        return self.raw.get_extra_info(name, default) if self.raw is not None else default
