"""Fuzzing the NUT face over real sockets: the gateway's own server on 127.0.0.1, the simulator behind it.

Each case is one connection carrying a generated session of lines: the protocol's commands with any
arguments (right and wrong devices, variables, counts, casing, quotes, escapes, comments), control and
non-ASCII bytes, lines cut in pieces, oversized lines, LOGOUT.  The client then half-closes and reads to the
end.  Whatever it sent, every line is answered with exactly one well-formed answer (a line, or a whole
BEGIN LIST ... END LIST block), in order, until LOGOUT or a line over 512 bytes (answered ERR INVALID-ARGUMENT)
closes the connection; the server never hangs and logs no error.  Then: a client pipelining LIST VAR without
reading its answers costs bounded memory, and after all that the server still answers with the store's value.
"""
from __future__ import annotations

import logging
import re
import socket

import pytest
from hypothesis import given, strategies as st

from gateway.outputs.nut.protocol import LineError, split_words
from gateway.outputs.web.auth import hash_password
from gateway.points import PointRef
from tests.fuzz.cases import fuzz_settings, ran
from tests.fuzz.netcheck import (
    ErrorLog,
    Footprint,
    assert_bounded,
    in_pieces,
    not_reading,
    recv_until_closed,
    tcp_session,
)
from tests.support import GatewayThread, free_port, small_bank, write_config

MAX_LINE = 512
ERRORS = {"ACCESS-DENIED", "UNKNOWN-UPS", "VAR-NOT-SUPPORTED", "CMD-NOT-SUPPORTED", "INVALID-ARGUMENT",
          "FEATURE-NOT-CONFIGURED", "DATA-STALE", "ALREADY-LOGGED-IN", "ALREADY-SET-PASSWORD", "ALREADY-SET-USERNAME",
          "USERNAME-REQUIRED", "PASSWORD-REQUIRED", "UNKNOWN-COMMAND", "UNKNOWN"}
# one answer line (other than a list block): what the server may say
ANSWER = re.compile(r'(OK( Goodbye)?|ERR [A-Z-]+|1\.3|ON|OFF|bmsgw .*|Commands: .*|NUMLOGINS \S+ \d+|'
                    r'(VAR|DESC|CMDDESC) \S+ \S+ "(\\.|[^"\\])*"|UPSDESC \S+ "(\\.|[^"\\])*"|'
                    r'TYPE \S+ \S+ (NUMBER|STRING:\d+))')
LIST_ITEM = re.compile(r'(UPS \S+ "(\\.|[^"\\])*"|VAR \S+ \S+ "(\\.|[^"\\])*"|CLIENT \S+ \S+)')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-nut")
    port = free_port()
    users = [{"name": "nas", "password_hash": hash_password("p4ssw0rd!")}]
    over = {"nut": {"enabled": True, "listen": f"127.0.0.1:{port}", "users": users,
                    "limits": {"request_timeout_s": 2, "max_connections": 8}},
            "web": {"enabled": False}, "snmp": {"enabled": False}, "prometheus": {"enabled": False},
            "modbus_tcp": {"enabled": False}}
    with GatewayThread(write_config(tmp, over, base=small_bank(1, 4))) as gt, ErrorLog() as errors:
        yield gt, gt.gateway.service("nut"), port, errors, Footprint.now()


# -- what a session is made of -------------------------------------------------------------------------------
DEVICES = ["bank", "string1", "BANK", "string2", "string0", "nope", "", '"bank"', "string1#x"]
VARIABLES = ["ups.status", "battery.charge", "battery.runtime", "experimental.battery.4.voltage",
             "experimental.battery.5.voltage", "server.info", "server.version", "input.voltage", "UPS.STATUS", "x"]
word = st.one_of(st.sampled_from(DEVICES + VARIABLES + ["VAR", "TYPE", "DESC", "UPS", "RW", "CMD", "CLIENT", "ENUM",
                                                        "RANGE", "NUMLOGINS", "UPSDESC", "TRACKING", "ON", "OFF",
                                                        "=", "#", '"', "\\", '"a b"', "nas", "p4ssw0rd!"]),
                 st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12))
VERBS = ["VER", "NETVER", "PROTVER", "HELP", "GET", "LIST", "USERNAME", "PASSWORD", "LOGIN", "PRIMARY", "MASTER",
         "FSD", "SET", "INSTCMD", "STARTTLS", "get", "List", "FOO", ""]


