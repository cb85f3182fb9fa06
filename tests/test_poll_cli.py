"""`bmsgw poll --once --json` on the default config: every battery answers through the serial path."""
import json
import subprocess

from tests.conftest import DEFAULT_CONFIG


def test_poll_once_json_reports_every_battery(venv_bin, bmsgw_env):
    out = subprocess.run([str(venv_bin / "bmsgw"), "poll", "--once", "--json", "--config", str(DEFAULT_CONFIG)],
                         capture_output=True, text=True, timeout=120, env=bmsgw_env, check=True)
    readings = json.loads(out.stdout)
    volts = [r for r in readings if r["point"] == "cell.voltage"]
    assert len(volts) == 480
    assert {(r["string"], r["cell"]) for r in volts} == {(s, c) for s in range(1, 5) for c in range(1, 121)}
    assert all(r["quality"] == "GOOD" and r["unit"] == "V" for r in volts)
    # 2 V VRLA cells on float: about 2.25 V each
    assert all(2.13 < r["value"] < 2.37 for r in volts)
    ohmic = [r for r in readings if r["point"] == "cell.ohmic"]
    assert len(ohmic) == 480 and all(0.0001 < r["value"] < 0.001 for r in ohmic)  # about 0.3 milliohm
    strings = {r["string"]: r["value"] for r in readings if r["point"] == "string.voltage"}
    assert sorted(strings) == [1, 2, 3, 4]
    for sid, total in strings.items():
        cells = sum(r["value"] for r in volts if r["string"] == sid)
        assert abs(total - cells) / cells < 0.01
