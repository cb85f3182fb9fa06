"""The BACnet/IP face as a gateway service: bacpypes3's stack (stack.py) serving the objects of objects.py.

Reads are answered from the store at request time (store_objects.py): nothing is done while nobody asks.  What
must be pushed -- COV notifications of subscribed objects, the alarm binary-inputs' intrinsic event reporting --
follows the store's change feed: a store batch schedules one pass over the points written since the last pass
that a subscribed or alarm object serves (work proportional to what changed and is watched).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import zlib
from typing import TYPE_CHECKING, Any

from bacpypes3.basetypes import (
    BinaryPV,
    Destination,
    NotifyType,
    ObjectTypesSupported,
    Recipient,
    Reliability,
    Segmentation,
    TimeStamp,
)
from bacpypes3.constructeddata import ArrayOf
from bacpypes3.errors import ExecutionError
from bacpypes3.local.binary import BinaryInputObjectIR
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.object import NotificationClassObject
from bacpypes3.pdu import IPv4Address
from bacpypes3.primitivedata import Null, ObjectIdentifier

from ... import __version__
from ...commands import NotWritable, Principal, WriteDenied, WriteError, WriteFailed, WriteRejected
from ...config import address_allowed, parse_networks
from ...net.server import LogLimiter
from ...points import PointRef
from ...service import ReloadResult, Service, StartError
from .objects import ObjectPlan, plan_objects
from .schema import SECTION
from .stack import MAX_APDU, BoundLinkLayer, GatewayApplication, bind_sockets
from .store_objects import ACTIVE, INACTIVE, NORMAL, BinaryOutput, StoreObject, reliability_of, store_object

if TYPE_CHECKING:
    from ...app import Gateway
    from ...config import Config

log = logging.getLogger(__name__)

NOTIFICATION_CLASS = 1
ArrayOfObjectIdentifier = ArrayOf(ObjectIdentifier)
SERVED_TYPES = ("device", "analogInput", "binaryInput", "binaryOutput", "multiStateInput", "notificationClass",
                "networkPort")
# keys a reload applies to the running application; any other change of the section builds a new one
LIVE_KEYS = {"device", "notifications", "cov", "max_request_values"}
LIVE_WRITE_KEYS = {"allow_from", "role"}


class GatewayDevice(DeviceObject):
    """The library's device object; object-list is kept as one array until the objects change (a client that
    reads it element by element, object-list[1], [2] ..., would otherwise rebuild 1,500 entries per read)."""

    _object_list_cache: Any = None

    @property
    def objectList(self) -> Any:
        if self._object_list_cache is None:
            self._object_list_cache = ArrayOfObjectIdentifier(list(self._app.objectIdentifier) if self._app else [])
        return self._object_list_cache

    @objectList.setter
    def objectList(self, value: Any) -> None:
        """Read-only: the application's objects."""

    @property
    def protocolObjectTypesSupported(self) -> ObjectTypesSupported:
        supported = ObjectTypesSupported([])
        for name in SERVED_TYPES:
            supported[getattr(ObjectTypesSupported, name)] = 1
        return supported

    @protocolObjectTypesSupported.setter
    def protocolObjectTypesSupported(self, value: Any) -> None:
        """Read-only."""


def interface_of(cfg: dict) -> IPv4Address:
    iface = ipaddress.IPv4Interface(cfg["address"])
    return IPv4Address(f"{iface.ip}/{iface.network.prefixlen}:{cfg['port']}")


def device_name(cfg: dict, config: Config) -> str:
    return cfg["device"]["name"] or f"bmsgw-{config.section('site')['id']}"


def database_revision(plans: list[ObjectPlan]) -> int:
    """Changes when the objects do (a BMS re-reads the object list then), the same across restarts."""
    text = "\n".join(f"{p.type},{p.instance},{p.name}" for p in plans)
    return zlib.crc32(text.encode()) & 0xFFFF


