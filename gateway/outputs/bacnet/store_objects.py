"""BACnet objects answered straight from the point store, in the shape bacpypes3's services expect.

bacpypes3's own local objects (``bacpypes3.local.analog.AnalogInputObject`` ...) keep every property in the
object and cost about 3 ms to create and 0.1 ms to update each on a PC (15-25x that on the controller): for the
1,440 battery objects of the default bank that would be a minute and a half of start-up and seconds of CPU for
every poll cycle.  These objects hold nothing but their plan: a property is computed when a client reads it
(present-value, status-flags and reliability from the point's reading, O(1)), the rest comes from the plan.
They offer what the library's services use -- ``_elements`` (the property types of the library's object class),
``read_property``, ``get_property_type``, ``_property_monitors`` and ``_cov_criteria`` -- so ReadProperty,
ReadPropertyMultiple (``all``, ``required``, ``optional``), SubscribeCOV and every encoding stay the library's.

COV: the library's detection (``COVIncrementCriteria`` for analog-inputs, ``GenericCriteria`` for the others)
watches ``_property_monitors``; the face calls ``push()`` on the objects that have a subscription when the
store's change feed says their point was written, so the work follows what changed and what is watched.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bacpypes3 import object as bacnet_object
from bacpypes3.basetypes import (
    BinaryPV,
    EngineeringUnits,
    EventState,
    OptionalUnsigned,
    Polarity,
    PriorityValue,
    PropertyIdentifier,
    Reliability,
    StatusFlags,
)
from bacpypes3.constructeddata import ArrayOf
from bacpypes3.errors import PropertyError
from bacpypes3.local.cov import COVIncrementCriteria, GenericCriteria
from bacpypes3.primitivedata import Boolean, CharacterString, ObjectIdentifier, ObjectType, Real, Unsigned

from ...points import PointStore, Quality, Reading
from .objects import ANALOG_INPUT, BINARY_INPUT, BINARY_OUTPUT, MULTI_STATE_INPUT, ObjectPlan

ArrayOfCharacterString = ArrayOf(CharacterString)
ArrayOfPropertyIdentifier = ArrayOf(PropertyIdentifier)
ArrayOfPriorityValue = bacnet_object.BinaryOutputObject._elements["priorityArray"]
NOT_IN_PROPERTY_LIST = {"objectIdentifier", "objectName", "objectType", "propertyList"}  # Clause 12.1.1.4.1
COMM_LOST = (Quality.STALE, Quality.COMM_FAIL)
# the enumerations' class attributes are plain ints: these are values the library can encode
NO_FAULT, COMMUNICATION_FAILURE, OVER_RANGE, UNDER_RANGE, UNRELIABLE_OTHER, MULTI_STATE_FAULT = (
    Reliability(r) for r in ("noFaultDetected", "communicationFailure", "overRange", "underRange",
                             "unreliableOther", "multiStateFault"))
NORMAL = EventState("normal")
ACTIVE, INACTIVE = BinaryPV("active"), BinaryPV("inactive")
POLARITY_NORMAL = Polarity("normal")


def reliability_of(reading: Reading | None, low: float | None, high: float | None) -> Reliability:
    """STALE / COMM_FAIL / never read: communication-failure; OUT_OF_RANGE: over- or under-range; no value yet
    (an SOH before its first baseline): unreliable-other."""
    if reading is None or reading.quality in COMM_LOST:
        return COMMUNICATION_FAILURE
    if reading.value is None:
        return UNRELIABLE_OTHER
    if reading.quality is Quality.OUT_OF_RANGE:
        value = reading.value
        if value is not None and high is not None and value > high:
            return OVER_RANGE
        if value is not None and low is not None and value < low:
            return UNDER_RANGE
        return UNRELIABLE_OTHER
    return NO_FAULT


class StoreObject(ABC):
    """A BACnet object whose values are the store's reading of one point (see the module docstring); each kind
    of object (analog, binary, multi-state) says how the reading becomes its present value."""

    _object_class: type = bacnet_object.Object  # the library class whose property types this object serves
    _elements: dict[str, Any] = bacnet_object.Object._elements
    _required: tuple[str, ...] = ("objectIdentifier", "objectName", "objectType", "propertyList", "presentValue",
                                  "statusFlags", "eventState", "outOfService")
    _property_identifier_class = PropertyIdentifier
    _cov_criteria: type = GenericCriteria
    _served: tuple[str, ...] = ()  # the properties this class serves (its propertyList, with the four above)

    def __init__(self, plan: ObjectPlan, store: PointStore) -> None:
        self._plan = plan
        self._store = store
        self._ref = plan.ref
        self._app: Any = None  # set by Application.add_object
        self._property_monitors: defaultdict[str, list[Callable[[Any, Any], None]]] = defaultdict(list)
        self._id = ObjectIdentifier((plan.type, plan.instance))
        self._pushed: tuple[Any, Any] | None = None  # (present-value, status-flags) the monitors last heard

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._plan.type},{self._plan.instance} {self._plan.name!r}>"

    # -- what the library's services call ----------------------------------------------------------------------
    @classmethod
    def get_property_type(cls, attr: Any) -> Any:
        if isinstance(attr, (int, str)):
            attr = PropertyIdentifier(attr)
        return cls._elements.get(attr.attr)

    async def read_property(self, attr: Any, index: int | None = None) -> Any:
        """The value of one property (AttributeError for one this object does not have: unknown-property)."""
        if isinstance(attr, int):
            attr = PropertyIdentifier(attr).attr
        elif not isinstance(attr, str):
            raise AttributeError(attr)
        if attr not in self._served:
            raise AttributeError(f"not a property: {attr!r}")
        value = getattr(self, attr)
        if value is None:
            raise AttributeError(f"not a property: {attr!r}")
        return await self._elements[attr].read_property(getter=lambda: value, index=index)

    async def write_property(self, attr: Any, value: Any, index: int | None = None,
                             priority: int | None = None) -> None:
        raise PropertyError("writeAccessDenied")

    # -- the properties every object has -----------------------------------------------------------------------
    def _reading(self) -> Reading | None:
        return self._store.get(self._ref)

    @property
    def objectIdentifier(self) -> ObjectIdentifier:
        return self._id

    @property
    def objectName(self) -> CharacterString:
        return CharacterString(self._plan.name)

    @property
    def objectType(self) -> ObjectType:
        return ObjectType(self._plan.type)

    @property
    def description(self) -> CharacterString:
        return CharacterString(self._plan.description)

    @property
    def propertyList(self) -> Any:
        return ArrayOfPropertyIdentifier([PropertyIdentifier(p) for p in self._served
                                          if p not in NOT_IN_PROPERTY_LIST and getattr(self, p) is not None])

    @property
    def statusFlags(self) -> StatusFlags:
        return StatusFlags([0, int(self.reliability != NO_FAULT), 0, 0])

    @property
    def eventState(self) -> EventState:
        return NORMAL

    @property
    def reliability(self) -> Reliability:
        return reliability_of(self._reading(), None, None)

    @property
    def outOfService(self) -> Boolean:
        return Boolean(False)

    @property
    @abstractmethod
    def presentValue(self) -> Any: ...

    # -- COV -------------------------------------------------------------------------------------------------
    def prime(self) -> None:
        """Remember the values the library's COV detection starts from (a new subscription)."""
        self._pushed = (self.presentValue, self.statusFlags)

    def push(self) -> bool:
        """Hand changed present-value / status-flags to the property monitors (the COV detection); True when
        something changed.  Called by the face for subscribed objects whose point the change feed names."""
        new = (self.presentValue, self.statusFlags)
        old = self._pushed
        self._pushed = new
        if old is None or old == new:
            return False
        for i, attr in enumerate(("presentValue", "statusFlags")):
            if old[i] != new[i]:
                for fn in list(self._property_monitors.get(attr, ())):
                    fn(old[i], new[i])
        return True


