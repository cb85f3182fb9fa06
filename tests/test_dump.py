"""`bmsgw dump`: a device's raw registers through the gateway's own RTU transport, from the simulator's serial
port; clear errors for a silent address, a refused table, a busy or missing port; `--json` writes a golden test
that tests/devicedump.py accepts as it is."""
import json
import re

import pytest
import serial

from gateway.cli import main
from gateway.dump import parse_range
from gateway.errors import GatewayError
from tests.coretools import offline_gateway
from tests.devicedump import all_profiles, check_dump, decode_dump
from tests.support import small_bank, write_config

ROW = re.compile(r"^\s+(\d+) 0x([0-9A-F]{4})  0x([0-9A-F]{4})\s+(\d+)\s+(-?\d+)$")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dumpsim")
    gw = offline_gateway(write_config(tmp, base=small_bank(1, 4)))  # bm-smd at 1, bm-bcs-12 at 2-5, bm-io at 201
    simulator = gw.make_simulator(wire_time=False).start()
    try:
        yield simulator
    finally:
        simulator.stop()


def dump(capsys, *args):
    code = main(["dump", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(stdout: str) -> dict[int, int]:
    """{register: value} from the printed table, each row's hex and decimal columns checked against each other."""
    out = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            address, value = int(m[1]), int(m[4])
            assert int(m[2], 16) == address and int(m[3], 16) == value
            assert int(m[5]) == (value - 0x10000 if value & 0x8000 else value)
            out[address] = value
    return out


def test_parse_range():
    assert parse_range("0-124") == (0, 124) and parse_range("7") == (7, 7) and parse_range("0x10-0x1F") == (16, 31)
    for bad in ("5-2", "a-b", "0-70000", "-3"):
        with pytest.raises(GatewayError, match="bad --range"):
            parse_range(bad)


def test_dump_prints_a_sensors_registers_and_writes_its_golden_test(sim, capsys, tmp_path):
    port = sim.ports()["bus1"]
    path = tmp_path / "bm-bcs-12.json"
    code, out, err = dump(capsys, "--port", port, "--baud", 115200, "--address", 3, "--table", "input",
                          "--range", "0-124", "--profile", "bm-bcs-12", "--json", path)
    assert code == 0, err
    regs = rows(out)
    assert sorted(regs) == list(range(125)), "every register of the range, one line each"
    assert out.startswith("# input registers 0-124 of address 3: 125 read, 0 refused")
    assert "read 125/125 registers" in err, "progress goes to stderr"
    # the words are the battery's: they decode to the voltage of the simulator's battery 2 (address 3)
    got = decode_dump(all_profiles()["bm-bcs-12"], {"input": {str(a): v for a, v in regs.items()}})
    truth = sim.model.value("cell.voltage", 1, 2, None)
    assert got[("cell.voltage", None, None)].value == pytest.approx(truth, rel=0.003)  # the sensor's accuracy
    assert re.search(r"#\s+cell.voltage = 13\.\d+", out), "decoded with the profile"
    # --json: the golden-test format, as the profile tests read it (the file name is the profile's)
    doc = json.loads(path.read_text())
    assert doc["profile"] == "bm-bcs-12" and f"address 3 on {port} at 115200 baud 8N1" in doc["source"]
    (case,) = doc["cases"]
    assert case["registers"] == {"input": {str(a): v for a, v in regs.items() if v}}  # a missing one reads as 0
    assert {e["point"] for e in case["expected"]} >= {"cell.voltage", "cell.temperature", "cell.ohmic"}
    check_dump(path)
    assert "wrote" in err and "5 expected readings of bm-bcs-12" in err


def test_both_tables_of_a_device_join_one_case_and_refused_registers_are_narrowed_down(sim, capsys, tmp_path):
    port = sim.ports()["bus1"]
    path = tmp_path / "bm-io.json"
    common = ("--port", port, "--baud", 115200, "--address", 201, "--profile", "bm-io", "--json", path,
              "--case", "room")
    code, out, err = dump(capsys, *common, "--table", "input", "--range", "0-9")
    assert code == 0, err
    # the I/O module maps one holding register (the relay): the other 124 are refused with exception 02, found
    # by splitting the refused request, and the run of them is one line
    code, out, err = dump(capsys, *common, "--table", "holding", "--range", "0-124")
    assert code == 0, err
    assert sorted(rows(out)) == [0]
    assert "   1-124 0x0001  refused: exception 02 (illegal data address)" in out
    assert "1 read, 124 refused" in out
    doc = json.loads(path.read_text())
    (case,) = doc["cases"]
    assert case["name"] == "room" and set(case["registers"]) == {"input", "holding"}
    points = {e["point"] for e in case["expected"]}
    assert {"io.ambient_temperature", "io.ambient_humidity", "io.di", "io.do"} <= points
    check_dump(path)


def test_a_silent_address_a_refused_table_and_bad_ports_say_so(sim, capsys, tmp_path):
    port = sim.ports()["bus1"]
    path = tmp_path / "none.json"
    code, out, err = dump(capsys, "--port", port, "--baud", 115200, "--address", 77, "--timeout-ms", 30,
                          "--retries", 1, "--json", path)
    assert code == 1 and out == ""
    assert f"bmsgw: no answer from address 77 on {port} at 115200 baud 8N1 after 2 tries" in err
    assert "wiring" in err and not path.exists()
    # (a cell sensor's only holding register is its write-only ohmic-test request, at 16)
    code, out, err = dump(capsys, "--port", port, "--baud", 115200, "--address", 3, "--table", "holding",
                          "--range", "0-15")
    assert code == 1 and "address 3 answers, but refused every holding register in 0-15" in err
    assert "try --table input" in err
    # a port another program holds (the gateway takes its ports exclusively too)
    with serial.Serial(port, exclusive=True):
        code, out, err = dump(capsys, "--port", port, "--address", 3)
    assert code == 2 and "the port is busy: another program has it open" in err
    code, out, err = dump(capsys, "--port", "/dev/does-not-exist", "--address", 3)
    assert code == 2 and "cannot open /dev/does-not-exist: no such device" in err
    code, out, err = dump(capsys, "--port", port, "--address", 3, "--profile", "no-such-sensor")
    assert code == 2 and "unknown --profile 'no-such-sensor'" in err
    code, out, err = dump(capsys, "--port", port, "--address", 300)
    assert code == 2 and "bad --address 300: a Modbus RTU slave address is 1-247" in err
    code, out, err = dump(capsys, "--port", port, "--address", 3, "--timeout-ms", 0)
    assert code == 2 and "bad --timeout-ms 0: 10-10000" in err
