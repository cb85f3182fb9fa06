"""What a running gateway does not need until a client asks is not loaded at start-up (memory on the
controller), and works when first asked: checked in a fresh interpreter (tests/lazy_probe.py), since this
test process has loaded everything already."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("lazy_probe.py")


def test_pysnmp_flask_and_prometheus_client_load_at_the_first_request_that_needs_them(tmp_path):
    run = subprocess.run([sys.executable, str(PROBE), str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    stages = {s["stage"]: s for s in map(json.loads, lines)}
    # a gateway nobody browses or scrapes, whose SNMP managers only read over v2c, whose Modbus clients never ask
    # its device identification and that has sent no mail or webhook yet: none loaded (pymodbus: the FC43/14
    # encoder, gateway/outputs/modbus_tcp tests it; smtplib and urllib.request: tests/test_notify_*.py)
    assert stages["started"]["loaded"] == []
    read = stages["snmp read"]
    assert read["answered"] and read["loaded"] == []  # the fast path answered without pysnmp
    snmp = stages["snmp set"]  # pysnmp answered the SET (v2c: noAccess) and counted the wrong community
    assert snmp["set_refused"] and "noAccess" in snmp["why"] and snmp["still_read"], snmp
    assert snmp["loaded"] == ["cryptography", "pyasn1", "pysnmp"]
    scrape = stages["scrape"]  # (urllib.request: the probe's own client)
    assert scrape["status"] == 200 and scrape["cell_voltage"]
    assert scrape["loaded"] == ["cryptography", "prometheus_client", "pyasn1", "pysnmp", "urllib.request"]
    web = stages["web"]
    assert web["status"] == 200 and web["login_form"]
    assert web["loaded"] == ["cryptography", "flask", "jinja2", "prometheus_client", "pyasn1", "pysnmp",
                             "urllib.request", "werkzeug"]
