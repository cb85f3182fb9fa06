"""Slow clients for the bounded-serving tests of every TCP face: a slow-loris attacker on loopback.

``SlowClients`` opens ``per_address`` connections from each of ``addresses`` (127.0.1.1 ... 127.0.1.50 by
default: Linux routes all of 127/8 to the loopback interface, so each is a client address of its own).  Each
connection sends ``head`` (e.g. half a request header), then one byte of ``trickle`` every ``interval_s``
seconds, and never completes its request.  When the server closes one, it comes back after ``interval_s`` (an
attacker keeps the pressure on; coming back at once would only measure how fast this process can reconnect).
Everything runs on one event loop in a background thread, so 200 connections cost one thread.

    with SlowClients(port, head=b"GET / HTTP/1.1\\r\\nHost: x\\r\\n", trickle=b"X-Pad: 1\\r\\n") as slow:
        slow.wait_until(lambda s: s.attempts >= 200, "every slow client to connect")
        ... time a legitimate request from 127.0.0.1 ...
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

ATTACKER_ADDRESSES: tuple[str, ...] = tuple(f"127.0.1.{i}" for i in range(1, 51))


class SlowClients:
    def __init__(self, port: int, head: bytes, trickle: bytes, *, host: str = "127.0.0.1",
                 addresses: Sequence[str] = ATTACKER_ADDRESSES, per_address: int = 4, interval_s: float = 2.0) -> None:
        if not trickle:
            raise ValueError("trickle must hold at least one byte")
        self.port, self.host, self.head, self.trickle = port, host, head, trickle
        self.sources = [a for a in addresses for _ in range(per_address)]
        self.interval_s = interval_s
        self.attempts = 0  # connections the server accepted (TCP handshake done)
        self.open = 0  # connections open now, as far as the clients know
        self.closed_by_server = 0  # ended by the server (EOF or reset) while the client was still trickling
        self.connect_failures = 0
        self.bytes_sent = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._stopping: asyncio.Event | None = None

    @property
    def count(self) -> int:
        return len(self.sources)

    # -- life cycle --------------------------------------------------------------------------------------------
    def start(self) -> SlowClients:
        ready = threading.Event()
        self._loop.call_soon(ready.set)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)

    def __enter__(self) -> SlowClients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until(self, predicate: Callable[[SlowClients], bool], what: str, timeout: float = 30.0) -> None:
        """Until ``predicate(self)`` holds (checked every 20 ms); AssertionError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.summary()}")
            time.sleep(0.02)

    def summary(self) -> str:
        return (f"{self.attempts} connections made, {self.open} open, {self.closed_by_server} closed by the "
                f"server, {self.connect_failures} failed to connect, {self.bytes_sent} bytes sent")

    # -- the attacker --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        tasks = [asyncio.ensure_future(self._client(source)) for source in self.sources]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self, source: str) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(source, 0))
            except OSError:
                self.connect_failures += 1
                await asyncio.sleep(self.interval_s)
                continue
            self.attempts += 1
            self.open += 1
            try:
                await self._trickle(reader, writer)
            finally:
                self.open -= 1
                writer.transport.abort()
            await asyncio.sleep(self.interval_s)

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.head)
            self.bytes_sent += len(self.head)
            await writer.drain()
            i = 0
            while True:
                try:
                    answer = await asyncio.wait_for(reader.read(4096), self.interval_s)
                except TimeoutError:
                    writer.write(self.trickle[i % len(self.trickle):i % len(self.trickle) + 1])
                    self.bytes_sent += 1
                    i += 1
                    await writer.drain()
                    continue
                if not answer:  # the server closed it (an error answer before that is read and ignored)
                    break
        except OSError:
            pass
        self.closed_by_server += 1
