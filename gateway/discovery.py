"""Finding the configured sensors on their buses: a discovery scan compared with the configuration, and the
search, while a sensor is lost, for one that answers at another address (a replaced sensor set to a different
address), adopted when it cannot be anyone else.  The wire work is ``scan.py``'s; the polling is the engine's."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .modbus.transport import PortError
from .scan import parse_ids, scan_bus

if TYPE_CHECKING:
    from .engine import BusState, DeviceState, Engine

log = logging.getLogger("gateway.engine")  # said where the engine's other bus messages are


@dataclass(frozen=True, slots=True)
class DiscoveryReport:
    """What a discovery scan of one bus found, compared with the configured devices."""

    bus: str
    found: dict[int, str | None]  # address -> profile name (None: answers, but matches no profile)
    matching: tuple[int, ...]  # configured and identified as configured
    missing: tuple[int, ...]  # configured, no answer
    wrong_model: dict[int, str | None]  # configured address answering as another model
    unconfigured: dict[int, str | None]  # answering, not in the config
    adopted: dict[int, int]  # configured address -> address it now answers at (readdressed sensor)

    def as_dict(self) -> dict:
        return {"found": len(self.found), "matching": len(self.matching), "missing": list(self.missing),
                "wrong_model": {str(k): v for k, v in self.wrong_model.items()},
                "unconfigured": {str(k): v for k, v in self.unconfigured.items()},
                "adopted": {str(k): v for k, v in self.adopted.items()}}


class Discovery:
    """The engine's discovery and search, on its buses and with its ``gateway.discovery`` settings."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def discover(self, ids: str | None = None) -> dict[str, DiscoveryReport]:
        """Scan every bus (in parallel) for ``ids`` (default: the config's ``gateway.discovery.ids``), compare
        with the configured devices, and adopt unambiguously readdressed sensors.  One report per bus."""
        await self.engine.open()
        reports = await asyncio.gather(*(self.discover_bus(name, ids) for name in self.engine.buses))
        return dict(zip(self.engine.buses, reports, strict=True))

    async def discover_bus(self, name: str, ids: str | None = None) -> DiscoveryReport:
        bs = self.engine.buses[name]
        transport = self.engine._open_bus(bs)
        if transport is None:
            raise PortError(bs.open_error)
        wanted = parse_ids(ids or self.engine.discovery["ids"])
        # silence from ids nobody uses is what a scan expects: it is not a communication fault
        found = await scan_bus(transport, self.engine.profiles, wanted, counted=False)
        report = self.compare(bs, {f.address: (f.profile.name if f.profile else None) for f in found}, set(wanted))
        bs.discovery = report.as_dict()
        log.info("bus %s: discovery found %d devices, %d as configured", name, len(report.found), len(report.matching))
        for addr in report.missing:
            log.warning("bus %s: configured address %d does not answer", name, addr)
        for addr, prof in report.wrong_model.items():
            log.warning("bus %s: address %d answers as %s, not as configured", name, addr, prof or "an unknown model")
        for addr, prof in report.unconfigured.items():
            log.warning("bus %s: address %d (%s) answers but is not configured", name, addr, prof or "unknown model")
        for old, new in report.adopted.items():
            log.warning("bus %s: the sensor configured at address %d now answers at %d; polling it there",
                        name, old, new)
        return report

    def compare(self, bs: BusState, found: dict[int, str | None], scanned: set[int]) -> DiscoveryReport:
        by_addr = {ds.device.address: ds for ds in bs.devices}
        matching, missing, wrong = [], [], {}
        for addr, ds in by_addr.items():
            if addr not in scanned:
                continue
            if addr not in found:
                missing.append(addr)
            elif found[addr] == ds.profile.name:
                matching.append(addr)
            else:
                wrong[addr] = found[addr]
        unconfigured = {a: p for a, p in found.items() if a not in by_addr}
        for addr, ds in by_addr.items():
            if ds.address != addr and addr in matching:
                ds.readdress(addr)  # back at its configured address
        adopted = self.adopt([by_addr[a] for a in missing], unconfigured)
        return DiscoveryReport(bs.bus.name, dict(sorted(found.items())), tuple(sorted(matching)),
                               tuple(sorted(missing)), wrong, unconfigured, adopted)

    def adopt(self, missing: list[DeviceState], unconfigured: dict[int, str | None]) -> dict[int, int]:
        """Poll a missing sensor where a new one of its model answers, when it cannot be anyone else: one
        sensor of that model missing, one new one found (``discovery.adopt``).  Returns {configured: new}."""
        adopted: dict[int, int] = {}
        if not self.engine.discovery["adopt"]:
            return adopted
        for ds in missing:
            candidates = [a for a, p in unconfigured.items() if p == ds.profile.name]
            lost_alike = [d for d in missing if d.profile.name == ds.profile.name]
            if len(candidates) == 1 and len(lost_alike) == 1:
                ds.readdress(candidates[0])
                adopted[ds.device.address] = candidates[0]
                ds.next_try = 0.0
        return adopted

    async def search(self, bs: BusState, until: float | None) -> None:
        """While a device of the bus is lost, try one address after another that nobody is polled at (within
        the probe budget), for a sensor that was replaced by one set to another address; after a whole sweep,
        adopt what can be adopted, say what was found, and rest ``discovery.search_every_s``."""
        if not self.engine.discovery["search"] or bs.transport is None or not bs.transport.is_open:
            return
        lost = [ds for ds in bs.devices if ds.lost]
        if not lost:  # found, or back: nothing to look for
            bs.search_ids = []
            return
        if not bs.search_ids:
            if time.monotonic() < bs.search_next:
                return
            used = {ds.address for ds in bs.devices}
            bs.search_ids = [a for a in parse_ids(self.engine.discovery["ids"]) if a not in used]
            bs.search_found = {}
            bs.search_next = float("inf")  # until this sweep ends
            log.info("bus %s: looking for %d lost device(s) at %d other addresses", bs.bus.name, len(lost),
                     len(bs.search_ids))
        while bs.search_ids and bs.may_probe(until):
            addr = bs.search_ids.pop(0)
            t0 = time.monotonic()
            # silence from an address nobody uses is what a search expects: not a communication fault
            found = await scan_bus(bs.transport, self.engine.profiles, [addr], counted=False)
            bs.charge(t0, until)
            for f in found:
                bs.search_found[f.address] = f.profile.name if f.profile else None
        if bs.search_ids:
            return
        bs.search_next = time.monotonic() + float(self.engine.discovery["search_every_s"])
        answering = dict(sorted(bs.search_found.items()))
        adopted = self.adopt(lost, answering)
        rest = {a: p for a, p in answering.items() if a not in adopted.values()}
        bs.discovery = DiscoveryReport(bs.bus.name, answering, (), tuple(sorted(d.device.address for d in lost)), {},
                                       rest, adopted).as_dict()
        for old, new in adopted.items():
            log.warning("bus %s: the sensor configured at address %d now answers at %d; polling it there "
                        "(set address %d in the config)", bs.bus.name, old, new, new)
        for addr, prof in rest.items():
            log.warning("bus %s: address %d (%s) answers but is not configured%s", bs.bus.name, addr,
                        prof or "unknown model", "" if prof not in {d.profile.name for d in lost} else
                        ": it may replace one of the lost sensors of that model; set its address in the config")
