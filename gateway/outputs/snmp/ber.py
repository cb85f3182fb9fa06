"""The little BER the fast path needs: encode varbinds and responses, parse SNMPv2c read requests.

Encodings are the ones pyasn1 produces (definite, minimal lengths; its two's-complement integers), so a
response built here is byte-for-byte what pysnmp would send; tests/test_snmp_fastpath.py proves it.  The
parser is strict: anything it does not fully understand is left to pysnmp.
"""
from __future__ import annotations

from dataclasses import dataclass

# Universal and SNMP application tags of the values the agent serves.
INTEGER, OCTETS, NULL, OID = 0x02, 0x04, 0x05, 0x06
IPADDRESS, COUNTER32, GAUGE32, TIMETICKS, COUNTER64 = 0x40, 0x41, 0x42, 0x43, 0x46
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 0x80, 0x81, 0x82
SEQUENCE = 0x30
GET, GETNEXT, RESPONSE, SET, GETBULK = 0xA0, 0xA1, 0xA2, 0xA3, 0xA5

MAX_SUBID = 0xFFFFFFFF
MAX_OID_LEN = 128


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    return bytes((tag,)) + length(n) + body


def int_body(n: int) -> bytes:
    """Two's complement as pyasn1 writes it: one sign bit added whenever the magnitude fills whole octets
    (so -128 is ff 80, not the minimal 80: byte-identical answers matter more than the octet)."""
    bits = n.bit_length()
    if bits % 8 == 0:
        bits += 1
    return n.to_bytes((bits + 7) // 8, "big", signed=True)


def encode_int(n: int, tag: int = INTEGER) -> bytes:
    return tlv(tag, int_body(n))


def arcs_body(arcs) -> bytes:
    """Sub-identifiers in base 128 (no first-two-arcs folding): the tail of an OID's encoding."""
    if all(a < 0x80 for a in arcs):
        return bytes(arcs)
    out = bytearray()
    for sub in arcs:
        if sub < 0x80:
            out.append(sub)
            continue
        chunk = []
        while sub:
            chunk.append((sub & 0x7F) | 0x80)
            sub >>= 7
        chunk[0] &= 0x7F
        out.extend(reversed(chunk))
    return bytes(out)


def oid_body(oid: tuple[int, ...]) -> bytes:
    if len(oid) < 2:
        raise ValueError(f"OID {oid} needs at least two arcs")
    return arcs_body((oid[0] * 40 + oid[1],) + tuple(oid[2:]))


def encode_oid(oid: tuple[int, ...]) -> bytes:
    return tlv(OID, oid_body(oid))


def encode_value(tag: int, value) -> bytes:
    """The TLV of one value: ``tag`` with an int, bytes or OID tuple (None for the exception tags)."""
    if tag in (INTEGER, COUNTER32, GAUGE32, TIMETICKS, COUNTER64):
        return tlv(tag, int_body(value))
    if tag in (OCTETS, IPADDRESS):
        return tlv(tag, value)
    if tag == OID:
        return tlv(OID, oid_body(value))
    if tag in (NULL, NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW):
        return bytes((tag, 0))
    raise ValueError(f"cannot encode tag 0x{tag:02x}")


def encode_varbind(oid_tlv: bytes, value_tlv: bytes) -> bytes:
    return tlv(SEQUENCE, oid_tlv + value_tlv)


def response_message(community: bytes, request_id: int, varbinds: list[bytes]) -> bytes:
    """A SNMPv2c GetResponse with no error, its varbind list already encoded."""
    pdu = encode_int(request_id) + b"\x02\x01\x00\x02\x01\x00" + tlv(SEQUENCE, b"".join(varbinds))
    return tlv(SEQUENCE, b"\x02\x01\x01" + tlv(OCTETS, community) + tlv(RESPONSE, pdu))


@dataclass(frozen=True, slots=True)
class Request:
    community: bytes
    pdu_type: int
    request_id: int
    non_repeaters: int  # error-status for GET/GETNEXT
    max_repetitions: int  # error-index for GET/GETNEXT
    oids: tuple[tuple[int, ...], ...]


class _Malformed(Exception):
    pass


def _read_tl(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, body start, body end) of the TLV at ``pos``; strict definite lengths."""
    if pos + 2 > end:
        raise _Malformed
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        n = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise _Malformed
        n = int.from_bytes(data[pos:pos + count], "big")
        if n < 0x80 or data[pos] == 0:  # not minimal: let pysnmp judge it
            raise _Malformed
        pos += count
    if pos + n > end:
        raise _Malformed
    return tag, pos, pos + n


def _read_int(data: bytes, pos: int, end: int) -> tuple[int, int]:
    tag, start, stop = _read_tl(data, pos, end)
    if tag != INTEGER or stop == start or stop - start > 5:
        raise _Malformed
    return int.from_bytes(data[start:stop], "big", signed=True), stop


def _decode_oid(body: bytes) -> tuple[int, ...]:
    if not body or len(body) > 5 * MAX_OID_LEN:
        raise _Malformed
    subs = []
    value = 0
    fresh = True
    for byte in body:
        if fresh and byte == 0x80:  # non-minimal sub-identifier
            raise _Malformed
        value = (value << 7) | (byte & 0x7F)
        if byte & 0x80:
            fresh = False
            continue
        subs.append(value)
        value = 0
        fresh = True
    if not fresh:
        raise _Malformed
    first = subs[0]
    if first < 40:
        head = (0, first)
    elif first < 80:
        head = (1, first - 40)
    else:
        head = (2, first - 80)
    oid = head + tuple(subs[1:])
    if len(oid) > MAX_OID_LEN or any(s > MAX_SUBID for s in oid):
        raise _Malformed
    return oid


def message_version(data: bytes) -> int | None:
    """The version field of any SNMP message (0 v1, 1 v2c, 3 v3), read leniently; None when there is none."""
    try:
        if data[0] != SEQUENCE:
            return None
        first = data[1]
        pos = 2 + (first & 0x7F if first & 0x80 else 0)
        n = data[pos + 1]
        if data[pos] != INTEGER or not 1 <= n <= 4 or pos + 2 + n > len(data):
            return None
        return int.from_bytes(data[pos + 2:pos + 2 + n], "big", signed=True)
    except IndexError:
        return None


def parse_v2c_read(data: bytes) -> Request | None:
    """The SNMPv2c GET/GETNEXT/GETBULK request in ``data``, or None for anything else (v1, v3, SET,
    responses, unusual encodings): those go to pysnmp."""
    try:
        end = len(data)
        tag, pos, stop = _read_tl(data, 0, end)
        if tag != SEQUENCE or stop != end:
            return None
        version, pos = _read_int(data, pos, end)
        if version != 1:
            return None
        tag, start, pos = _read_tl(data, pos, end)
        if tag != OCTETS:
            return None
        community = data[start:pos]
        pdu_type, pos, stop = _read_tl(data, pos, end)
        if pdu_type not in (GET, GETNEXT, GETBULK) or stop != end:
            return None
        request_id, pos = _read_int(data, pos, end)
        a, pos = _read_int(data, pos, end)
        b, pos = _read_int(data, pos, end)
        if not -0x80000000 <= request_id <= 0x7FFFFFFF or not 0 <= a <= 0x7FFFFFFF or not 0 <= b <= 0x7FFFFFFF:
            return None
        tag, pos, stop = _read_tl(data, pos, end)
        if tag != SEQUENCE or stop != end:
            return None
        oids = []
        while pos < end:
            tag, vpos, vstop = _read_tl(data, pos, end)
            if tag != SEQUENCE:
                return None
            tag, start, opos = _read_tl(data, vpos, vstop)
            if tag != OID:
                return None
            oids.append(_decode_oid(data[start:opos]))
            tag, start, vend = _read_tl(data, opos, vstop)
            if vend != vstop or tag not in (NULL, NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW) or vend != start:
                return None
            pos = vstop
        return Request(community, pdu_type, request_id, a, b, tuple(oids))
    except (_Malformed, IndexError):
        return None
