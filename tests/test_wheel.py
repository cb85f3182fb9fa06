"""The wheel, installed the way a user installs it: built from a copy of the tree with the lock's setuptools,
put in a fresh venv together with the runtime part of requirements.lock (every file checked against its hash,
nothing resolved), and run from a folder outside the source tree, so that nothing can come from the checkout.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_CONFIG, ROOT
from tests.coretools import bmsgw
from tests.lock_support import bundled_pins

# The checkout's own venv: its pip and setuptools are the lock's.
PYTHON = sys.executable


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    bin: Path  # the fresh venv's bin/
    workdir: Path  # outside the source tree; holds a copy of config.yaml
    seconds: float  # building and installing


def run(*cmd: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BMSGW_CONFIG", "VIRTUAL_ENV")}
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def source_files() -> list[str]:
    """What git has or would add: the tree a release is built from (no .venv, no build output)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and os.path.lexists(ROOT / f))


def tree_state() -> dict[str, int]:
    """Every file of the checkout but .git and .venv, with its modification time."""
    state = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not (folder == str(ROOT) and d in (".git", ".venv"))]
        for name in files:
            path = os.path.join(folder, name)
            state[os.path.relpath(path, ROOT)] = os.lstat(path).st_mtime_ns
    return state


@pytest.fixture(scope="module")
def tree_before() -> dict[str, int]:
    return tree_state()


@pytest.fixture(scope="module")
def installed(tree_before, tmp_path_factory) -> InstalledWheel:
    started = time.monotonic()
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for name in source_files():  # links stay links: gateway/_data leads to profiles/ and mibs/
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name, follow_symlinks=False)
    run(PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", work / "dist", src, cwd=work)
    (wheel,) = (work / "dist").glob("bmsgw-*.whl")
    venv = work / "venv"
    run(PYTHON, "-m", "venv", "--without-pip", venv, cwd=work)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    requirements = work / "requirements.txt"
    requirements.write_text("".join(pin.requirement_line() + "\n" for pin in bundled_pins())
                            + f"bmsgw @ {wheel.as_uri()} --hash=sha256:{digest}\n")
    pip = [PYTHON, "-m", "pip", "--python", venv / "bin" / "python"]
    run(*pip, "install", "-q", "--require-hashes", "--no-deps", "--only-binary=:all:", "-r", requirements, cwd=work)
    run(*pip, "check", cwd=work)  # the runtime part of the lock is all the wheel needs
    run_dir = work / "run"
    run_dir.mkdir()
    shutil.copy(DEFAULT_CONFIG, run_dir / "config.yaml")
    return InstalledWheel(wheel, venv / "bin", run_dir, time.monotonic() - started)


def test_wheel_carries_the_data_and_the_plugins_but_no_tests(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected = set()
    for name in source_files():
        parts = Path(name).parts
        if parts[0] in ("profiles", "mibs"):
            expected.add(f"gateway/_data/{name}")
        elif parts[0] in ("gateway", "plugins") and "tests" not in parts and not os.path.islink(ROOT / name):
            expected.add(name)
    assert expected - names == set(), "files of the tree missing from the wheel"
    assert not [n for n in names if "/tests/" in n], "plugin tests went into the wheel"
    assert {"gateway/_data/profiles/points.yaml", "gateway/_data/profiles/schema.json",
            "gateway/_data/mibs/BMSGW-MIB.txt", "plugins/cell_sensor/profiles/bm-bcs-12.yaml",
            "gateway/outputs/web/templates/base.html"} <= names


def test_check_config_and_regmap_from_the_installed_wheel(installed):
    res = run(installed.bin / "bmsgw", "check-config", "--config", "config.yaml", cwd=installed.workdir)
    assert res.stdout.startswith("config.yaml: valid: 4 strings, 480 batteries, 486 devices on 4 buses")
    assert "9 profiles known" in res.stdout
    res = run(installed.bin / "bmsgw", "regmap", "--config", "config.yaml", "--format", "csv", cwd=installed.workdir)
    assert ",input,cell.voltage,1,1," in res.stdout
    no_bytecode = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # this module writes nothing into the checkout
    checkout = bmsgw("regmap", "--config", DEFAULT_CONFIG, "--format", "csv", env=no_bytecode, check=True).stdout
    assert res.stdout == checkout, "the installed wheel's register map differs from the checkout's"


def test_poll_once_on_the_simulator_from_the_installed_wheel(installed):
    res = run(installed.bin / "bmsgw", "poll", "--once", "--json", "--config", "config.yaml", cwd=installed.workdir)
    readings = json.loads(res.stdout)
    volts = [r for r in readings if r["point"] == "cell.voltage"]
    # the default bank's 2 V cells on float (BCS-02: 1.6-2.6 V)
    assert len(volts) == 480 and all(r["quality"] == "GOOD" and 2.1 < r["value"] < 2.4 for r in volts), volts[:5]
    assert "121 of 121 devices answer" in res.stderr


def test_mib_modules_from_the_installed_wheel(installed):
    res = run(installed.bin / "bmsgw", "mib", "--modules-dir", cwd=installed.workdir)
    shipped = Path(res.stdout.strip())
    assert shipped.is_relative_to(installed.bin.parent), shipped
    assert (shipped / "BMSGW-MIB.txt").read_bytes() == (ROOT / "mibs" / "BMSGW-MIB.txt").read_bytes()


def test_wheel_test_writes_nothing_into_the_source_tree(installed, tree_before):
    after = tree_state()
    changed = sorted(name for name in tree_before.keys() | after.keys() if tree_before.get(name) != after.get(name))
    assert not changed, f"written into the checkout: {changed[:20]}"
    print(f"wheel built and installed in {installed.seconds:.1f} s")
