"""Meta-tests that keep the house honest: profiles vs schema and datasheets, hooks documented, plugin
folders complete; and a bad profile is refused with its file, key path and what was expected."""
import inspect
import json
import re
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway import hookspecs
from gateway.errors import ConfigError
from gateway.modbus import codecs
from gateway.profiles import load_profile, load_profiles
from tests.conftest import ROOT
from tests.coretools import offline_gateway
from tests.support import small_bank, write_config

SCHEMA = json.loads((ROOT / "profiles" / "schema.json").read_text())
PROFILE_FILES = sorted(ROOT.glob("plugins/*/profiles/*.yaml")) + sorted(
    p for p in (ROOT / "profiles").glob("*.yaml") if p.name != "points.yaml")
PLUGIN_FOLDERS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())
DATASHEETS = ROOT / "tests" / "testdata" / "datasheets"  # copies of the vendors' datasheets (text)


def test_there_are_profiles_for_every_model_of_the_datasheets():
    names = {p.stem for p in PROFILE_FILES}
    assert {"bm-bcs-02", "bm-bcs-06", "bm-bcs-12", "bm-smd", "bm-smd-concentrator", "btek-bmu-l", "btek-bmu-h",
            "btek-cmu", "bm-io"} <= names


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_profile_validates_against_the_schema(path):
    data = yaml.safe_load(path.read_text())
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    prof = load_profile(path)
    assert prof.name == path.stem and prof.registers