@st.composite
def lines(draw) -> bytes:
    kind = draw(st.sampled_from(["command"] * 8 + ["bytes", "long"]))
    if kind == "command":
        words = [draw(st.sampled_from(VERBS))] + draw(st.lists(word, max_size=5))
        sep = draw(st.sampled_from([" ", "  ", "\t", " \r"]))
        return sep.join(words).encode()
    if kind == "bytes":  # anything but a newline: control characters, non-ASCII, quotes left open
        return draw(st.binary(max_size=80)).replace(b"\n", b"")
    return b"GET VAR bank " + b"x" * draw(st.integers(MAX_LINE - 13, MAX_LINE + 100))


def closes(line: bytes) -> bool:
    """Whether the server answers this line and then closes the connection."""
    if len(line) > MAX_LINE:
        return True
    try:
        words = split_words(line)
    except LineError:
        return False
    return words == ["LOGOUT"] or (len(words) == 1 and words[0].upper() == "LOGOUT")


def answers_of(data: bytes) -> list[list[str]]:
    """The answers, each a line or a whole list block; AssertionError on anything malformed."""
    text = data.decode("ascii")
    assert text == "" or text.endswith("\n"), f"a truncated answer: {text[-80:]!r}"
    out: list[list[str]] = []
    block: list[str] | None = None
    for ln in text.splitlines():
        if block is not None:
            block.append(ln)
            if ln.startswith("END LIST "):
                assert ln[4:] == block[0][6:], (block[0], ln)
                out.append(block)
                block = None
            else:
                assert LIST_ITEM.fullmatch(ln), ln
            continue
        if ln.startswith("BEGIN LIST "):
            block = [ln]
            continue
        assert ANSWER.fullmatch(ln), ln
        if ln.startswith("ERR "):
            assert ln[4:] in ERRORS, ln
        out.append([ln])
    assert block is None, f"a list block that never ends: {block[:3]}"
    return out


@given(data=st.data())
@fuzz_settings(150)
def test_every_line_gets_one_well_formed_answer_and_the_connection_ends(served, data):
    gt, svc, port, errors, *_ = served
    session = data.draw(st.lists(lines(), min_size=1, max_size=8), label="session")
    if data.draw(st.booleans(), label="logout at the end"):
        session.append(b"LOGOUT")
    split = data.draw(st.booleans(), label="sent in pieces")
    ran("nut.sessions")
    logged = len(errors.records)
    payload = b"".join(line + b"\n" for line in session)
    answered = next((i + 1 for i, line in enumerate(session) if closes(line)), len(session))
    received, cut_short = tcp_session(port, in_pieces(payload, 7) if split else [(payload, 0.0)])
    if cut_short:  # the server closed after LOGOUT or an oversized line
        assert answered < len(session) or closes(session[-1])
    got = answers_of(received)
    assert len(got) == answered, f"{answered} lines to answer, {len(got)} answers: {got}"
    for line, answer in zip(session, got, strict=False):
        if len(line) > MAX_LINE:
            assert answer == ["ERR INVALID-ARGUMENT"]
    assert errors.new_since(logged) == []


def test_a_client_that_never_reads_its_answers_costs_bounded_memory(served):
    """6000 pipelined LIST VAR string1 (17 bytes in, about 1.5 KB out: 9 MB of answers, more than the sockets'
    buffers hold) from a client that does not read: the server stops reading it instead of queueing megabytes of
    answers; when it reads again, every request is answered."""
    gt, svc, port, *_ = served
    request, count = b"LIST VAR string1\n", 6000
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(request * count)

    def stalled():
        return not_reading(svc.server.connections, writing_paused=True)

    gt.wait_for(lambda: stalled() is not None, what="the server to stop reading a client that does not read")
    assert_bounded(stalled())
    sock.shutdown(socket.SHUT_WR)
    ends, tail = 0, b""
    while chunk := sock.recv(1 << 20):  # now the client reads: the server answers the rest, then closes
        ends += (tail + chunk).count(b"END LIST VAR string1\n") - tail.count(b"END LIST VAR string1\n")
        tail = chunk[-32:]
    sock.close()
    assert ends == count, f"{count} LIST VAR requests, {ends} lists answered"


def test_after_the_fuzzing_the_server_answers_and_holds_nothing(served):
    gt, svc, port, errors, footprint = served
    ref = PointRef("cell.voltage", 1, 2)

    def agrees() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET VAR string1 experimental.battery.2.voltage\nLOGOUT\n")
            got = recv_until_closed(s, 10).decode().splitlines()[0]
        value = gt.gateway.store.value(ref)
        return value is not None and got == f'VAR string1 experimental.battery.2.voltage "{value:.3f}"'

    gt.wait_for(agrees, timeout=30, what="a read to give the store's battery voltage")
    gt.wait_for(lambda: len(svc.server.connections) == 0, timeout=30, what="every fuzz connection to be closed")
    footprint.assert_nothing_held(fd_slack=20)
    assert [r.getMessage() for r in errors.records if r.levelno >= logging.ERROR] == []
