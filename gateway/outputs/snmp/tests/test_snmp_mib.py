"""The MIBs in mibs/: generated from the point catalog, lint-clean, and resolvable by net-snmp."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from gateway.cliargs import offline_gateway
from gateway.outputs.snmp.mib import ALARM_COLUMNS, MibBuilder, decimals, mib_text, object_name
from tests.conftest import DEFAULT_CONFIG, ROOT
from tests.snmp_support import MIB_ARGS, MIBS, net_snmp_env

SHIPPED = MIBS / "BMSGW-MIB.txt"
STANDARD = ["SNMPv2-SMI", "SNMPv2-TC", "SNMPv2-CONF", "SNMPv2-MIB", "SNMP-FRAMEWORK-MIB", "UPS-MIB", "ENTITY-MIB",
            "ENTITY-SENSOR-MIB"]


@pytest.fixture(scope="module")
def gateway():
    return offline_gateway(str(DEFAULT_CONFIG))


def smilint(path, level: int = 6) -> str:
    env = dict(os.environ, SMIPATH=str(MIBS))
    proc = subprocess.run(["smilint", "-l", str(level), str(path)], capture_output=True, text=True, env=env,
                          timeout=60)
    return proc.stdout + proc.stderr


def test_shipped_mib_is_the_generated_one(tmp_path):
    """The point map stays the single source of truth: `bmsgw mib` must reproduce mibs/BMSGW-MIB.txt."""
    out = tmp_path / "BMSGW-MIB.txt"
    proc = subprocess.run([sys.executable, "-m", "gateway", "mib", "--config", str(DEFAULT_CONFIG), "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == SHIPPED.read_text(), (
        "mibs/BMSGW-MIB.txt is out of date with the point catalog: run `bmsgw mib -o mibs/BMSGW-MIB.txt`")


def test_smilint_prints_nothing_for_the_project_mib():
    assert smilint(SHIPPED) == ""


def test_smilint_is_clean_for_another_enterprise_number(tmp_path, gateway):
    path = tmp_path / "BMSGW-MIB.txt"
    path.write_text(mib_text(gateway.catalog, (1, 3, 6, 1, 4, 1, 99999)))
    assert smilint(path) == ""
    assert "::= { enterprises 99999 }" in path.read_text()


def test_smilint_finds_real_errors(tmp_path):
    """The check fails on output, so it must produce output for a broken module (smilint exits 0 either way)."""
    broken = tmp_path / "BMSGW-MIB.txt"
    broken.write_text(SHIPPED.read_text().replace('UNITS       "V"', 'UNITS       ""', 1))
    assert "zero-length units" in smilint(broken)


@pytest.mark.parametrize("module", STANDARD[3:])
def test_standard_modules_have_no_errors(module):
    """The IETF modules shipped with the project load without errors (level 3: errors, not style)."""
    assert smilint(MIBS / f"{module}.txt", level=3) == ""


def test_every_object_resolves_by_name_and_matches_the_point_map(gateway, tmp_path):
    """snmptranslate finds every BMSGW-MIB object, and each point's OID is the point map's."""
    objects = sorted({e.spec.id: e for e in gateway.pointmap}.values(), key=lambda e: e.address)
    names = [f"BMSGW-MIB::{object_name(e.spec)}.{'.'.join(map(str, index_of(e)))}" for e in objects]
    names += [f"BMSGW-MIB::{name}" for name, *_ in ALARM_COLUMNS[1:]]
    names += ["BMSGW-MIB::bmsgwAlarmRaised", "BMSGW-MIB::bmsgwAlarmCleared", "BMSGW-MIB::bmsgwAlarmLastChanged",
              "UPS-MIB::upsBatteryVoltage", "UPS-MIB::upsEstimatedMinutesRemaining", "ENTITY-MIB::entPhysicalName",
              "ENTITY-SENSOR-MIB::entPhySensorValue", "SNMPv2-MIB::sysORDescr", "SNMPv2-MIB::snmpInBadCommunityNames",
              "SNMP-FRAMEWORK-MIB::snmpEngineBoots", "UPS-MIB::upsIdentManufacturer", "UPS-MIB::upsAlarmDescr",
              "UPS-MIB::upsAlarmTime", "UPS-MIB::upsAlarmLowBattery", "UPS-MIB::upsConfigLowBattTime",
              "UPS-MIB::upsOutputSource", "UPS-MIB::upsTrapAlarmEntryAdded", "UPS-MIB::upsTrapOnBattery"]
    proc = subprocess.run(["snmptranslate", *MIB_ARGS, "-On", *names], capture_output=True, text=True,
                          env=net_snmp_env(tmp_path), timeout=60)
    assert proc.stderr == "", proc.stderr
    oids = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(oids) == len(names)
    for e, oid in zip(objects, oids, strict=False):  # the names after the objects only had to resolve
        assert oid == ".1.3.6.1.4.1.32473.1." + ".".join(map(str, e.oid)), e.spec.id
    # added to the system's MIB folders and modules (-M +mibs -m +ALL): still resolves (Debian's own
    # net-snmp MIBs then complain on stderr about IETF modules Debian does not ship; not ours)
    proc = subprocess.run(["snmptranslate", "-M", f"+{MIBS}", "-m", "+ALL", "-On", names[0], names[-1]],
                          capture_output=True, text=True, env=net_snmp_env(tmp_path), timeout=60)
    assert [line for line in proc.stdout.splitlines() if line.strip()] == [oids[0], oids[-1]]
    assert "BMSGW-MIB" not in proc.stderr and "UPS-MIB" not in proc.stderr


def index_of(e):
    head = 3 if e.spec.scope in ("cell", "string") or e.spec.channels else 2
    return e.oid[head:]


def test_display_hint_and_units_agree(gateway, tmp_path):
    """A fixed-point value's DISPLAY-HINT has the scale's decimals and its UNITS the SI unit (V, not mV)."""
    builder = MibBuilder(gateway.catalog, (1, 3, 6, 1, 4, 1, 32473))
    text = builder.text()
    tc_hint = dict(re.findall(r"(Bmsgw\w*Decimal\d) ::= TEXTUAL-CONVENTION\s+DISPLAY-HINT \"(d-\d)\"", text))
    assert tc_hint
    checked = 0
    for obj in builder.objects:
        n = decimals(obj.spec.scale)
        if n is None or obj.spec.kind != "gauge":
            continue
        assert tc_hint[obj.tc] == f"d-{n}", obj.spec.id
        assert obj.units in ("V", "A", "degrees Celsius", "ohm", "percent", "seconds"), obj.spec.id
        checked += 1
    assert checked >= 10
    detail = subprocess.run(["snmptranslate", *MIB_ARGS, "-Td", "BMSGW-MIB::bmsgwCellOhmic"], capture_output=True,
                            text=True, env=net_snmp_env(tmp_path), timeout=60).stdout
    assert 'DISPLAY-HINT\t"d-6"' in detail and 'UNITS\t\t"ohm"' in detail


def test_mib_command_rejects_a_base_oid_outside_enterprises(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gateway", "mib", "--config", str(DEFAULT_CONFIG),
                           "--base-oid", "1.3.6.1.2.1.999"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "enterprises" in proc.stderr
