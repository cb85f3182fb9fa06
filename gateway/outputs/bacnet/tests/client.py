"""A BACnet client for the tests and the bench: bacpypes3's own Application, on 127.0.0.1 and a free UDP port of
its own, running its event loop in a background thread (the gateway runs in another one)."""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from bacpypes3.apdu import ErrorRejectAbortNack, UnconfirmedEventNotificationRequest, WhoIsRequest
from bacpypes3.app import Application
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EventCatcher(Application):
    """The library's client, also keeping the event notifications it is sent (a BMS workstation would)."""

    events: list

    async def do_UnconfirmedEventNotificationRequest(self, apdu: UnconfirmedEventNotificationRequest) -> None:
        self.events.append(apdu)


class BacnetClient:
    """``with BacnetClient() as c: c.run(c.app.read_property(...))``."""

    def __init__(self, instance: int = 4000001) -> None:
        self.port = free_udp_port()
        self.instance = instance
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bacnet-client", daemon=True)
        self.app: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> BacnetClient:
        self.thread.start()

        async def build():
            device = DeviceObject(objectIdentifier=("device", self.instance), objectName="test client",
                                  vendorIdentifier=999, maxApduLengthAccepted=1476)  # BACnet/IP's largest
            port = NetworkPortObject(f"127.0.0.1/8:{self.port}", objectIdentifier=("network-port", 1),
                                     objectName="client port")
            app = EventCatcher.from_object_list([device, port])
            app.events = []
            return app

        self.app = self.run(build())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.run(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    async def _close(self) -> None:
        self.app.close()
        await asyncio.sleep(0)

    def run(self, coro, timeout: float = 60.0):
        """The coroutine's result in the client's loop; an error, reject or abort answer is returned, not raised."""
        async def answer():
            try:
                return await coro
            except ErrorRejectAbortNack as exc:
                return exc

        return asyncio.run_coroutine_threadsafe(answer(), self.loop).result(timeout)

    def who_is(self, port: int, instance: int, timeout: float = 5.0) -> list:
        """A Who-Is for ``instance`` broadcast to 127.255.255.255:``port`` (the loopback subnet's broadcast at
        the device's port); the I-Am answers that came back."""
        async def go():
            found = self.app.who_is(instance, instance, timeout=timeout)
            self.app.request(WhoIsRequest(destination=Address(f"127.255.255.255:{port}"),
                                          deviceInstanceRangeLowLimit=instance,
                                          deviceInstanceRangeHighLimit=instance))
            return await found

        return self.run(go())

    def read(self, port: int, objid: str, prop: str) -> Any:
        return self.run(self.app.read_property(Address(f"127.0.0.1:{port}"), objid, prop))

    def rpm(self, port: int, spec: list) -> Any:
        """ReadPropertyMultiple; ``spec``: [(objid, [props]), ...]; a list of (objid, prop, index, value)."""
        flat = [x for objid, props in spec for x in (objid, props)]
        return self.run(self.app.read_property_multiple(Address(f"127.0.0.1:{port}"), flat))

    def write(self, port: int, objid: str, prop: str, value: Any, priority: int | None = None) -> Any:
        return self.run(self.app.write_property(Address(f"127.0.0.1:{port}"), objid, prop, value,
                                                priority=priority))
