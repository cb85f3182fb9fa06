"""Third-party plugins: a sensor type the core has never heard of, with a quirky register encoding and a new
point family, shows up in the store (through the simulator) and in the point map with no core change --
loaded from a plugin folder named in the config, and from the entry-point group `bmsgw.plugins`."""
import importlib
import json
import os
import sys

import pytest
import yaml

from gateway.errors import ConfigError, GatewayError
from gateway.plugins import ENTRY_POINT_GROUP
from gateway.points import PointRef, Quality
from tests.coretools import bmsgw, offline_gateway
from tests.devicedump import one_bus, poll_on_simulator
from tests.support import write_config

# A hydrogen detector that sends its reading as binary-coded decimal (0x1234 means 12.34 % LEL).
H2_PLUGIN = '''
"""Acme H2-100 hydrogen detector: readings in BCD."""
from gateway.hookspecs import hookimpl


def from_bcd(word):
    value = 0
    for shift in (12, 8, 4, 0):
        digit = (word >> shift) & 0xF
        if digit > 9:
            return None  # not a BCD number: let the reading be "not available"
        value = value * 10 + digit
    return value


def to_bcd(number):
    number = max(0, min(9999, int(round(number))))
    return int(str(number), 16)


@hookimpl
def bmsgw_decode_register(profile, register, words):
    if profile.family != "acme_h2":
        return None
    raw = from_bcd(words[0])
    return float("nan") if raw is None else raw * register.scale


@hookimpl
def bmsgw_encode_register(profile, register, value):
    if profile.family != "acme_h2":
        return None
    return [to_bcd(value / register.scale)]
'''

H2_PROFILE = {
    "model": "H2-100", "vendor": "Acme", "family": "acme_h2", "scope": "bank",
    "identity": {"table": "holding", "address": 100, "count": 2, "vendor_offset": 0, "vendor_code": 0xAC3E,
                 "model_offset": 1, "model_code": 0x0100},
    "points": [{"id": "bank.hydrogen", "scope": "bank", "slot": 100, "unit": "%", "dtype": "uint16", "scale": 0.01,
                "description": "Hydrogen concentration, per cent of the lower explosive limit"}],
    "registers": [{"point": "bank.hydrogen", "table": "holding", "address": 0, "type": "uint16", "scale": 0.01,
                   "range": [0, 40]}],
}


def h2_plugin_folder(tmp_path):
    folder = tmp_path / "site-plugins" / "acme_h2"
    (folder / "profiles").mkdir(parents=True)
    (folder / "__init__.py").write_text(H2_PLUGIN)
    (folder / "profiles" / "acme-h2.yaml").write_text(yaml.safe_dump(H2_PROFILE))
    return folder.parent


def h2_config(tmp_path, **plugins):
    cfg = one_bus({1: [{"profile": "bm-bcs-12", "address": 2, "count": 2}]}, cells=2,
                  bank=[{"profile": "acme-h2", "address": 50}])
    cfg["plugins"] = {"dirs": [str(h2_plugin_folder(tmp_path))], **plugins}
    return cfg


@pytest.fixture(autouse=True)
def forget_plugin_modules():
    yield
    for name in [m for m in sys.modules if m.startswith(("bmsgw_ext_", "acme_"))]:
        del sys.modules[name]


def test_a_plugin_folder_brings_a_new_sensor_type_with_a_quirky_encoding(tmp_path):
    async def then(gw):
        gw.simulator.model.set_override("bank.hydrogen", 12.34)
        await gw.engine.poll_once()

    gw = poll_on_simulator(tmp_path, h2_config(tmp_path), then=then)
    assert "dir:acme_h2" in [name for name, _ in gw.pm.list_name_plugin()]
    reading = gw.store.get(PointRef("bank.hydrogen"))
    assert reading.quality is Quality.GOOD and reading.value == pytest.approx(12.34)
    # what went over the wire was BCD: the generic codec would have read 0x1234 as 46.60
    sim_dev = gw.simulator.buses["bus1"].devices[50]
    words = gw.simulator.read(sim_dev, "holding", 0, 1)
    assert words == [0x1234]
    entry = gw.pointmap.by_ref[PointRef("bank.hydrogen")]
    assert entry.address == 1000 + 100 * 16 and entry.metric == "bms_bank_hydrogen_ratio"
    assert entry.json_path == "/bank/hydrogen" and entry.oid == (3, 101, 0)
    # the built-in sensors on the same bus are untouched by the plugin's decoder
    assert gw.store.get(PointRef("cell.voltage", 1, 1)).quality is Quality.GOOD


def test_a_plugin_decoder_that_raises_costs_its_value_not_the_bus(tmp_path, caplog):
    folder = h2_plugin_folder(tmp_path)
    source = folder / "acme_h2" / "__init__.py"
    source.write_text(source.read_text().replace("    raw = from_bcd(words[0])\n",
                                                 "    raise ValueError('corrupt BCD nibble')\n"))
    cfg = one_bus({1: [{"profile": "bm-bcs-12", "address": 2, "count": 2}]}, cells=2,
                  bank=[{"profile": "acme-h2", "address": 50}, {"profile": "bm-io", "address": 60}])
    cfg["plugins"] = {"dirs": [str(folder)]}

    async def then(gw):
        await gw.engine.poll_once()
        await gw.engine.poll_once()

    gw = poll_on_simulator(tmp_path, cfg, then=then)
    h2 = gw.store.get(PointRef("bank.hydrogen"))
    assert h2 is not None and h2.value is None and h2.quality is Quality.OUT_OF_RANGE
    # the other devices, before it and after it in the bus's batch, are read and stored
    assert gw.store.get(PointRef("cell.voltage", 1, 2)).quality is Quality.GOOD
    io = [ref for ref in gw.pointmap.by_ref if ref.point.startswith("io.")]
    assert io and all(gw.store.get(ref) is not None and gw.store.get(ref).quality is Quality.GOOD for ref in io)
    failures = [r for r in caplog.records if "bmsgw_decode_register failed" in r.getMessage()]
    assert len(failures) == 1 and "corrupt BCD nibble" in caplog.text  # said once, with the plugin's traceback
    assert "poll cycle failed" not in caplog.text


