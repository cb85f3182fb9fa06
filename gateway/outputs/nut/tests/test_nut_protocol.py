"""The NUT face's answers, line by line, as upsd (NUT 2.8, server/net*.c) gives them: a gateway built offline
(no polling) whose point store the test fills, so every value, status word and error is the test's choice."""
from __future__ import annotations

import asyncio
import inspect

import pytest

from gateway.app import Gateway
from gateway.errors import ConfigError
from gateway.outputs.nut.face import Close, LoginThrottle, NutService, StartTls
from gateway.outputs.nut.protocol import LineError, quote, split_words
from gateway.outputs.web.auth import hash_password
from gateway.points import PointRef, Quality
from gateway.strings import string_states
from tests.support import small_bank, write_config

PASSWORD = "nas-password-1"
_CODES = string_states()  # string.state's codes, as the string classifier publishes them
FLOAT, CHARGING, DISCHARGING, REST = (float(c) for c in (_CODES.floating, _CODES.charging, _CODES.discharging,
                                                         _CODES.rest))


class Conn:
    """What the server keeps of one client connection."""

    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.peer, self.closed = peer, False
        self.username = self.password = self.verified = None
        self.tls = self.tracking = False


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def face(tmp_path, password_hash):
    path = write_config(tmp_path, {"nut": {"users": [{"name": "nas", "password_hash": password_hash}]},
                                   "analytics": {"install_date": "2024-03-01"}}, base=small_bank(2, 3))
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "/dev/null", "bus2": "/dev/null"})
    return gw, NutService(gw, gw.config.section("nut"))


def ask(svc: NutService, conn: Conn, line: str) -> str:
    answer = svc.answer(conn, line.encode())  # type: ignore[arg-type]
    if inspect.isawaitable(answer):
        answer = asyncio.run(answer)  # a LOGIN: the password is checked in a worker thread
    if isinstance(answer, Close):
        return answer.text
    assert isinstance(answer, str), answer
    return answer


def lines(svc: NutService, conn: Conn, line: str) -> list[str]:
    return ask(svc, conn, line).splitlines()


def put(gw: Gateway, values: dict[tuple, float | None]) -> None:
    for (point, *where), value in values.items():
        gw.store.put(PointRef(point, *where), value)


def floating(gw: Gateway, extra: dict[tuple, float | None] | None = None) -> None:
    put(gw, {("string.state", 1): FLOAT, ("string.state", 2): FLOAT, ("string.soc", 1): 100.0,
             ("string.soc", 2): 99.0, ("string.current", 1): 0.05, ("string.current", 2): 0.07,
             ("string.voltage", 1): 40.5, ("string.voltage", 2): 40.7, ("string.runtime_remaining", 1): None,
             ("string.runtime_remaining", 2): None, ("string.cell_temperature_max", 1): 24.5,
             ("string.cell_temperature_max", 2): 26.0, **(extra or {})})


# -- the lexical rules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, words", [
    (b"GET VAR bank ups.status", ["GET", "VAR", "bank", "ups.status"]),
    (b"  list\tvar  bank\r", ["list", "var", "bank"]),
    (b'SET VAR bank ups.id "My UPS"', ["SET", "VAR", "bank", "ups.id", "My UPS"]),
    (b'X "a \\"quoted\\" \\\\ word" y', ["X", 'a "quoted" \\ word', "y"]),
    (b'X ""', ["X", ""]),
    (b"LIST UPS # a comment", ["LIST", "UPS"]),
    (b"PASSWORD abc=def", ["PASSWORD", "abc", "=", "def"]),  # upsd's parser makes '=' a word of its own
    (b"VER\x00\x01\xff", ["VER"]),  # printable ASCII only
    (b"", []),
    (b" ".join([b"w"] * 40), ["w"] * 32),  # at most 32 words count
])
def test_a_line_splits_into_words_as_upsd_reads_it(line, words):
    assert split_words(line) == words


