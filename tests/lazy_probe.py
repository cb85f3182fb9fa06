"""Run by tests/test_lazy_imports.py in a fresh interpreter: start a gateway with every face on (the default
config on a small bank), print which of the libraries a running gateway loads only when first needed are in
sys.modules, then use each such feature once and print again.  One JSON line per stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayThread, small_bank, write_config  # (tests.snmp_support imports pysnmp)

LAZY = ("flask", "werkzeug", "jinja2", "pysnmp", "pyasn1", "cryptography", "pymodbus", "prometheus_client", "smtplib",
        "urllib.request")


def loaded() -> list[str]:
    return sorted(m for m in LAZY if m in sys.modules)


def stage(name: str, **more) -> None:
    print(json.dumps({"stage": name, "loaded": loaded(), **more}), flush=True)


def net_snmp(tmp: Path, port: int, tool: str, community: str, *args: str,
             timeout: float = 5) -> subprocess.CompletedProcess:
    """A net-snmp tool, numeric OIDs, no snmp.conf of the user or the system (tests/snmp_support.py's way)."""
    env = {**os.environ, "SNMPCONFPATH": str(tmp), "SNMP_PERSISTENT_DIR": str(tmp / "net-snmp")}
    (tmp / "net-snmp" / "cert_indexes").mkdir(parents=True, exist_ok=True)
    return subprocess.run([tool, "-v2c", "-c", community, "-On", "-t", str(timeout), "-r", "0",
                           f"udp:127.0.0.1:{port}", *args], capture_output=True, text=True, env=env, timeout=60)


SYS_DESCR, SYS_NAME = "1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.5.0"


def main(folder: str) -> None:
    tmp = Path(folder)
    path = write_config(tmp, base=small_bank(1, 4), overrides={"snmp": {"v2c": {"community": "public"}}})
    with GatewayThread(path) as gt:
        stage("started")
        snmp = gt.gateway.service("snmp")
        port = snmp.agent.bound[1]
        descr = net_snmp(tmp, port, "snmpget", "public", SYS_DESCR)  # a v2c read: the fast path answers
        stage("snmp read", answered="bmsgw" in descr.stdout)
        # a SET: pysnmp's to answer (with an error: v2c never writes), loaded by this request
        refused = net_snmp(tmp, port, "snmpset", "public", SYS_NAME, "s", "x", timeout=30)
        net_snmp(tmp, port, "snmpget", "not-the-community", SYS_DESCR, timeout=0.3)
        gt.wait_for(lambda: snmp.status()["bad_community"] >= 1, what="pysnmp to count a wrong community")
        stage("snmp set", set_refused="Reason: " in refused.stderr, why=refused.stderr.strip()[-200:],
              still_read=net_snmp(tmp, port, "snmpget", "public", SYS_DESCR).stdout == descr.stdout)
        import urllib.request  # (not before: the gateway must not need it)

        metrics = gt.gateway.service("prometheus")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        stage("scrape", status=r.status, cell_voltage="bms_cell_voltage_volts{" in text)
        web = gt.gateway.service("web")
        with urllib.request.urlopen(f"{web.url}login", timeout=30) as r:
            page = r.read().decode()
        stage("web", status=r.status, login_form='name="password"' in page)


if __name__ == "__main__":
    main(sys.argv[1])