def test_the_plugin_works_through_the_console_scripts_with_no_core_change(tmp_path):
    path = write_config(tmp_path, base=h2_config(tmp_path))
    out = bmsgw("poll", "--once", "--json", "--config", path, check=True)
    h2 = [r for r in json.loads(out.stdout) if r["point"] == "bank.hydrogen"]
    assert h2 == [{"point": "bank.hydrogen", "value": 20.0, "unit": "%", "quality": "GOOD", "ts": h2[0]["ts"]}]
    regmap = bmsgw("regmap", "--format", "csv", "--config", path, check=True).stdout
    assert "2600,input,bank.hydrogen,,,,uint16,0.01,%,r" in regmap
    assert bmsgw("check-config", "--config", path).returncode == 0


def test_scan_identifies_the_third_party_sensor(tmp_path):
    gw = offline_gateway(write_config(tmp_path, base=h2_config(tmp_path)))
    sim = gw.make_simulator().start()
    try:
        out = bmsgw("scan", "--port", sim.ports()["bus1"], "--baud", "115200", "--ids", "50",
                    "--config", tmp_path / "config.yaml")
    finally:
        sim.stop()
    assert out.returncode == 0, out.stderr
    assert "{profile: acme-h2, bus: bus1, address: 50}  # Acme H2-100, bank" in out.stdout


def test_a_disabled_plugin_folder_is_not_loaded(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'acme-h2'"):
        offline_gateway(write_config(tmp_path, base=h2_config(tmp_path, disable=["acme_h2"])))


def test_a_plugin_that_fails_to_import_names_its_file(tmp_path):
    folder = tmp_path / "site-plugins" / "broken"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("import does_not_exist_anywhere\n")
    cfg = one_bus({1: []}, cells=1)
    cfg["plugins"] = {"dirs": [str(folder.parent)]}
    with pytest.raises(GatewayError) as err:
        offline_gateway(write_config(tmp_path, base=cfg))
    assert str(folder / "__init__.py") in str(err.value) and "does_not_exist_anywhere" in str(err.value)


# -- an installed package, found through its entry point -----------------------------------------------------
CC_MODULE = '''
"""Acme CC-1 conductance sensor: one per battery, with a point family of its own."""
from pathlib import Path

from gateway.hookspecs import hookimpl
from gateway.points import PointSpec


@hookimpl
def bmsgw_point_families():
    return [PointSpec(id="cell.conductance", scope="cell", unit="S", description="Conductance", slot=41,
                      dtype="uint16", scale=1.0, valid_range=(100, 5000))]


@hookimpl
def bmsgw_profile_dirs():
    return [Path(__file__).resolve().parent / "acme_cc_profiles"]
'''

CC_PROFILE = {
    "model": "CC-1", "vendor": "Acme", "family": "acme_cc", "scope": "cell", "nominal_voltage": 12,
    "registers": [{"point": "cell.voltage", "table": "input", "address": 0, "type": "uint16", "scale": 0.001,
                   "range": [7.5, 15.6]},
                  {"point": "cell.conductance", "table": "input", "address": 1, "type": "uint16",
                   "range": [100, 5000]}],
}


def installed_package(tmp_path):
    """What `pip install acme-cc` leaves in site-packages: the module, and a dist-info with its entry point."""
    site = tmp_path / "site-packages"
    (site / "acme_cc_profiles").mkdir(parents=True)
    (site / "acme_cc_plugin.py").write_text(CC_MODULE)
    (site / "acme_cc_profiles" / "acme-cc1.yaml").write_text(yaml.safe_dump(CC_PROFILE))
    dist = site / "acme_cc-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-cc\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nacme_cc = acme_cc_plugin\n")
    return site


def cc_config():
    return one_bus({1: [{"profile": "acme-cc1", "address": 10, "count": 3}]}, cells=3)


def test_an_installed_package_is_found_through_its_entry_point(tmp_path, monkeypatch):
    site = installed_package(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    gw = poll_on_simulator(tmp_path, cc_config())
    assert gw.pm.get_plugin("acme_cc") is not None
    for c in (1, 2, 3):
        r = gw.store.get(PointRef("cell.conductance", 1, c))
        assert r.quality is Quality.GOOD and r.value == 2550.0  # the simulator serves the middle of its range
    entry = gw.pointmap.by_ref[PointRef("cell.conductance", 1, 2)]
    assert entry.address == 10000 + 41 * 1024 + 1 and entry.metric == "bms_cell_conductance_siemens"
    # without entry points the profile is not there: it really came from the package
    with pytest.raises(ConfigError, match="unknown profile 'acme-cc1'"):
        offline_gateway(tmp_path / "config.yaml", entry_points=False)


def test_the_entry_point_plugin_through_the_console_script(tmp_path):
    site = installed_package(tmp_path)
    path = write_config(tmp_path, base=cc_config())
    env = dict(os.environ, PYTHONPATH=str(site))
    out = bmsgw("poll", "--once", "--json", "--config", path, env=env, check=True)
    cc = [r for r in json.loads(out.stdout) if r["point"] == "cell.conductance"]
    assert [(r["string"], r["cell"], r["unit"], r["quality"]) for r in cc] == [(1, c, "S", "GOOD") for c in (1, 2, 3)]
