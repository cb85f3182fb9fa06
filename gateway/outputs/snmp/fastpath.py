"""The SNMPv2c read fast path: GET, GETNEXT and GETBULK answered from pre-encoded varbinds.

pysnmp spends most of a walk building pyasn1 objects and BER-encoding them, for every request.  Here each
instance's varbind is encoded once per change of its point (see ``tree.Entry``) and a response is the
concatenation of cached varbinds, framed by a few bytes.  The semantics are pysnmp's own, step for step
(``pysnmp.entity.rfc3413.cmdrsp``: the same GETBULK repetition count and cap, endOfMibView repeated, the
same size limit); tests/test_snmp_fastpath.py checks the bytes against the pysnmp path.  Anything else —
SNMPv1, SNMPv3, SET, a wrong community, an encoding the strict parser does not accept, a response pysnmp
would turn into an error — is left to pysnmp, which also counts wrong communities.
"""
from __future__ import annotations

import logging

from . import ber
from .tree import OidIndex

log = logging.getLogger(__name__)


class FastPath:
    def __init__(self, index: OidIndex, community: bytes, max_varbinds: int = 64, max_message: int = 65507) -> None:
        self.index = index
        self.community = community
        self.max_varbinds = max_varbinds
        self.max_message = max_message
        self.answered = 0

    def _scan(self, i: int) -> tuple[bytes | None, int]:
        """(varbind, position) of the first instance present at or after position ``i``; (None, -1) at the end.
        The varbind is taken once: a volatile value is computed once per answer."""
        entries = self.index.entries
        n = len(entries)
        while i < n:
            enc = entries[i].encoded()
            if enc is not None:
                return enc, i
            i += 1
        return None, -1

    def _next(self, oid: tuple[int, ...]) -> tuple[bytes, int]:
        """(varbind, index position) of the instance after ``oid``; position -1 at the end of the MIB."""
        enc, pos = self._scan(self.index.after(oid))
        if enc is not None:  # (then pos >= 0)
            return enc, pos
        return ber.encode_varbind(ber.encode_oid(oid), ber.encode_value(ber.END_OF_MIB_VIEW, None)), -1

    def answer(self, data: bytes) -> bytes | None:
        req = ber.parse_v2c_read(data)
        if req is None or req.community != self.community:
            return None
        index = self.index
        index.refresh()
        entries = index.entries
        out: list[bytes] = []
        if req.pdu_type == ber.GET:
            for oid in req.oids:
                i = index.exact(oid)
                enc = entries[i].encoded() if i is not None else None
                if enc is None:
                    tag = ber.NO_SUCH_INSTANCE if i is not None else index.missing_tag(oid)
                    enc = ber.encode_varbind(ber.encode_oid(oid), ber.encode_value(tag, None))
                out.append(enc)
        elif req.pdu_type == ber.GETNEXT:
            out = [self._next(oid)[0] for oid in req.oids]
        else:
            n_vb = len(req.oids)
            nonrep = min(req.non_repeaters, n_vb)
            reps = req.max_repetitions
            cols = max(n_vb - nonrep, 0)
            if cols:
                reps = min(reps, self.max_varbinds // cols)
            out = [self._next(oid)[0] for oid in req.oids[:nonrep]]
            if cols and reps:
                # one chain per repeated varbind: (the OID asked, or None once found; the index position of the
                # last instance found, -1: not found yet, or the end)
                chains: list[tuple[tuple[int, ...] | None, int]] = [(oid, -1) for oid in req.oids[nonrep:]]
                for _ in range(reps):
                    for c, (asked, pos) in enumerate(chains):
                        enc = None
                        if pos >= 0:  # walking on: the next position, no search
                            enc, found = self._scan(pos + 1)
                            if enc is None:  # the end of the MIB after the last instance found
                                asked = entries[pos].oid
                            pos = found
                        if enc is None:  # first step, or the end of the MIB (endOfMibView, repeated)
                            assert asked is not None
                            enc, pos = self._next(asked)
                        chains[c] = (None if pos >= 0 else asked, pos)
                        out.append(enc)
            # nothing to answer (no non-repeaters and no repetition fits): an empty varbind list, RFC 3416 4.2.3,
            # as the agent's BulkResponder answers on the pysnmp side
        msg = ber.response_message(req.community, req.request_id, out)
        if len(msg) > self.max_message:
            return None  # pysnmp drops it (snmpSilentDrops)
        self.answered += 1
        return msg