@pytest.mark.parametrize("line", [b'GET VAR "bank', b'X "a#b"', b"X abc\\"])
def test_a_line_upsd_would_read_on_past_or_not_answer_is_refused(line):
    with pytest.raises(LineError):
        split_words(line)


def test_values_are_quoted_and_escaped_as_upsd_sends_them():
    assert quote('Room "B" #2 \\ east') == '"Room \\"B\\" \\#2 \\\\ east"'
    assert quote("two\nlines\x7f") == '"twolines"'  # a control character would break the line


# -- the answers ----------------------------------------------------------------------------------------------
def test_a_floating_bank_reads_ol_with_its_values_and_no_made_up_ones(face):
    gw, svc = face
    floating(gw)
    c = Conn()
    assert lines(svc, c, "LIST UPS") == ["BEGIN LIST UPS", 'UPS bank "Battery room"', 'UPS string1 "String 1"',
                                         'UPS string2 "String 2"', "END LIST UPS"]
    listed = lines(svc, c, "LIST VAR bank")
    assert listed[0] == "BEGIN LIST VAR bank" and listed[-1] == "END LIST VAR bank"
    got = {ln.split(" ", 3)[2]: ln.split(" ", 3)[3] for ln in listed[1:-1]}
    assert got["ups.status"] == '"OL"'
    assert got["battery.charge"] == '"99.0"'  # the lowest string
    assert got["battery.current"] == '"0.12"'  # the strings' sum
    assert got["battery.voltage"] == '"40.60"'  # no charger monitor reading: the strings' mean
    assert got["battery.temperature"] == '"26.0"'  # the warmest battery
    assert got["battery.charger.status"] == '"floating"'
    assert got["battery.voltage.nominal"] == '"36"' and got["battery.packs"] == '"6"'
    assert got["battery.capacity.nominal"] == '"200"' and got["battery.type"] == '"PbAc"'
    assert got["battery.date"] == '"2024-03-01"'
    assert got["battery.charge.low"] == '"20"' and got["battery.runtime.low"] == '"300"'
    assert got["device.mfr"] == '"bmsgw"' and got["device.type"] == '"ups"'
    # no run time on float (no discharge current yet), no readings from the room module, no alarm engine running
    for absent in ("battery.runtime", "ambient.temperature", "ambient.humidity", "battery.packs.bad", "device.serial"):
        assert absent not in got
    assert list(got) == sorted(got, key=str.lower)  # upsd's order
    assert ask(svc, c, "GET VAR bank battery.runtime") == "ERR DATA-STALE\n"  # exists here, not known now
    assert ask(svc, c, "GET VAR bank ambient.temperature") == "ERR DATA-STALE\n"
    assert ask(svc, c, "GET VAR bank device.serial") == "ERR VAR-NOT-SUPPORTED\n"  # not configured
    assert ask(svc, c, "GET VAR bank input.voltage") == "ERR VAR-NOT-SUPPORTED\n"