class AnalogInput(StoreObject):
    _object_class = bacnet_object.AnalogInputObject
    _elements = bacnet_object.AnalogInputObject._elements
    _required: tuple[str, ...] = (*StoreObject._required, "units")
    _cov_criteria = COVIncrementCriteria
    _served: tuple[str, ...] = (
        "objectIdentifier", "objectName", "objectType", "propertyList", "description", "presentValue",
        "statusFlags", "eventState", "reliability", "outOfService", "units", "covIncrement", "minPresValue",
        "maxPresValue")

    @property
    def presentValue(self) -> Real:
        reading = self._store.get(self._ref)
        return Real(reading.value if reading is not None and reading.value is not None else 0.0)

    @property
    def reliability(self) -> Reliability:
        plan = self._plan
        return reliability_of(self._store.get(self._ref), plan.min_value, plan.max_value)

    @property
    def units(self) -> EngineeringUnits:
        return EngineeringUnits(self._plan.units)

    @property
    def covIncrement(self) -> Real:
        return Real(self._plan.cov_increment or 0.0)

    @property
    def minPresValue(self) -> Real | None:
        return None if self._plan.min_value is None else Real(self._plan.min_value)

    @property
    def maxPresValue(self) -> Real | None:
        return None if self._plan.max_value is None else Real(self._plan.max_value)


