"""`bmsgw provision`: the state directory is created and each plugin's missing secrets, once, never replaced."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import small_bank, write_config

PLUGIN = '''
import os
from gateway.hookspecs import hookimpl

@hookimpl
def bmsgw_provision(gateway):
    key = gateway.config.state_dir / "demo.key"
    if key.exists():
        return []
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    return [key]
'''


def bmsgw(*args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "bmsgw"
    env = {k: v for k, v in os.environ.items() if k != "BMSGW_CONFIG"}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_provision_creates_missing_secrets_once(tmp_path):
    plugdir = tmp_path / "site-plugins" / "demo_secret"
    plugdir.mkdir(parents=True)
    (plugdir / "__init__.py").write_text(PLUGIN)
    cfg = write_config(tmp_path, {"plugins": {"dirs": [str(tmp_path / "site-plugins")]}}, base=small_bank())
    state = tmp_path / "var"
    assert not state.exists()

    first = bmsgw("provision", "--config", str(cfg), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    key = state / "demo.key"
    assert first.stdout.strip() == f"created {key}"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    secret = key.read_bytes()

    again = bmsgw("provision", "--config", str(cfg), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{cfg}: nothing to create"
    assert key.read_bytes() == secret  # an upgrade's provision never replaces a key


def test_provision_reports_an_unwritable_state_dir(tmp_path):
    cfg = write_config(tmp_path, {"gateway": {"state_dir": "/proc/bmsgw-state"}}, base=small_bank())
    res = bmsgw("provision", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert "bmsgw: cannot create the state directory /proc/bmsgw-state" in res.stderr
    assert "Traceback" not in res.stderr
