"""The configuration: schema defaults, the topology it describes, and errors that name file, key path and
what was expected."""
import pytest
import yaml

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from tests.conftest import DEFAULT_CONFIG
from tests.coretools import offline_gateway
from tests.devicedump import all_profiles
from tests.support import small_bank, write_config

PROFILES = all_profiles()


def load(tmp_path, data, sections=None):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, PROFILES, sections or {})


def error(tmp_path, data, sections=None) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, data, sections)
    assert err.value.file.endswith("site.yaml")
    assert str(err.value) == f"{err.value.file}: {err.value.path}: {err.value.message}"
    return err.value


def test_the_default_config_is_the_bm_bms_maximum():
    cfg = offline_gateway(DEFAULT_CONFIG).config
    topo = cfg.topology
    assert [s.cells for s in topo.strings] == [120, 120, 120, 120] and topo.cell_count == 480
    assert len(topo.buses) == 4 and all(b.port == "sim" and b.baud == 115200 for b in topo.buses)
    profiles = sorted({d.profile for d in topo.devices})
    assert profiles == ["bm-bcs-02", "bm-io", "bm-smd", "btek-cmu"]
    # a bank a UPS could have: 2 V cells, about 270 V on float per string, inside the sensors' 0-800 V (SMD)
    # and 0-600 V (CMU)
    assert {(s.battery.nominal_voltage, s.battery.capacity_ah) for s in topo.strings} == {(2.0, 500.0)}
    float_v = 120 * 2.25
    smd = next(r for r in cfg.profiles["bm-smd"].registers if r.point == "string.voltage").valid_range
    cmu = next(r for r in cfg.profiles["btek-cmu"].registers if r.point == "bank.voltage").valid_range
    assert smd == (0, 800) and cmu == (0, 600) and 260 < float_v < 280
    assert cfg.section("simulator")["enabled"] is True


def test_defaults_are_filled_and_paths_resolve_next_to_the_file(tmp_path):
    cfg = load(tmp_path, {"buses": [{"name": "rs1", "port": "/dev/ttyS1"}]})
    assert cfg.data["gateway"]["poll"] == {"fast_s": 5, "slow_s": 300, "stale_after_cycles": 3, "lost_retry_s": 10}
    assert cfg.data["gateway"]["discovery"] == {"on_start": False, "ids": "1-247", "adopt": True, "search": True,
                                                "search_every_s": 300}
    bus = cfg.topology.buses[0]
    assert (bus.baud, bus.parity, bus.timeout_ms, bus.retries, bus.rs485, bus.index) == (9600, "N", 200, 1, False, 1)
    assert bus.silence == pytest.approx(3.5 * 10 / 9600)
    assert cfg.state_dir == tmp_path / "var"
    assert cfg.resolve("x/y") == tmp_path / "x" / "y" and str(cfg.resolve("/srv/x")) == "/srv/x"
    fast = load(tmp_path, {"buses": [{"name": "rs1", "port": "/dev/ttyS1", "baud": 115200}]}).topology.buses[0]
    assert fast.silence == pytest.approx(0.00175), "fixed 1.75 ms above 19200 baud"


def test_cell_sensor_runs_expand_to_one_device_per_battery(tmp_path):
    data = {"buses": [{"name": "rs1", "port": "/dev/ttyS1"}],
            "strings": [{"id": 2, "cells": 10, "battery": {"nominal_voltage": 6},
                         "devices": [{"profile": "bm-smd", "bus": "rs1", "address": 1},
                                     {"profile": "bm-bcs-06", "bus": "rs1", "address": 50, "count": 4},
                                     {"profile": "bm-bcs-06", "bus": "rs1", "address": 60, "first_cell": 5}]}]}
    topo = load(tmp_path, data).topology
    cells = [(d.address, d.cell) for d in topo.devices if d.profile == "bm-bcs-06"]
    assert cells == [(50, 1), (51, 2), (52, 3), (53, 4)] + [(60 + k, 5 + k) for k in range(6)]
    assert topo.strings[0].battery.cells_per_unit == 3
    assert all(d.string == 2 for d in topo.devices)