def test_the_point_catalog_validates_against_the_family_schema():
    data = yaml.safe_load((ROOT / "profiles" / "points.yaml").read_text())
    validator = jsonschema.Draft202012Validator(SCHEMA["definitions"]["pointFamily"])
    for item in data["points"]:
        validator.validate(item)
    ids = [p["id"] for p in data["points"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_register_can_carry_its_whole_measuring_range(path):
    for reg in load_profile(path).registers:
        if reg.valid_range is None or reg.dtype == "float32" or reg.bit is not None:
            continue
        lo, hi = codecs.limits(reg.dtype)
        if reg.not_available is not None:  # the not-available code is not a value
            hi = hi - 1 if reg.not_available == hi else hi
            lo = lo + 1 if reg.dtype.startswith("int") else lo
        assert lo * reg.scale + reg.offset <= reg.valid_range[0], f"{path.stem} {reg.point}"
        assert hi * reg.scale + reg.offset >= reg.valid_range[1], f"{path.stem} {reg.point}"


def _datasheet_rows() -> dict:
    bm = (DATASHEETS / "bm-bms-datasheet.txt").read_text()
    btek = (DATASHEETS / "btek-aiot-bms-datasheet.txt").read_text()
    out = {}
    temp = re.search(r"BM BCS-02\t02V\t[^\t]+\t(-?\d+)°C ~ (\d+)°C", bm)
    ohm = re.search(r"Range: ([\d.]+)mΩ~([\d.]+)mΩ", bm)
    for model, lo, hi in re.findall(r"BM BCS-(\d\d)\t\d\dV\t([\d.]+) ~ ([\d.]+)V", bm):
        out[f"bm-bcs-{model}"] = {"cell.voltage": (float(lo), float(hi)),
                                  "cell.temperature": (float(temp[1]), float(temp[2])),
                                  "cell.ohmic": (float(ohm[1]) / 1000, float(ohm[2]) / 1000)}
    smd = re.search(r"BM-BMS\t0 ~ (\d+)VDC[^\t]*\t-(\d+) ~ (\d+)A by hall sensor", bm)
    out["bm-smd"] = {"string.voltage": (0.0, float(smd[1])), "string.current": (-float(smd[2]), float(smd[3]))}
    row = re.compile(r"(L|H) type\t[^\t]+\t([\d.]+)~([\d.]+)V\t(-?\d+)~(\d+)°C\t([\d.]+)~([\d.]+)mΩ\t"
                     r"([\d.]+)V\t[^\t]+\t([\d.]+)°C\t[^\t]+\t([\d.]+)mΩ")
    for t, vlo, vhi, tlo, thi, rlo, rhi, vres, tres, rres in row.findall(btek):
        out[f"btek-bmu-{t.lower()}"] = {
            "cell.voltage": (float(vlo), float(vhi)), "cell.temperature": (float(tlo), float(thi)),
            "cell.ohmic": (float(rlo) / 1000, float(rhi) / 1000),
            "resolution": {"cell.voltage": float(vres), "cell.temperature": float(tres),
                           "cell.ohmic": float(rres) / 1000}}
    cmu = re.search(r"\nCMU\t0~(\d+)V\t([\d.]+)V\t[^\t]+\t([\d.]+)A", btek)
    out["btek-cmu"] = {"bank.voltage": (0.0, float(cmu[1])),
                       "resolution": {"bank.voltage": float(cmu[2]), "bank.charger_current": float(cmu[3])}}
    return out


# Where a profile deliberately accepts more than its datasheet, the profile file must say why (none does: a
# reading beyond the sensor's rating is OUT_OF_RANGE).
WIDENED: dict[tuple[str, str], str] = {}


def test_profile_ranges_and_resolutions_match_the_datasheets():
    sheets = _datasheet_rows()
    assert set(sheets) == {"bm-bcs-02", "bm-bcs-06", "bm-bcs-12", "bm-smd", "btek-bmu-l", "btek-bmu-h", "btek-cmu"}
    sheets["bm-smd-concentrator"] = dict(sheets["bm-smd"])
    # the concentrator serves whichever BCS model sits on each battery: the union of their ranges
    sheets["bm-smd-concentrator"].update({
        "cell.voltage": (sheets["bm-bcs-02"]["cell.voltage"][0], sheets["bm-bcs-12"]["cell.voltage"][1]),
        "cell.temperature": sheets["bm-bcs-12"]["cell.temperature"], "cell.ohmic": sheets["bm-bcs-12"]["cell.ohmic"]})
    profiles = {p.stem: (load_profile(p), p.read_text()) for p in PROFILE_FILES}
    checked = 0
    for name, sheet in sheets.items():
        prof, text = profiles[name]
        regs = {r.point: r for r in prof.registers}
        for point, rng in sheet.items():
            if point == "resolution":
                for p, res in rng.items():
                    assert regs[p].scale <= res * 1.0001, f"{name} {p}: scale {regs[p].scale} coarser than {res}"
                continue
            have = regs[point].valid_range
            if (name, point) in WIDENED:
                assert have[0] <= rng[0] and have[1] >= rng[1]
                assert WIDENED[(name, point)] in text, f"{name}: say why {point} is wider than the datasheet"
            else:
                assert have == pytest.approx(rng), f"{name} {point}: {have} != datasheet {rng}"
            checked += 1
    assert checked >= 20


def test_every_hook_is_typed_and_documented():
    specs = [(n, f) for n, f in inspect.getmembers(hookspecs.GatewaySpecs, inspect.isfunction)
             if n.startswith("bmsgw_")]
    assert len(specs) >= 10
    for name, fn in specs:
        doc = inspect.getdoc(fn)
        assert doc and len(doc) > 60, f"{name} needs a docstring saying who calls it, when, and what a return means"
        hints = typing.get_type_hints(fn, globalns=vars(hookspecs) | _type_names())
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        assert "return" in hints, f"{name}: return type"
        assert all(p in hints for p in params), f"{name}: every argument typed"


def _type_names() -> dict:
    """The names hookspecs imports only for type checking, imported for real."""
    import ast
    import importlib

    tree = ast.parse(Path(hookspecs.__file__).read_text())
    names: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                if isinstance(imp, ast.Import):
                    for alias in imp.names:
                        names[alias.asname or alias.name] = importlib.import_module(alias.name)
                elif isinstance(imp, ast.ImportFrom):
                    module = importlib.import_module("gateway" + ("." + imp.module if imp.module else ""))
                    for alias in imp.names:
                        names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


@pytest.mark.parametrize("folder", PLUGIN_FOLDERS, ids=lambda p: p.name)
def test_every_plugin_folder_has_readme_tests_and_one_dump_per_model(folder):
    readme = folder / "README.md"
    assert readme.exists() and len(readme.read_text()) > 200
    tests = folder / "tests"
    assert (tests / "__init__.py").exists() and list(tests.glob("test_*.py"))
    profiles = sorted(p.stem for p in (folder / "profiles").glob("*.yaml"))
    dumps = sorted(p.stem for p in (tests / "testdata").glob("*.json"))
    assert profiles and dumps == profiles, f"{folder.name}: one register dump per profile"


def _bad_profile(tmp_path: Path, data) -> ConfigError:
    d = tmp_path / "site-profiles"
    d.mkdir(exist_ok=True)
    (d / "bad.yaml").write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_profiles([d])
    return err.value


GOOD = {"model": "X", "vendor": "Y", "family": "cell_sensor", "scope": "cell",
        "registers": [{"point": "cell.voltage", "table": "input", "address": 0, "type": "uint16"}]}


@pytest.mark.parametrize("change, where, words", [
    ({"scope": "battery"}, "scope", "is not one of"),
    ({"registers": [{"point": "cell.voltage", "table": "input", "address": 0, "type": "uint17"}]},
     "registers[0].type", "is not one of"),
    ({"registers": [{"point": "cell.voltage", "table": "input", "address": 70000, "type": "uint16"}]},
     "registers[0].address", "greater than the maximum"),
    ({"registers": [{"point": "cell.voltage", "table": "input", "address": 0, "type": "uint16", "range": [5, 1]}]},
     "registers[0].range", "expected [low, high]"),
    ({"registers": [{"point": "cell.voltage", "table": "input", "address": 0, "type": "uint16",
                     "per_cell": {"stride": 1}}]}, "registers[0].per_cell", "only a string-scope device"),
    ({"identity": {"table": "input", "address": 0, "count": 2, "model_offset": 3, "model_code": 1}},
     "identity.model_offset", "below count"),
    ({"vendor": None}, "vendor", "is not of type 'string'"),
])
def test_a_bad_profile_names_file_key_path_and_expectation(tmp_path, change, where, words):
    err = _bad_profile(tmp_path, {**GOOD, **change})
    assert err.file.endswith("bad.yaml") and err.path == where and words in err.message


def test_a_profile_that_is_not_yaml_or_not_a_mapping_is_refused(tmp_path):
    err = _bad_profile(tmp_path, "model: [unclosed\n")
    assert "not valid YAML" in err.message and err.path.startswith("line ")
    err = _bad_profile(tmp_path, "- just\n- a list\n")
    assert "expected a mapping" in err.message


def test_a_register_of_an_unknown_family_is_refused_with_a_hint(tmp_path):
    d = tmp_path / "site-profiles"
    d.mkdir()
    bad = {**GOOD, "registers": [{"point": "cell.electrolyte", "table": "input", "address": 0, "type": "uint16"}]}
    (d / "bad.yaml").write_text(yaml.safe_dump(bad))
    cfg = small_bank(strings=1, cells=2)
    cfg["plugins"] = {"profile_dirs": [str(d)]}
    with pytest.raises(ConfigError) as err:
        offline_gateway(write_config(tmp_path, base=cfg))
    assert err.value.path == "registers[0].point" and "declare it under `points:`" in err.value.message


def test_a_site_profile_of_the_same_name_overrides_the_built_in(tmp_path):
    d = tmp_path / "site-profiles"
    d.mkdir()
    text = (ROOT / "plugins" / "string_sensor" / "profiles" / "bm-smd.yaml").read_text()
    (d / "bm-smd.yaml").write_text(text.replace("range: [0, 800]", "range: [0, 600]"))
    cfg = small_bank(strings=1, cells=2)
    cfg["plugins"] = {"profile_dirs": [str(d)]}
    gw = offline_gateway(write_config(tmp_path, base=cfg))
    reg = next(r for r in gw.profiles["bm-smd"].registers if r.point == "string.voltage")
    assert reg.valid_range == (0, 600) and gw.profiles["bm-smd"].source == str(d / "bm-smd.yaml")