class BinaryInput(StoreObject):
    _object_class = bacnet_object.BinaryInputObject
    _elements = bacnet_object.BinaryInputObject._elements
    _required: tuple[str, ...] = (*StoreObject._required, "polarity")
    _served: tuple[str, ...] = (
        "objectIdentifier", "objectName", "objectType", "propertyList", "description", "presentValue",
        "statusFlags", "eventState", "reliability", "outOfService", "polarity", "inactiveText", "activeText")

    @property
    def presentValue(self) -> BinaryPV:
        reading = self._store.get(self._ref)
        on = reading is not None and reading.value is not None and reading.value != 0
        return ACTIVE if on else INACTIVE

    @property
    def polarity(self) -> Polarity:
        return POLARITY_NORMAL

    @property
    def inactiveText(self) -> CharacterString:
        return CharacterString(self._plan.state_texts[0])

    @property
    def activeText(self) -> CharacterString:
        return CharacterString(self._plan.state_texts[1])


class BinaryOutput(BinaryInput):
    """A writable two-state point (the relay): present-value is the store's reading of it; a WriteProperty of
    present-value is carried out through ``Gateway.write`` by the application (stack.py), which knows the client.
    The gateway is the one authority over the point, so there is no priority arbitration: the priority array
    reads all NULL and a write at any priority takes effect (a NULL, relinquishing, writes relinquish-default)."""

    _object_class = bacnet_object.BinaryOutputObject
    _elements = bacnet_object.BinaryOutputObject._elements
    _required: tuple[str, ...] = (
        *BinaryInput._required, "priorityArray", "relinquishDefault", "currentCommandPriority")
    _served: tuple[str, ...] = (*BinaryInput._served, "priorityArray", "relinquishDefault", "currentCommandPriority")

    @property
    def priorityArray(self) -> Any:
        return ArrayOfPriorityValue([PriorityValue(null=()) for _ in range(16)])

    @property
    def relinquishDefault(self) -> BinaryPV:
        return INACTIVE

    @property
    def currentCommandPriority(self) -> OptionalUnsigned:
        return OptionalUnsigned(null=())


class MultiStateInput(StoreObject):
    _object_class = bacnet_object.MultiStateInputObject
    _elements = bacnet_object.MultiStateInputObject._elements
    _required: tuple[str, ...] = (*StoreObject._required, "numberOfStates")
    _served: tuple[str, ...] = (
        "objectIdentifier", "objectName", "objectType", "propertyList", "description", "presentValue",
        "statusFlags", "eventState", "reliability", "outOfService", "numberOfStates", "stateText")

    def __init__(self, plan: ObjectPlan, store: PointStore) -> None:
        super().__init__(plan, store)
        self._position = {value: i + 1 for i, value in enumerate(plan.state_values)}  # BACnet states count from 1

    @property
    def presentValue(self) -> Unsigned:
        reading = self._store.get(self._ref)
        value = None if reading is None or reading.value is None else int(reading.value)
        return Unsigned(self._position.get(value, 1))  # type: ignore[arg-type]

    @property
    def reliability(self) -> Reliability:
        reading = self._store.get(self._ref)
        reliability = reliability_of(reading, None, None)
        if reliability == NO_FAULT and reading is not None and reading.value is not None \
                and int(reading.value) not in self._position:
            return MULTI_STATE_FAULT  # a value the catalog names no state for
        return reliability

    @property
    def numberOfStates(self) -> Unsigned:
        return Unsigned(len(self._plan.state_values))

    @property
    def stateText(self) -> Any:
        return ArrayOfCharacterString(list(self._plan.state_texts))


CLASSES: dict[str, type[StoreObject]] = {ANALOG_INPUT: AnalogInput, BINARY_INPUT: BinaryInput,
                                         BINARY_OUTPUT: BinaryOutput, MULTI_STATE_INPUT: MultiStateInput}


def store_object(plan: ObjectPlan, store: PointStore) -> StoreObject:
    return CLASSES[plan.type](plan, store)