@pytest.mark.parametrize("data, where, words", [
    ({"buses": [{"name": "rs1", "port": "/dev/ttyS1", "baud": 9601}]}, "buses[0].baud", "is not one of"),
    ({"buses": [{"name": "rs1", "port": "/dev/ttyS1", "speed": 9600}]}, "buses[0]", "'speed' was unexpected"),
    ({"buses": [{"name": "rs1", "port": "x"}, {"name": "rs1", "port": "y"}]}, "buses[1].name", "used twice"),
    ({"buses": []}, "buses", "non-empty"),
    ({"strings": []}, "(top level)", "'buses' is a required property"),
    ({"buses": [{"name": "rs1", "port": "x"}], "strings": [{"id": 5, "cells": 4}]}, "strings[0].id",
     "greater than the maximum"),
    ({"buses": [{"name": "rs1", "port": "x"}], "strings": [{"id": 1, "cells": 4}, {"id": 1, "cells": 4}]},
     "strings[1].id", "used twice"),
    ({"buses": [{"name": "rs1", "port": "x"}],
      "strings": [{"id": 1, "cells": 4, "devices": [{"profile": "bm-bcs-12", "bus": "rs9", "address": 1}]}]},
     "strings[0].devices[0].bus", "unknown bus 'rs9'"),
    ({"buses": [{"name": "rs1", "port": "x"}],
      "strings": [{"id": 1, "cells": 4,
                   "devices": [{"profile": "bm-bcs-12", "bus": "rs1", "address": 1, "count": 5}]}]},
     "strings[0].devices[0].count", "exceed the string's 4 cells"),
    ({"buses": [{"name": "rs1", "port": "x"}],
      "strings": [{"id": 1, "cells": 20, "devices": [{"profile": "bm-bcs-12", "bus": "rs1", "address": 240}]}]},
     "strings[0].devices[0].count", "exceed 247"),
    ({"buses": [{"name": "rs1", "port": "x"}],
      "bank": {"devices": [{"profile": "bm-smd", "bus": "rs1", "address": 1}]}},
     "bank.devices[0].profile", "measures a string"),
    ({"buses": [{"name": "rs1", "port": "x"}],
      "strings": [{"id": 1, "cells": 2, "devices": [{"profile": "bm-smd", "bus": "rs1", "address": 1, "count": 2}]}]},
     "strings[0].devices[0].count", "only cell sensors take a count"),
    ({"buses": [{"name": "rs1", "port": "x"}], "bank": {"devices": [
        {"profile": "btek-cmu", "bus": "rs1", "address": 7}, {"profile": "bm-io", "bus": "rs1", "address": 7}]}},
     "bank.devices[1].address", "already used by bank.devices[0]"),
    ({"buses": [{"name": "rs1", "port": "x"}], "gateway": {"poll": {"fast_s": -1}}}, "gateway.poll.fast_s",
     "less than the minimum"),
    ({"buses": [{"name": "rs1", "port": "x"}], "snmp": {}}, "snmp", "unknown section"),
])
def test_errors_name_the_key_path_and_what_was_expected(tmp_path, data, where, words):
    err = error(tmp_path, data)
    assert err.path == where and words in err.message, str(err)


def test_face_sections_come_from_plugins_with_their_defaults(tmp_path):
    schema = {"snmp": {"type": "object", "additionalProperties": False,
                       "properties": {"port": {"type": "integer", "default": 1161},
                                      "listen": {"type": "string", "default": "127.0.0.1"}}}}
    cfg = load(tmp_path, {"buses": [{"name": "rs1", "port": "x"}], "snmp": {"port": 2161}}, schema)
    assert cfg.section("snmp") == {"port": 2161, "listen": "127.0.0.1"}
    assert load(tmp_path, {"buses": [{"name": "rs1", "port": "x"}]}, schema).section("snmp") == {
        "port": 1161, "listen": "127.0.0.1"}
    assert error(tmp_path, {"buses": [{"name": "rs1", "port": "x"}], "snmp": {"port": "x"}}, schema).path == "snmp.port"


@pytest.mark.parametrize("section", ["site", "snmp"])
def test_two_plugins_may_not_claim_one_section(tmp_path, monkeypatch, section):
    import gateway.app

    class Claims:
        @hookimpl
        def bmsgw_config_schema(self):
            return {section: {"type": "object"}}

    make = gateway.app.make_plugin_manager

    def with_two_claims(*args, **kwargs):
        pm = make(*args, **kwargs)
        pm.register(Claims(), name="claims-1")
        if section != "site":
            pm.register(Claims(), name="claims-2")
        return pm

    monkeypatch.setattr(gateway.app, "make_plugin_manager", with_two_claims)
    with pytest.raises(ConfigError) as err:
        offline_gateway(write_config(tmp_path, base=small_bank(strings=1, cells=2)))
    assert err.value.path == section and "claimed twice" in err.value.message