def test_ups_status_follows_the_string_state_point_and_the_low_battery_settings(face):
    gw, svc = face
    c = Conn()

    def status(dev: str = "bank") -> str:
        return ask(svc, c, f"GET VAR {dev} ups.status")

    floating(gw)
    assert status() == 'VAR bank ups.status "OL"\n'
    put(gw, {("string.state", 2): CHARGING})
    assert status() == 'VAR bank ups.status "OL CHRG"\n' and status("string1") == 'VAR string1 ups.status "OL"\n'
    assert ask(svc, c, "GET VAR bank battery.charger.status") == 'VAR bank battery.charger.status "charging"\n'
    put(gw, {("string.state", 1): DISCHARGING, ("string.state", 2): DISCHARGING,
             ("string.runtime_remaining", 1): 1800.0, ("string.runtime_remaining", 2): 1500.0})
    assert status() == 'VAR bank ups.status "OB DISCHRG"\n'
    assert ask(svc, c, "GET VAR bank battery.runtime") == 'VAR bank battery.runtime "1500"\n'
    put(gw, {("string.runtime_remaining", 2): 299.0})  # at or below battery.runtime.low (300 s)
    assert status() == 'VAR bank ups.status "OB DISCHRG LB"\n' and status("string1") == \
        'VAR string1 ups.status "OB DISCHRG"\n'
    put(gw, {("string.runtime_remaining", 2): 1500.0, ("string.soc", 1): 20.0})  # charge at battery.charge.low
    assert status() == 'VAR bank ups.status "OB DISCHRG LB"\n'
    # on the mains again, still low: LB stays (the run time counts on battery only)
    floating(gw, {("string.state", 1): CHARGING, ("string.state", 2): CHARGING, ("string.soc", 1): 15.0,
                  ("string.runtime_remaining", 1): 100.0})
    assert status() == 'VAR bank ups.status "OL CHRG LB"\n'
    put(gw, {("string.soc", 1): 80.0})
    assert status() == 'VAR bank ups.status "OL CHRG"\n'
    # a string whose state is not known does not decide; none known: the status is not known either
    gw.store.mark([PointRef("string.state", 1)], Quality.COMM_FAIL)
    assert status() == 'VAR bank ups.status "OL CHRG"\n' and status("string1") == "ERR DATA-STALE\n"
    put(gw, {("string.state", 2): 0.0})  # unknown
    assert status() == "ERR DATA-STALE\n"
    assert "ups.status" not in ask(svc, c, "LIST VAR bank")


def test_an_end_of_discharge_voltage_alarm_on_battery_is_low_battery(face):
    """The run-time estimate may be optimistic (aged batteries, a load step): a battery or string at its end
    voltage (the alarm engine's low cell.voltage / string.voltage alarm) says LB on battery, whatever the
    estimate."""
    gw, svc = face
    c = Conn()
    floating(gw, {("string.state", 1): DISCHARGING, ("string.state", 2): DISCHARGING,
                  ("string.runtime_remaining", 1): 1800.0, ("string.runtime_remaining", 2): 1700.0})
    svc.alarms.seed([])
    assert ask(svc, c, "GET VAR bank ups.status") == 'VAR bank ups.status "OB DISCHRG"\n'
    svc.alarms.event(21, "cell.voltage", "warning", 2, 4, True, value=10.79, threshold=10.8)  # 1.80 V per cell
    assert ask(svc, c, "GET VAR bank ups.status") == 'VAR bank ups.status "OB DISCHRG LB"\n'
    assert ask(svc, c, "GET VAR string2 ups.status") == 'VAR string2 ups.status "OB DISCHRG LB"\n'
    assert ask(svc, c, "GET VAR string1 ups.status") == 'VAR string1 ups.status "OB DISCHRG"\n'
    svc.alarms.event(22, "cell.temperature", "warning", 1, 1, True, value=41.0, threshold=40.0)  # not a voltage
    svc.alarms.event(23, "string.voltage", "warning", 1, None, True, value=29.0, threshold=28.8)  # a high one
    assert ask(svc, c, "GET VAR string1 ups.status") == 'VAR string1 ups.status "OB DISCHRG"\n'
    svc.alarms.event(21, "cell.voltage", "warning", 2, 4, False, value=11.2, threshold=10.8)  # cleared
    assert ask(svc, c, "GET VAR bank ups.status") == 'VAR bank ups.status "OB DISCHRG"\n'
    # seeded from the active table at start (a gateway restarted during a discharge)
    svc.alarms.seed([{"id": 30, "point": "string.voltage", "severity": "critical", "string": 1, "cell": None,
                      "active": True, "value": 26.0, "threshold": 26.25}])
    assert ask(svc, c, "GET VAR string1 ups.status") == 'VAR string1 ups.status "OB DISCHRG LB"\n'
    # on the mains, a low float voltage is the float rule's business, not low battery
    floating(gw)
    assert ask(svc, c, "GET VAR string1 ups.status") == 'VAR string1 ups.status "OL"\n'


