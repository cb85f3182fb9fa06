"""The point map: one stable Modbus address, OID, metric and JSON path per point.

Stable means: the default config's map is a golden file, and adding a string, batteries, or a sensor
type the core has never heard of never moves a point that exists.
"""
import csv
import io
import json
import os
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from gateway.errors import ConfigError
from gateway.points import PointRef
from tests.conftest import DEFAULT_CONFIG, ROOT
from tests.coretools import bmsgw, offline_gateway
from tests.support import small_bank, write_config

GOLDEN = ROOT / "tests" / "golden" / "regmap_default.csv"
KEY_COLUMNS = ("address", "table", "point", "string", "cell", "type", "scale", "unit")

CONDUCTANCE_PROFILE = {
    "model": "CC-1", "vendor": "Acme", "family": "acme_cc", "scope": "cell", "nominal_voltage": 12,
    "points": [{"id": "cell.conductance", "scope": "cell", "slot": 40, "unit": "S", "dtype": "uint16",
                "scale": 1, "description": "Conductance (mho)"}],
    "registers": [{"point": "cell.voltage", "table": "input", "address": 0, "type": "uint16", "scale": 0.001},
                  {"point": "cell.conductance", "table": "input", "address": 1, "type": "uint16",
                   "range": [100, 5000]}],
}


def rows_by_key(text: str) -> tuple[list[str], dict[tuple[str, str], dict]]:
    reader = csv.DictReader(io.StringIO(text))
    return reader.fieldnames, {(r["address"], r["table"]): r for r in reader}


def config_in(folder: Path, base: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, base=base)


def entries(gw) -> dict[PointRef, tuple]:
    return {e.ref: (e.address, e.oid, e.metric, e.labels, e.json_path) for e in gw.pointmap}


def assert_nothing_moved(before, after):
    moved = [(ref, old, after.get(ref)) for ref, old in before.items() if after.get(ref) != old]
    assert not moved, f"{len(moved)} points moved, e.g. {moved[:3]}"


def test_regmap_of_the_default_config_keeps_every_golden_register():
    """`bmsgw regmap --format csv` still serves every register of the golden file, unchanged.

    New families add rows; nothing may move.  After adding a family on purpose, regenerate with
    BMSGW_UPDATE_GOLDEN=1 (the test then writes the file and passes).
    """
    out = bmsgw("regmap", "--format", "csv", "--config", DEFAULT_CONFIG, check=True).stdout
    if os.environ.get("BMSGW_UPDATE_GOLDEN"):
        GOLDEN.write_text(out)
    header, current = rows_by_key(out)
    golden_header, golden = rows_by_key(GOLDEN.read_text())
    assert set(KEY_COLUMNS) <= set(header) and header[:5] == ["address", "table", "point", "string", "cell"]
    assert len(golden) > 16000  # 480 batteries x 20 cell families, strings, bank, gateway; input + holding
    changed = [(k, golden[k], current.get(k)) for k in golden
               if current.get(k) is None or any(current[k][c] != golden[k][c] for c in golden_header)]
    assert not changed, f"{len(changed)} registers moved or changed, e.g. {changed[:2]}"


def test_addresses_follow_the_documented_formula():
    gw = offline_gateway(DEFAULT_CONFIG)
    pm = gw.pointmap
    # docs/register-map.md: cell = 10000 + slot*1024 + ((string-1)*256 + (cell-1))*width
    assert pm.by_ref[PointRef("cell.voltage", 1, 1)].address == 10000
    assert pm.by_ref[PointRef("cell.voltage", 2, 37)].address == 10000 + 256 + 36
    assert pm.by_ref[PointRef("cell.ohmic", 1, 1)].address == 12048
    assert pm.by_ref[PointRef("cell.ohmic", 4, 120)].address == 12048 + (3 * 256 + 119) * 2
    # string = 3000 + (string-1)*500 + slot*2; bank = 1000 + slot*16 + (channel-1)*2; gateway = slot*16 + ...
    assert pm.by_ref[PointRef("string.voltage", 3)].address == 4000
    assert pm.by_ref[PointRef("string.current", 1)].address == 3002
    assert pm.by_ref[PointRef("io.di", channel=3)].address == 1000 + 4 * 16 + 4
    assert pm.by_ref[PointRef("gateway.bus_requests", channel=2)].address == 10 * 16 + 2
    e = pm.by_ref[PointRef("cell.temperature", 2, 5)]
    assert e.oid == (6, 1, 4, 2, 5) and e.json_path == "/strings/2/cells/5/temperature"
    assert e.metric == "bms_cell_temperature_celsius" and e.labels == (("string", "2"), ("cell", "5"))
    # the 120 voltages of a string are one contiguous block a Modbus client reads in one request
    volts = [pm.by_ref[PointRef("cell.voltage", 1, c)].address for c in range(1, 121)]
    assert volts == list(range(10000, 10120))