class BacnetService(Service):
    """The BACnet/IP device: who-is, reads, COV and alarm reporting over the point store."""

    name = SECTION
    sections = (SECTION, "site")
    face = True

    def __init__(self, gateway: Gateway, cfg: dict) -> None:
        self.gateway = gateway
        self.cfg = cfg
        self.counters = {"requests": 0, "malformed": 0, "dropped_busy": 0, "refused_large": 0,
                         "refused_subscriptions": 0, "rejected": 0, "writes": 0, "refused_writes": 0, "cov_pushes": 0}
        self.malformed_log = LogLimiter(log, "bacnet: undecodable datagrams")
        self.refusals = LogLimiter(log, "bacnet: refused writes")
        self.app: GatewayApplication | None = None
        self.address = interface_of(cfg)
        self.plans: list[ObjectPlan] = []
        self.store_objects: list[StoreObject] = []
        self.alarm_objects: dict[PointRef, list[tuple[ObjectPlan, Any]]] = {}
        self.subscribed: dict[Any, StoreObject] = {}
        self._watch: dict[PointRef, list[Any]] = {}
        self._watch_stale = True
        self._seen = -1  # store generation the last push pass reached
        self._push_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._settings(cfg)

    def _settings(self, cfg: dict) -> None:
        self.write_allow = parse_networks(cfg["writes"]["allow_from"], str(self.gateway.config.path),
                                          f"{SECTION}.writes.allow_from")
        self.write_role = cfg["writes"]["role"]

    # -- building ------------------------------------------------------------------------------------------
    def _device(self, cfg: dict, config: Config, plans: list[ObjectPlan]) -> GatewayDevice:
        dev = cfg["device"]
        return GatewayDevice(
            objectIdentifier=("device", dev["instance"]), objectName=device_name(cfg, config),
            vendorName=dev["vendor_name"], vendorIdentifier=dev["vendor_identifier"], modelName=dev["model_name"],
            firmwareRevision=__version__, applicationSoftwareVersion=__version__, location=dev["location"],
            description=dev["description"] or config.section("site")["name"],
            segmentationSupported=Segmentation.segmentedTransmit, maxApduLengthAccepted=MAX_APDU,
            maxSegmentsAccepted=16, databaseRevision=database_revision(plans))

    def _notification_class(self, cfg: dict) -> NotificationClassObject:
        nc = cfg["notifications"]
        return NotificationClassObject(
            objectIdentifier=("notification-class", NOTIFICATION_CLASS), objectName="Alarm notifications",
            description="Recipients of the alarm binary-inputs' event notifications (bacnet.notifications)",
            notificationClass=NOTIFICATION_CLASS, priority=nc["priority"], ackRequired=[0, 0, 0],
            recipientList=[Destination(validDays=[1] * 7, fromTime=(0, 0, 0, 0), toTime=(23, 59, 59, 99),
                                       recipient=Recipient(address=r["address"]),
                                       processIdentifier=r["process_identifier"],
                                       issueConfirmedNotifications=r["confirmed"], transitions=[1, 1, 1])
                           for r in nc["recipients"]])

    def _alarm_object(self, plan: ObjectPlan) -> BinaryInputObjectIR:
        present, reliability = self._alarm_values(plan)
        never = TimeStamp(time=(255, 255, 255, 255))
        return BinaryInputObjectIR(
            objectIdentifier=(plan.type, plan.instance), objectName=plan.name, description=plan.description,
            presentValue=present, reliability=reliability, eventState=NORMAL, outOfService=False,
            polarity="normal", inactiveText=plan.state_texts[0], activeText=plan.state_texts[1],
            timeDelay=0, timeDelayNormal=0, notificationClass=NOTIFICATION_CLASS, alarmValue=ACTIVE,
            eventEnable=[1, 1, 1], ackedTransitions=[1, 1, 1], notifyType=NotifyType.alarm,
            eventTimeStamps=[never, never, never], eventDetectionEnable=True, eventAlgorithmInhibit=False)

    def _alarm_values(self, plan: ObjectPlan) -> tuple[BinaryPV, Reliability]:
        reading = self.gateway.store.get(plan.ref)
        level = reading.value if reading is not None and reading.value is not None else 0
        active = ACTIVE if plan.alarm_at is not None and level >= plan.alarm_at else INACTIVE
        return active, reliability_of(reading, None, None)

    def _build(self, cfg: dict, config: Config, sockets: tuple[Any, Any]) -> GatewayApplication:
        """A whole application for ``cfg`` on ``sockets`` (bound already); in the running event loop."""
        plans = plan_objects(self.gateway.pointmap, cfg)
        store = self.gateway.store
        objects: list[Any] = [self._device(cfg, config, plans),
                              NetworkPortObject(self.address, objectIdentifier=("network-port", 1),
                                                objectName="BACnet/IP port"),
                              self._notification_class(cfg)]
        store_objects: list[StoreObject] = []
        alarms: dict[PointRef, list[tuple[ObjectPlan, Any]]] = {}
        for plan in plans:
            if plan.alarm_at is not None:
                obj: Any = self._alarm_object(plan)
                alarms.setdefault(plan.ref, []).append((plan, obj))
            else:
                obj = store_object(plan, store)
                store_objects.append(obj)
            objects.append(obj)
        app = GatewayApplication.build(objects, write=self._write, counters=self.counters,
                                       max_request_values=cfg["max_request_values"],
                                       max_subscriptions=cfg["cov"]["max_subscriptions"],
                                       max_lifetime_s=cfg["cov"]["max_lifetime_s"], on_subscribe=self._subscribed)
        link = BoundLinkLayer(self.address, sockets[0], sockets[1], self._malformed)
        app.attach(objects[1], link, self.address)
        self.plans, self.store_objects, self.alarm_objects = plans, store_objects, alarms
        self.subscribed, self._watch_stale = {}, True
        return app

    def _bind(self, address: IPv4Address) -> tuple[Any, Any]:
        try:
            return bind_sockets(address)
        except OSError as exc:
            host, port = address.addrTuple
            raise StartError(f"{SECTION}.address: cannot listen on {host}:{port} (udp): "
                             f"{exc.strerror or exc}") from None

    # -- life cycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        sockets = self._bind(self.address)
        try:
            self.app = self._build(self.cfg, self.gateway.config, sockets)
        except Exception:
            for sock in sockets:
                if sock is not None:
                    sock.close()
            raise
        self._seen = self.gateway.store.generation
        self.gateway.store.subscribe(self._store_batch)
        log.info("bacnet: device %d %r, %d objects", self.cfg["device"]["instance"],
                 device_name(self.cfg, self.gateway.config), len(self.app.objectIdentifier))

    async def stop(self) -> None:
        self.gateway.store.unsubscribe(self._store_batch)
        if self.app is not None:
            self._close(self.app)
            self.app = None

    @staticmethod
    def _close(app: GatewayApplication) -> None:
        for detection in list(app._cov_detections.values()):
            for cov in list(detection.cov_subscriptions):
                app.cancel_subscription(cov)
        app.close()

    async def reload(self, config: Config, changed: frozenset[str]) -> ReloadResult:
        """Device identity, notification recipients, COV and request bounds, the writers allowed: applied to the
        running device.  New objects, cov-increments, writes switched on or off, another address or port: a new
        application takes over (on the same sockets when the address stays), and COV subscriptions start over."""
        result = ReloadResult()
        cfg = config.section(SECTION)
        old = self.cfg
        self._settings(cfg)
        structural = {k for k in cfg if cfg[k] != old[k] and k not in LIVE_KEYS}
        if structural == {"writes"} and {k for k in cfg["writes"] if cfg["writes"][k] != old["writes"][k]} \
                <= LIVE_WRITE_KEYS:
            structural = set()
        if cfg["device"]["instance"] != old["device"]["instance"]:
            structural.add("device")  # the application indexes its objects by identifier: a new device
        if not structural and self.app is not None:
            self._apply_live(self.app, cfg, config)
            self.cfg = cfg
            return result
        address = interface_of(cfg)
        app = self.app
        try:
            if app is not None and address.addrTuple == self.address.addrTuple \
                    and address.addrBroadcastTuple == self.address.addrBroadcastTuple:
                server = app.link_layers[next(iter(app.link_layers))].server
                sockets = (server.local_transport.get_extra_info("socket").dup(),
                           server.broadcast_transport.get_extra_info("socket").dup()
                           if server.broadcast_transport is not None else None)
            else:
                sockets = self._bind(address)
        except StartError as exc:
            result.failed[f"{SECTION}.address"] = f"{exc}; still on {self.endpoints()[0]}"
            return result
        held = sum(len(d.cov_subscriptions) for d in app._cov_detections.values()) if app is not None else 0
        previous = (self.address, self.plans, self.store_objects, self.alarm_objects)
        self.address = address
        try:
            new = self._build(cfg, config, sockets)
        except Exception as exc:
            self.address, self.plans, self.store_objects, self.alarm_objects = previous
            result.failed[SECTION] = f"{exc}; the running device is kept"
            return result
        if app is not None:
            self._close(app)
        self.app, self.cfg = new, cfg
        self._seen = self.gateway.store.generation
        result.notes.append(f"bacnet: a new device application serves {len(new.objectIdentifier)} objects on "
                            f"{self.endpoints()[0]}" + (f"; {held} COV subscription(s) ended, their clients "
                                                        "subscribe again" if held else ""))
        return result

    def _apply_live(self, app: GatewayApplication, cfg: dict, config: Config) -> None:
        device, dev = app.device_object, cfg["device"]
        assert device is not None
        name = device_name(cfg, config)
        if name != device.objectName:  # the application finds objects by name too (Who-Has)
            app.objectName.pop(device.objectName, None)
            device.objectName = name
            app.objectName[name] = device
        for key, prop in (("vendor_name", "vendorName"), ("vendor_identifier", "vendorIdentifier"),
                          ("model_name", "modelName"), ("location", "location")):
            setattr(device, prop, dev[key])
        device.description = dev["description"] or config.section("site")["name"]
        device._object_list_cache = None
        nc = app.get_object_id(ObjectIdentifier(("notification-class", NOTIFICATION_CLASS)))
        fresh = self._notification_class(cfg)
        nc.priority, nc.recipientList = fresh.priority, fresh.recipientList
        app.max_request_values = cfg["max_request_values"]
        app.max_subscriptions = cfg["cov"]["max_subscriptions"]
        app.max_lifetime_s = cfg["cov"]["max_lifetime_s"]

    def status(self) -> dict:
        app = self.app
        if app is None:
            return {}
        return {**self.counters, "listen": self.endpoints()[0], "device_instance": self.cfg["device"]["instance"],
                "objects": len(app.objectIdentifier), "writes_enabled": self.cfg["writes"]["enabled"],
                "cov_subscriptions": sum(len(d.cov_subscriptions) for d in app._cov_detections.values()),
                "open_transactions": len(app.asap.serverTransactions)}

    def endpoints(self) -> list[str]:
        host, port = self.address.addrTuple
        return [f"bacnet://{host}:{port} (device {self.cfg['device']['instance']})"]

    def _malformed(self, pdu: Any, exc: BaseException) -> None:
        self.counters["malformed"] += 1
        self.malformed_log.warning("bacnet: dropped a datagram from %s the stack could not take: %s",
                                   getattr(pdu, "pduSource", "?"), exc)

    # -- pushing COV and alarm changes ---------------------------------------------------------------------
    def _subscribed(self, obj: Any) -> None:
        """A SubscribeCOV was accepted for ``obj``: follow its point from now on."""
        if isinstance(obj, StoreObject) and obj.objectIdentifier not in self.subscribed:
            obj.prime()
            self.subscribed[obj.objectIdentifier] = obj
            self._watch_stale = True

    def _store_batch(self, batch: list) -> None:
        """Store listener (in the writer's context): schedule one push pass."""
        loop = self.loop
        if self._push_scheduled or loop is None or loop.is_closed():
            return
        self._push_scheduled = True
        loop.call_soon_threadsafe(self.push)

    def _watched(self) -> dict[PointRef, list[Any]]:
        app = self.app
        if app is not None:
            for oid in [oid for oid in self.subscribed if oid not in app._cov_detections]:
                self.subscribed.pop(oid)._pushed = None  # subscription ended (cancelled or expired)
                self._watch_stale = True
        if self._watch_stale:
            watch: dict[PointRef, list[Any]] = {ref: [obj for _, obj in pairs]
                                                for ref, pairs in self.alarm_objects.items()}
            for obj in self.subscribed.values():
                watch.setdefault(obj._ref, []).append(obj)
            self._watch, self._watch_stale = watch, False
        return self._watch

    def push(self) -> None:
        """Hand the points written since the last pass to the subscribed and alarm objects that serve them."""
        self._push_scheduled = False
        if self.app is None:
            return
        generation, changed = self.gateway.store.changes_since(self._seen)
        self._seen = generation
        watch = self._watched()
        if not watch:
            return
        if changed is None:
            refs = list(watch)
        elif len(changed) <= len(watch):
            refs = [ref for ref in changed if ref in watch]
        else:
            refs = [ref for ref in watch if ref in changed]
        for ref in refs:
            for obj in watch[ref]:
                if isinstance(obj, StoreObject):
                    if obj.push():
                        self.counters["cov_pushes"] += 1
                else:
                    self._push_alarm(ref, obj)

    def _push_alarm(self, ref: PointRef, obj: Any) -> None:
        plan = next(p for p, o in self.alarm_objects[ref] if o is obj)
        present, reliability = self._alarm_values(plan)
        obj.reliability = reliability  # the library's event algorithm reports what changed
        obj.presentValue = present

    # -- writes --------------------------------------------------------------------------------------------
    async def _write(self, obj: BinaryOutput, apdu: Any, source: Any) -> None:
        """WriteProperty present-value of a binary-output: through ``Gateway.write`` (stack.py refuses the rest)."""
        client = source.addrTuple[0] if hasattr(source, "addrTuple") else str(source)
        if not address_allowed(client, self.write_allow):
            self._refused(obj, client, "client not in bacnet.writes.allow_from")
            raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")
        try:
            value = apdu.propertyValue.cast_out(BinaryPV, null=True)
        except Exception:
            self._refused(obj, client, "not an active / inactive value")
            raise ExecutionError(errorClass="property", errorCode="invalidDataType") from None
        number = 0.0 if isinstance(value, Null) or value == INACTIVE else 1.0
        by = Principal("bacnet", self.write_role, "bacnet", client)
        try:
            await self.gateway.write(obj._ref, number, by)
        except (NotWritable, WriteDenied) as exc:
            self._refused(obj, client, exc)
            raise ExecutionError(errorClass="property", errorCode="writeAccessDenied") from None
        except WriteRejected as exc:
            self._refused(obj, client, exc)
            raise ExecutionError(errorClass="property", errorCode="valueOutOfRange") from None
        except WriteFailed as exc:
            self._refused(obj, client, exc)
            raise ExecutionError(errorClass="device", errorCode="communicationDisabled") from None
        except WriteError as exc:
            self._refused(obj, client, exc)
            raise ExecutionError(errorClass="device", errorCode="operationalProblem") from None
        self.counters["writes"] += 1

    def _refused(self, obj: Any, client: str, why: object) -> None:
        self.counters["refused_writes"] += 1
        self.refusals.warning("bacnet: write to %s by %s refused: %s", obj, client, why)