def test_a_rest_state_is_on_line_and_resting(face):
    gw, svc = face
    floating(gw, {("string.state", 1): REST, ("string.state", 2): REST})
    c = Conn()
    assert ask(svc, c, "GET VAR string2 ups.status") == 'VAR string2 ups.status "OL"\n'
    assert ask(svc, c, "GET VAR string2 battery.charger.status") == 'VAR string2 battery.charger.status "resting"\n'


def test_rb_and_bad_batteries_come_from_the_state_of_health_alarms(face):
    gw, svc = face
    floating(gw)
    c = Conn()
    svc.alarms.seed([])  # an alarm engine runs, no alarm is active
    assert ask(svc, c, "GET VAR bank battery.packs.bad") == 'VAR bank battery.packs.bad "0"\n'
    svc.alarms.event(7, "cell.soh", "warning", 2, 3, True)  # below 90 %: not yet to be replaced
    assert ask(svc, c, "GET VAR bank ups.status") == 'VAR bank ups.status "OL"\n'
    svc.alarms.event(8, "cell.soh", "critical", 2, 3, True)  # below 80 %: replace it
    svc.alarms.event(9, "cell.voltage", "critical", 1, 1, True)  # another alarm: no RB
    assert ask(svc, c, "GET VAR bank ups.status") == 'VAR bank ups.status "OL RB"\n'
    assert ask(svc, c, "GET VAR string2 ups.status") == 'VAR string2 ups.status "OL RB"\n'
    assert ask(svc, c, "GET VAR string1 ups.status") == 'VAR string1 ups.status "OL"\n'
    assert ask(svc, c, "GET VAR bank battery.packs.bad") == 'VAR bank battery.packs.bad "1"\n'
    assert ask(svc, c, "GET VAR string1 battery.packs.bad") == 'VAR string1 battery.packs.bad "0"\n'
    svc.alarms.event(8, "cell.soh", "critical", 2, 3, False)  # cleared (the battery was replaced)
    assert ask(svc, c, "GET VAR bank ups.status") == 'VAR bank ups.status "OL"\n'
    svc.alarms.event(10, "string.soh", "critical", 1, None, True)  # a capacity test found the string worn out
    assert ask(svc, c, "GET VAR string1 ups.status") == 'VAR string1 ups.status "OL RB"\n'
    assert ask(svc, c, "GET VAR bank battery.packs.bad") == 'VAR bank battery.packs.bad "0"\n'


def test_per_battery_values_are_experimental_variables_of_each_string(face):
    gw, svc = face
    put(gw, {("cell.voltage", 2, 3): 13.512, ("cell.ohmic", 2, 3): 0.004207, ("cell.temperature", 2, 3): 25.25,
             ("cell.alarm_level", 2, 3): 1.0, ("cell.soh", 2, 3): None})
    c = Conn()
    assert ask(svc, c, "GET VAR string2 experimental.battery.3.voltage") == \
        'VAR string2 experimental.battery.3.voltage "13.512"\n'
    assert ask(svc, c, "GET VAR string2 experimental.battery.3.ohmic") == \
        'VAR string2 experimental.battery.3.ohmic "4.207"\n'  # milliohm
    assert ask(svc, c, "GET VAR string2 experimental.battery.3.alarm") == \
        'VAR string2 experimental.battery.3.alarm "warning"\n'
    assert ask(svc, c, "GET VAR string2 experimental.battery.3.soh") == "ERR DATA-STALE\n"
    assert ask(svc, c, "GET VAR string2 experimental.battery.4.voltage") == "ERR VAR-NOT-SUPPORTED\n"  # 3 batteries
    assert ask(svc, c, "GET DESC string2 experimental.battery.3.ohmic") == \
        'DESC string2 experimental.battery.3.ohmic "Battery 3 ohmic value (milliohm)"\n'
    assert ask(svc, c, "GET VAR bank experimental.battery.3.voltage") == "ERR VAR-NOT-SUPPORTED\n"


