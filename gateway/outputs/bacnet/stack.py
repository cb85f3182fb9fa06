"""bacpypes3's BACnet/IP stack, assembled for a gateway: bounded, on sockets bound up front, writes refused but
through ``Gateway.write``.

What differs from ``Application.from_object_list`` and why:

- The UDP sockets are bound here, before the library sees them: the library retries a busy port every second
  forever (and binds with SO_REUSEPORT, so a second gateway would share the port silently); the face contract
  wants start-up to stop with the address and the reason.  The library's datagram server then serves them.
- Confirmed requests held at once are capped (``MAX_TRANSACTIONS``): a flood of requests from forged addresses
  cannot pile up segmentation state machines; past the cap a request is dropped like a lost datagram.
- Segmented requests are refused (segmentation-supported: segmented-transmit): a request is at most one APDU of
  1,476 bytes (a longer one is rejected: buffer-overflow).
  Answers may be segmented, within what the client accepts (the library aborts with
  apdu-too-long or segmentation-not-supported otherwise), and ReadPropertyMultiple asks for at most
  ``max_request_values`` values (``all`` counts every property of its object).
- Writes: WriteProperty reaches ``Gateway.write`` for a binary-output served from the store and is refused for
  everything else (the device's name, the notification class ...); WritePropertyMultiple is refused.
- I-Am messages of other devices are not cached (a stranger could grow the cache without bound); SubscribeCOV
  is capped in number and lifetime.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from bacpypes3.apdu import (
    APDU,
    AbortPDU,
    APCISequence,
    RejectPDU,
    SimpleAckPDU,
    confirmed_request_types,
)
from bacpypes3.app import Application, DeviceInfoCache
from bacpypes3.appservice import ApplicationServiceAccessPoint, ServerSSM
from bacpypes3.basetypes import PropertyIdentifier, ServicesSupported
from bacpypes3.comm import bind
from bacpypes3.errors import APDUTooLong, ExecutionError, RejectException
from bacpypes3.ipv4 import IPv4DatagramServer
from bacpypes3.ipv4.bvll import BVLLCodec
from bacpypes3.ipv4.service import BIPNormal, UDPMultiplexer
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.netservice import NetworkServiceAccessPoint, NetworkServiceElement
from bacpypes3.pdu import IPv4Address

from .store_objects import BinaryOutput, StoreObject

log = logging.getLogger(__name__)

BVLL_TYPE_BIP = 0x81  # the first octet of every BACnet/IP datagram (Annex J)
MAX_APDU = 1476  # BACnet/IP's largest APDU: what the device accepts in one request
MAX_TRANSACTIONS = 64  # confirmed requests being answered at once (each may hold a segmented answer)
SERVICES_EXECUTED = ("readProperty", "readPropertyMultiple", "writeProperty", "subscribeCOV", "whoIs", "whoHas")
WILDCARD_DEVICE = ("device", 4194303)  # "this device", whatever its instance
PROPERTY_ALL = (PropertyIdentifier.all, PropertyIdentifier.required, PropertyIdentifier.optional)


# -- the link layer on sockets bound up front ---------------------------------------------------------------------
def bind_sockets(address: IPv4Address) -> tuple[socket.socket, socket.socket | None]:
    """The unicast socket (exclusive: a busy port raises OSError) and the one that hears the subnet's broadcasts
    (shared with other BACnet applications of the host, as broadcast receivers must be)."""
    host, port = address.addrTuple
    unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        unicast.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        unicast.bind((host, port))
        unicast.setblocking(False)
    except OSError:
        unicast.close()
        raise
    broadcast_host = address.addrBroadcastTuple[0]
    if broadcast_host == host:
        return unicast, None
    broadcast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        broadcast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        broadcast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        broadcast.bind((broadcast_host, port))
        broadcast.setblocking(False)
    except OSError:
        broadcast.close()
        unicast.close()
        raise
    return unicast, broadcast


class BoundDatagramServer(IPv4DatagramServer):
    """The library's UDP server on the two sockets bound by ``bind_sockets``.  A datagram the stack cannot make
    sense of is counted (and logged now and then), not logged as an error each time."""

    def __init__(self, address: IPv4Address, unicast: socket.socket, broadcast: socket.socket | None,
                 on_malformed: Callable[[Any, BaseException], None]) -> None:
        super().__init__(address, no_broadcast=True, bind_socket=unicast)
        self.on_malformed = on_malformed
        if broadcast is not None:
            loop = asyncio.get_running_loop()
            self.broadcast_address = address.addrBroadcastTuple
            task = loop.create_task(self.retrying_create_datagram_endpoint(loop, self.broadcast_address,
                                                                           bind_socket=broadcast))
            task.add_done_callback(functools.partial(self.set_broadcast_transport_protocol, address))
            self._transport_tasks.append(task)

    async def confirmation(self, pdu: Any) -> None:
        if pdu.pduSource.addrTuple == self.local_address:
            return  # our own broadcast, heard back
        if not pdu.pduData or pdu.pduData[0] != BVLL_TYPE_BIP:
            # not BACnet/IP (Annex H tunnelling is not served): counted here, where the library would log a
            # warning for each one (a flood of them would flood the log)
            self.on_malformed(pdu, ValueError("not a BACnet/IP (BVLL 0x81) datagram"))
            return
        try:
            await self.response(pdu)
        except Exception as exc:  # anything a datagram can make the stack raise: the datagram is dropped
            self.on_malformed(pdu, exc)


class BoundLinkLayer(BIPNormal):
    """``bacpypes3.ipv4.link.NormalLinkLayer`` (BVLL codec, Annex J multiplexer, UDP) on our sockets."""

    def __init__(self, address: IPv4Address, unicast: socket.socket, broadcast: socket.socket | None,
                 on_malformed: Callable[[Any, BaseException], None]) -> None:
        BIPNormal.__init__(self)
        self.codec = BVLLCodec()
        self.multiplexer = UDPMultiplexer()
        self.server = BoundDatagramServer(address, unicast, broadcast, on_malformed)
        bind(self, self.codec, self.multiplexer.annexJ)
        bind(self.multiplexer, self.server)

    def close(self) -> None:
        self.server.close()


# -- the application layer ----------------------------------------------------------------------------------------
class RejectingServerSSM(ServerSSM):
    """The library's server transaction, which answers a confirmed request it cannot decode with a reject
    (unrecognized-service for a service it has no class for, invalid-tag or the decoder's own reason otherwise).
    The library (0.0.110) hands the application an abort instead, which nobody answers: the client retries until
    it times out and the transaction is held until the application timeout."""

    async def request(self, apdu: Any) -> None:
        if isinstance(apdu, AbortPDU):
            await super().request(apdu)
            return
        try:
            xpdu = APCISequence.decode(apdu)
        except Exception as exc:
            if apdu.apduService not in confirmed_request_types:
                reason = "unrecognizedService"
            elif isinstance(exc, RejectException):
                reason = exc.rejectReason
            else:
                reason = "invalidTag"
            self.ssmSAP.counters["rejected"] += 1
            await self.confirmation(RejectPDU(invoke_id=self.invokeID, reason=reason))
            return
        xpdu.pduSource = self.pdu_address
        xpdu.pduDestination = None
        await self.ssmSAP.sap_request(xpdu)


class BoundedServiceAccessPoint(ApplicationServiceAccessPoint):
    def __init__(self, *args: Any, counters: dict[str, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters = counters

    async def confirmation(self, pdu: Any) -> None:
        """Confirmed requests as the library takes them (a server transaction each), with ours: at most
        ``MAX_TRANSACTIONS`` at once, undecodable ones rejected.  Everything else: the library's way."""
        data = pdu.pduData
        if not data or data[0] >> 4 != 0:
            await super().confirmation(pdu)
            return
        if len(self.serverTransactions) >= MAX_TRANSACTIONS:
            self.counters["dropped_busy"] += 1  # a new confirmed request while MAX_TRANSACTIONS are open
            return
        apdu = APDU.decode(pdu)
        if not apdu.apduSeg and len(data) > MAX_APDU:
            # longer than the device accepts (its I-Am says so): buffer-overflow, with no transaction
            self.counters["rejected"] += 1
            reject = RejectPDU(invoke_id=apdu.apduInvokeID, reason="bufferOverflow")
            reject.pduDestination = apdu.pduSource
            await self.request(reject)
            return
        for tr in self.serverTransactions:
            if apdu.apduInvokeID == tr.invokeID and apdu.pduSource == tr.pdu_address:
                break
        else:
            tr = RejectingServerSSM(self, apdu.pduSource)
            self.serverTransactions.append(tr)
        await tr.indication(apdu)


WriteHandler = Callable[[BinaryOutput, Any, Any], Awaitable[None]]


class GatewayApplication(Application):
    """``bacpypes3.app.Application`` with the bounds and the write path of this face (module docstring)."""

    def __init__(self, *, write: WriteHandler, counters: dict[str, int], max_request_values: int,
                 max_subscriptions: int, max_lifetime_s: int, on_subscribe: Callable[[Any], None]) -> None:
        super().__init__(device_info_cache=DeviceInfoCache())
        self.write_handler = write
        self.counters = counters
        self.max_request_values = max_request_values
        self.max_subscriptions = max_subscriptions
        self.max_lifetime_s = max_lifetime_s
        self.on_subscribe = on_subscribe

    @classmethod
    def build(cls, objects: list[Any], **kwargs: Any) -> GatewayApplication:
        """What ``Application.from_object_list`` does, with the bounded service access point (no link layer yet:
        ``attach``)."""
        device = objects[0]
        app = cls(**kwargs)
        app.asap = BoundedServiceAccessPoint(device, app.device_info_cache, counters=app.counters)
        app.nsap = NetworkServiceAccessPoint()
        app.nse = NetworkServiceElement()
        bind(app.nse, app.nsap)
        bind(app, app.asap, app.nsap)
        for obj in objects:
            app.add_object(obj)
        return app

    def add_object(self, obj: Any) -> None:
        # a network-port object describes the port; its link layer is ours (attach), never one made here
        if isinstance(obj, NetworkPortObject):
            self.objectName[obj.objectName] = obj
            self.objectIdentifier[obj.objectIdentifier] = obj
            obj._app = self
            return
        super().add_object(obj)

    def attach(self, port_object: Any, link: BoundLinkLayer, address: IPv4Address) -> None:
        self.link_layers[port_object.objectIdentifier] = link
        self.nsap.bind(link, address=address)

    def get_services_supported(self) -> ServicesSupported:
        """The services this device executes (the library's introspection also names the client-side ones and
        misreads the unconfirmed ones)."""
        supported = ServicesSupported([])
        for name in SERVICES_EXECUTED:
            supported[getattr(ServicesSupported, name)] = 1
        return supported

    async def indication(self, apdu: Any) -> None:
        self.counters["requests"] += 1
        await super().indication(apdu)

    async def response(self, apdu: Any) -> None:
        """The library builds the abort of an ``AbortException`` without the server flag, so the client takes it
        for an abort of a transaction of its own and ignores it (0.0.110): every abort sent here is a server's."""
        if isinstance(apdu, AbortPDU) and not apdu.apduSrv:
            apdu.apduSrv = True
        await super().response(apdu)

    # -- bounds ----------------------------------------------------------------------------------------------
    async def do_IAmRequest(self, apdu: Any) -> None:
        """Other devices' I-Am: not cached (we ask nobody anything by device instance)."""

    async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:
        """Counted before it is answered (``max_request_values``).  `all`, `required` or `optional` of an object
        that does not exist is asked as its object-identifier: the library (0.0.110) raises on it when another
        object of the request exists, where the answer is an unknown-object error for that object."""
        values = 0
        for spec in apdu.listOfReadAccessSpecs:
            oid = spec.objectIdentifier
            obj = self.device_object if oid == WILDCARD_DEVICE else self.get_object_id(oid)
            for ref in spec.listOfPropertyReferences:
                if ref.propertyIdentifier not in PROPERTY_ALL:
                    values += 1
                elif obj is not None:
                    values += len(getattr(obj, "_served", None) or obj._elements)
                else:
                    ref.propertyIdentifier = PropertyIdentifier.objectIdentifier
                    ref.propertyArrayIndex = None
                    values += 1
        if values > self.max_request_values:
            self.counters["refused_large"] += 1
            raise APDUTooLong()
        await super().do_ReadPropertyMultipleRequest(apdu)

    async def do_SubscribeCOVRequest(self, apdu: Any) -> None:
        cancel = apdu.issueConfirmedNotifications is None and apdu.lifetime is None
        if not cancel:
            if apdu.lifetime is None:
                raise ExecutionError(errorClass="services", errorCode="missingRequiredParameter")
            if apdu.lifetime == 0 or apdu.lifetime > self.max_lifetime_s:
                apdu.lifetime = self.max_lifetime_s  # no indefinite subscriptions from strangers: renew
            held = sum(len(d.cov_subscriptions) for d in self._cov_detections.values())
            detection = self._cov_detections.get(apdu.monitoredObjectIdentifier)
            renewal = detection is not None and any(
                c.client_addr == apdu.pduSource and c.proc_id == apdu.subscriberProcessIdentifier
                for c in detection.cov_subscriptions)
            if held >= self.max_subscriptions and not renewal:
                self.counters["refused_subscriptions"] += 1
                raise ExecutionError(errorClass="resources", errorCode="noSpaceToAddListElement")
        await super().do_SubscribeCOVRequest(apdu)
        obj = self.get_object_id(apdu.monitoredObjectIdentifier)
        if not cancel and obj is not None:
            self.on_subscribe(obj)

    # -- writes ----------------------------------------------------------------------------------------------
    async def do_WritePropertyRequest(self, apdu: Any) -> None:
        obj = self.get_object_id(apdu.objectIdentifier)
        if obj is None:
            raise ExecutionError(errorClass="object", errorCode="unknownObject")
        if not isinstance(obj, BinaryOutput) or apdu.propertyIdentifier != PropertyIdentifier.presentValue:
            self.counters["refused_writes"] += 1
            raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")
        if apdu.propertyArrayIndex is not None:
            raise ExecutionError(errorClass="property", errorCode="propertyIsNotAnArray")
        await self.write_handler(obj, apdu, apdu.pduSource)
        await self.response(SimpleAckPDU(context=apdu))

    async def do_WritePropertyMultipleRequest(self, apdu: Any) -> None:
        self.counters["refused_writes"] += 1
        raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")


def is_store_object(obj: Any) -> bool:
    return isinstance(obj, StoreObject)
