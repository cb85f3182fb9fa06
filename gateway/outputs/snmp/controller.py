"""pysnmp's side of the agent: a MIB instrumentation controller over the OID index.

pysnmp's command responders call ``read_variables`` / ``read_next_variables`` synchronously inside the
event loop; values come straight from the index (the store, through the point map) at request time.
Access control (VACM) is asked for every instance, as pysnmp's own MIB tree does.
"""
from __future__ import annotations

from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error
from pysnmp.smi.instrum import AbstractMibInstrumController

from . import ber
from .tree import OidIndex

_TYPES = {
    ber.INTEGER: rfc1902.Integer32,
    ber.OCTETS: rfc1902.OctetString,
    ber.OID: rfc1902.ObjectIdentifier,
    ber.IPADDRESS: rfc1902.IpAddress,
    ber.COUNTER32: rfc1902.Counter32,
    ber.GAUGE32: rfc1902.Unsigned32,
    ber.TIMETICKS: rfc1902.TimeTicks,
    ber.COUNTER64: rfc1902.Counter64,
}
_EXCEPTIONS = {ber.NO_SUCH_OBJECT: rfc1905.noSuchObject, ber.NO_SUCH_INSTANCE: rfc1905.noSuchInstance,
               ber.END_OF_MIB_VIEW: rfc1905.endOfMibView}


def to_pyasn1(tag: int, value):
    if tag in _EXCEPTIONS:
        return _EXCEPTIONS[tag]
    return _TYPES[tag](value)


class IndexController(AbstractMibInstrumController):
    def __init__(self, index: OidIndex) -> None:
        self.index = index

    @staticmethod
    def _denied(ac_fun, idx: int, name, value, context: dict) -> bool:
        if not ac_fun:
            return False
        context["idx"] = idx
        return bool(ac_fun("read", (name, value), **context))

    def read_variables(self, *varBinds, **context):
        ac_fun = context.get("acFun")
        self.index.refresh()
        out = []
        for idx, (name, _val) in enumerate(varBinds):
            oid = tuple(name)
            value = to_pyasn1(*self.index.get(oid))
            if self._denied(ac_fun, idx, name, value, context):
                value = rfc1905.noSuchObject
            out.append((rfc1902.ObjectName(oid), value))
        return out

    def read_next_variables(self, *varBinds, **context):
        ac_fun = context.get("acFun")
        index = self.index
        index.refresh()
        out = []
        for idx, (name, _val) in enumerate(varBinds):
            oid = tuple(name)
            i = index.after(oid)
            found = None
            while i < len(index.entries):
                value = index.value(i)
                if value is not None:
                    obj = rfc1902.ObjectName(index.entries[i].oid)
                    pyval = to_pyasn1(*value)
                    if not self._denied(ac_fun, idx, obj, pyval, context):
                        found = (obj, pyval)
                        break
                i += 1
            out.append(found or (rfc1902.ObjectName(oid), rfc1905.endOfMibView))
        return out

    def write_variables(self, *varBinds, **context):
        ac_fun = context.get("acFun")
        for idx, (name, value) in enumerate(varBinds):
            if ac_fun:
                context["idx"] = idx
                ac_fun("write", (name, value), **context)  # raises when the view does not allow writing
            raise smi_error.NotWritableError(name=name, idx=idx)
        return []