def test_names_are_case_insensitive_and_echoed_as_asked(face):
    gw, svc = face
    floating(gw)
    c = Conn()
    assert ask(svc, c, "get var BANK UPS.STATUS") == 'VAR BANK UPS.STATUS "OL"\n'
    assert lines(svc, c, "list var String1")[0] == "BEGIN LIST VAR String1"


def test_every_command_answers_as_upsd_does(face):
    gw, svc = face
    floating(gw)
    c = Conn()
    session = [
        ("VER", "bmsgw "), ("VER x", "ERR INVALID-ARGUMENT"), ("NETVER", "1.3"), ("PROTVER", "1.3"),
        ("HELP", "Commands: HELP VER NETVER PROTVER GET LIST LOGIN LOGOUT USERNAME PASSWORD STARTTLS"),
        ("", "ERR UNKNOWN-COMMAND"), ("# only a comment", "ERR UNKNOWN-COMMAND"), ("FOO", "ERR UNKNOWN-COMMAND"),
        ('GET VAR "bank', "ERR INVALID-ARGUMENT"),
        ("STARTTLS", "ERR FEATURE-NOT-CONFIGURED"),  # no certificate here (web.tls is off)
        ("GET", "ERR INVALID-ARGUMENT"), ("GET VAR bank", "ERR INVALID-ARGUMENT"),
        ("GET FOO a b", "ERR INVALID-ARGUMENT"),
        ("GET VAR nope ups.status", "ERR UNKNOWN-UPS"), ("GET VAR nope server.version", 'VAR nope server.version "'),
        ("GET VAR bank server.foo", "ERR VAR-NOT-SUPPORTED"),
        ("GET TYPE bank ups.status", "TYPE bank ups.status STRING:64"),
        ("GET TYPE bank battery.charge", "TYPE bank battery.charge NUMBER"),
        ("GET TYPE bank battery.foo", "ERR VAR-NOT-SUPPORTED"),
        ("GET DESC bank battery.charge", 'DESC bank battery.charge "Battery charge (percent): the lowest string"'),
        ("GET DESC bank battery.foo", 'DESC bank battery.foo "Description unavailable"'),
        ("GET CMDDESC bank load.off", 'CMDDESC bank load.off "Description unavailable"'),
        ("GET UPSDESC string2", 'UPSDESC string2 "String 2"'), ("GET UPSDESC nope", "ERR UNKNOWN-UPS"),
        ("GET NUMLOGINS bank", "NUMLOGINS bank 0"), ("GET TRACKING", "OFF"),
        ("GET TRACKING 1bd31808", "ERR FEATURE-NOT-CONFIGURED"),
        ("LIST", "ERR INVALID-ARGUMENT"), ("LIST VAR", "ERR INVALID-ARGUMENT"), ("LIST VAR nope", "ERR UNKNOWN-UPS"),
        ("LIST FOO bank", "ERR INVALID-ARGUMENT"), ("LIST ENUM bank", "ERR INVALID-ARGUMENT"),
        ("LIST RW bank", "BEGIN LIST RW bank\nEND LIST RW bank"),
        ("LIST CMD bank", "BEGIN LIST CMD bank\nEND LIST CMD bank"),
        ("LIST CLIENT bank", "BEGIN LIST CLIENT bank\nEND LIST CLIENT bank"),
        ("LIST ENUM bank battery.type", "BEGIN LIST ENUM bank battery.type\nEND LIST ENUM bank battery.type"),
        ("LIST RANGE bank battery.foo", "ERR VAR-NOT-SUPPORTED"),
        # what needs USERNAME and PASSWORD first, before anything else is looked at
        ("LOGIN bank", "ERR USERNAME-REQUIRED"), ("SET VAR bank ups.id x", "ERR USERNAME-REQUIRED"),
        ("INSTCMD bank load.off", "ERR USERNAME-REQUIRED"), ("FSD bank", "ERR USERNAME-REQUIRED"),
        ("PRIMARY bank", "ERR USERNAME-REQUIRED"), ("USERNAME", "ERR INVALID-ARGUMENT"),
        ("USERNAME somebody", "OK"), ("USERNAME again", "ERR ALREADY-SET-USERNAME"),
        ("LOGIN bank", "ERR PASSWORD-REQUIRED"), ("PASSWORD a b", "ERR INVALID-ARGUMENT"),
        ("PASSWORD wrong-one", "OK"), ("PASSWORD again", "ERR ALREADY-SET-PASSWORD"),
        # no writes, no commands, no primary: refused as upsd refuses a user without those rights
        ("SET VAR bank", "ERR INVALID-ARGUMENT"), ("SET VAR nope ups.id x", "ERR UNKNOWN-UPS"),
        ("SET VAR bank battery.charge.low 50", "ERR ACCESS-DENIED"), ("SET FOO bar", "ERR INVALID-ARGUMENT"),
        ("SET TRACKING MAYBE", "ERR INVALID-ARGUMENT"), ("SET TRACKING ON", "OK"), ("GET TRACKING", "ON"),
        ("GET TRACKING 1bd31808", "ERR UNKNOWN"),
        ("INSTCMD bank", "ERR INVALID-ARGUMENT"), ("INSTCMD nope load.off", "ERR UNKNOWN-UPS"),
        ("INSTCMD bank load.off", "ERR CMD-NOT-SUPPORTED"),
        ("INSTCMD bank test.battery.start 1", "ERR CMD-NOT-SUPPORTED"),
        ("FSD", "ERR INVALID-ARGUMENT"), ("FSD nope", "ERR UNKNOWN-UPS"), ("FSD bank", "ERR ACCESS-DENIED"),
        ("MASTER bank", "ERR ACCESS-DENIED"), ("PRIMARY bank", "ERR ACCESS-DENIED"),
        ("LOGIN", "ERR INVALID-ARGUMENT"), ("LOGIN nope", "ERR UNKNOWN-UPS"),
        ("LOGIN bank", "ERR ACCESS-DENIED"),  # not a user here
        ("LOGOUT now", "ERR INVALID-ARGUMENT"), ("LOGOUT", "OK Goodbye"),
    ]
    for line, expected in session:
        got = ask(svc, c, line).rstrip("\n")
        assert got.startswith(expected) if expected.endswith((" ", '"')) else got == expected, (line, got)
    assert isinstance(svc.answer(c, b"logout"), Close)  # type: ignore[arg-type]
    assert svc.counters["errors"] > 30