def test_every_point_has_its_own_registers_oid_metric_and_path():
    gw = offline_gateway(DEFAULT_CONFIG)
    pm = gw.pointmap
    assert len(pm) > 8000
    spans = sorted((e.address, e.address + e.spec.width, e.ref) for e in pm)
    for (_, a1, r0), (b0, _, r1) in pairwise(spans):
        assert a1 <= b0, f"{r0} and {r1} overlap"
    assert spans[-1][1] <= 65536
    assert len({e.oid for e in pm}) == len(pm)
    assert len({(e.metric, e.labels) for e in pm}) == len(pm)
    assert len({e.json_path for e in pm}) == len(pm)
    assert list(pm.entries) == sorted(pm.entries, key=lambda e: e.address)
    assert all(pm.by_address[e.address] is e for e in pm)


def test_metric_names_use_base_units_and_say_counters():
    gw = offline_gateway(DEFAULT_CONFIG)
    by_id = {e.spec.id: e for e in gw.pointmap}
    assert by_id["cell.voltage"].metric == "bms_cell_voltage_volts"
    assert by_id["cell.ohmic"].metric == "bms_cell_ohmic_ohms"
    assert (by_id["string.soc"].metric, by_id["string.soc"].metric_factor) == ("bms_string_soc_ratio", 0.01)
    assert by_id["gateway.bus_timeouts"].metric == "bms_gateway_bus_timeouts_total"
    assert gw.pointmap.by_ref[PointRef("gateway.bus_timeouts", channel=2)].labels == (("bus", "2"),)


def test_adding_a_string_or_batteries_moves_nothing(tmp_path):
    three = small_bank(strings=3, cells=8)
    before = entries(offline_gateway(config_in(tmp_path / "a", three)))
    four = small_bank(strings=4, cells=8)
    after = entries(offline_gateway(config_in(tmp_path / "b", four)))
    assert len(after) > len(before)
    assert_nothing_moved(before, after)
    longer = small_bank(strings=3, cells=12)
    assert_nothing_moved(before, entries(offline_gateway(config_in(tmp_path / "c", longer))))
    # strings keep their numbers: dropping string 2 moves neither 1 nor 3
    gapped = small_bank(strings=3, cells=8)
    gapped["strings"].pop(1)
    gapped["buses"].pop(1)
    after_gap = entries(offline_gateway(config_in(tmp_path / "d", gapped)))
    assert_nothing_moved({r: v for r, v in before.items() if r.string != 2 and r.channel is None}, after_gap)


def test_a_new_sensor_type_with_a_new_family_moves_nothing(tmp_path):
    base = small_bank(strings=2, cells=8)
    before = entries(offline_gateway(config_in(tmp_path / "a", base)))
    site_profiles = tmp_path / "profiles"
    site_profiles.mkdir()
    (site_profiles / "acme-cc1.yaml").write_text(yaml.safe_dump(CONDUCTANCE_PROFILE))
    bigger = small_bank(strings=2, cells=8)
    bigger["strings"][1]["devices"].append({"profile": "acme-cc1", "bus": "bus2", "address": 100, "count": 8})
    bigger["plugins"] = {"profile_dirs": [str(site_profiles)]}
    gw = offline_gateway(write_config(tmp_path, base=bigger))
    after = entries(gw)
    assert_nothing_moved(before, after)
    new = gw.pointmap.by_ref[PointRef("cell.conductance", 2, 3)]
    assert new.address == 10000 + 40 * 1024 + 256 + 2
    assert new.metric == "bms_cell_conductance_siemens" and new.json_path == "/strings/2/cells/3/conductance"
    assert new.oid == (6, 1, 43, 2, 3)
    out = bmsgw("regmap", "--format", "json", "--config", tmp_path / "config.yaml", check=True).stdout
    regs = [r for r in json.loads(out)["registers"] if r["point"] == "cell.conductance"]
    assert len(regs) == 16 and {r["unit"] for r in regs} == {"S"}  # 8 cells x (input + holding)


def test_a_family_that_takes_an_occupied_slot_is_refused_with_both_names(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    clash = dict(CONDUCTANCE_PROFILE, points=[dict(CONDUCTANCE_PROFILE["points"][0], slot=1)])
    (profiles / "acme-cc1.yaml").write_text(yaml.safe_dump(clash))
    cfg = small_bank(strings=1, cells=4)
    cfg["plugins"] = {"profile_dirs": [str(profiles)]}
    with pytest.raises(ConfigError) as err:
        offline_gateway(write_config(tmp_path, base=cfg))
    assert "cell.conductance" in str(err.value) and "cell.temperature" in str(err.value)
    assert "acme-cc1.yaml" in str(err.value)


@pytest.mark.parametrize("fmt", ["json", "md"])
def test_regmap_other_formats_list_the_same_registers(fmt, tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=4))
    csv_rows = rows_by_key(bmsgw("regmap", "--format", "csv", "--config", path, check=True).stdout)[1]
    out = bmsgw("regmap", "--format", fmt, "--config", path, check=True).stdout
    if fmt == "json":
        doc = json.loads(out)
        assert {(str(r["address"]), r["table"]) for r in doc["registers"]} == set(csv_rows)
        assert doc["columns"][:3] == ["address", "table", "point"]
    else:
        lines = out.splitlines()
        assert lines[0].startswith("| address | table | point |") and len(lines) == len(csv_rows) + 2
