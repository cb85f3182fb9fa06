"""What a running gateway does not need until a client asks is not loaded at start-up (memory on the
controller), and works when first asked: checked in a fresh interpreter (tests/lazy_probe.py), since this
test process has loaded everything already."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("lazy_probe.py")


def test_the_web_app_is_built_at_the_first_request(tmp_path):
    run = subprocess.run([sys.executable, str(PROBE), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    stages = {s["stage"]: s for s in map(json.loads, lines)}
    assert stages["started"]["loaded"] == []  # a gateway nobody browses never loads Flask, Werkzeug, Jinja
    web = stages["web"]
    assert web["status"] == 200 and web["login_form"]
    assert web["loaded"] == ["flask", "jinja2", "werkzeug"]