def test_login_checks_the_users_argon2_hash_and_counts_the_client(face):
    gw, svc = face
    c = Conn("192.0.2.7")
    for line in ("USERNAME nas", f"PASSWORD {PASSWORD}"):
        assert ask(svc, c, line) == "OK\n"
    assert ask(svc, c, "LOGIN bank") == "OK\n"
    assert ask(svc, c, "LOGIN bank") == "ERR ALREADY-LOGGED-IN\n"
    other = Conn()
    assert ask(svc, other, "GET NUMLOGINS bank") == "NUMLOGINS bank 1\n"
    assert ask(svc, other, "GET NUMLOGINS string1") == "NUMLOGINS string1 0\n"
    assert lines(svc, other, "LIST CLIENT bank") == ["BEGIN LIST CLIENT bank", "CLIENT bank 192.0.2.7",
                                                     "END LIST CLIENT bank"]
    svc.forget(c)  # the connection closed
    assert ask(svc, other, "GET NUMLOGINS bank") == "NUMLOGINS bank 0\n"
    # the right name with a wrong password, and a name that does not exist: the same answer
    for user in ("nas", "nobody"):
        c = Conn("192.0.2.8")
        ask(svc, c, f"USERNAME {user}")
        ask(svc, c, "PASSWORD not-the-password")
        assert ask(svc, c, "LOGIN string1") == "ERR ACCESS-DENIED\n"
        assert ask(svc, c, "LOGIN string1") == "ERR ACCESS-DENIED\n"  # checked once per connection
    assert svc.counters["refused_logins"] == 4


def test_an_address_that_keeps_failing_is_refused_without_a_password_check(face):
    gw, svc = face
    now = [1000.0]
    svc.throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(5):
        c = Conn("192.0.2.9")
        ask(svc, c, "USERNAME nas")
        ask(svc, c, "PASSWORD guess")
        assert ask(svc, c, "LOGIN bank") == "ERR ACCESS-DENIED\n"
    c = Conn("192.0.2.9")
    ask(svc, c, "USERNAME nas")
    ask(svc, c, f"PASSWORD {PASSWORD}")
    assert ask(svc, c, "LOGIN bank") == "ERR ACCESS-DENIED\n"  # locked: even the right password
    assert c.verified is None  # not checked
    other = Conn("192.0.2.10")  # another address is not held
    ask(svc, other, "USERNAME nas")
    ask(svc, other, f"PASSWORD {PASSWORD}")
    assert ask(svc, other, "LOGIN bank") == "OK\n"
    now[0] += 301  # the window has passed
    assert ask(svc, c, "LOGIN bank") == "OK\n"


def test_starttls_is_offered_with_the_web_faces_certificate_when_web_tls_is_on(tmp_path):
    from gateway.outputs.web.tlscert import ensure_self_signed

    path = write_config(tmp_path, {"web": {"tls": {"enabled": True}}}, base=small_bank(1, 2))
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "/dev/null"})
    svc = NutService(gw, gw.config.section("nut"))
    assert svc._tls(svc.cfg, gw.config) == (None, "")  # the web face has not made its certificate yet
    cert, _key = ensure_self_signed(gw.config.state_dir / "web" / "tls", "127.0.0.1")
    context, source = svc._tls(svc.cfg, gw.config)
    assert context is not None and source == str(cert)
    svc.tls_context = context
    assert isinstance(svc.answer(Conn(), b"STARTTLS"), StartTls)  # type: ignore[arg-type]
    in_tls = Conn()
    in_tls.tls = True
    assert ask(svc, in_tls, "STARTTLS") == "ERR ALREADY-SSL-MODE\n"


def test_its_section_is_checked_with_the_config(tmp_path, password_hash):
    user = {"name": "nas", "password_hash": password_hash}
    for section, key in (({"listen": "3493"}, "nut.listen"), ({"allow_from": ["10.0.0.0/33"]}, "nut.allow_from"),
                         ({"users": [user, user]}, r"nut.users\[1\].name"), ({"tls": {"cert": "a.pem"}}, "nut.tls"),
                         ({"bank_name": "string2"}, "nut.bank_name"),
                         ({"users": [{**user, "upsmon": "primary"}]}, "nut.users"),
                         ({"users": [{**user, "password_hash": "plain"}]}, "nut.users")):
        path = write_config(tmp_path, {"nut": section}, base=small_bank(1, 2))
        with pytest.raises(ConfigError, match=key):
            Gateway(path, simulator=False, port_overrides={"bus1": "/dev/null"}).check()


def test_a_config_without_a_nut_section_serves_no_nut(tmp_path):
    """An installation upgraded with its own config (no `nut` section) does not start serving NUT; this
    repository's config.yaml turns it on."""
    import yaml

    from tests.support import DEFAULT_CONFIG

    assert yaml.safe_load(DEFAULT_CONFIG.read_text())["nut"]["enabled"] is True

    path = write_config(tmp_path, {"nut": {"enabled": True}}, base=small_bank(1, 2))
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "/dev/null"})
    assert any(isinstance(s, NutService) for s in gw._new_services())
    data = yaml.safe_load(path.read_text())
    del data["nut"]
    path.write_text(yaml.safe_dump(data))
    gw = Gateway(path, simulator=False, port_overrides={"bus1": "/dev/null"})
    assert gw.config.section("nut")["enabled"] is False
    assert not any(isinstance(s, NutService) for s in gw._new_services())
