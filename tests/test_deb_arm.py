"""The packages for the controllers' architectures (arm64, armhf), built on this machine from the same lock and
run under qemu-user: each passes lintian, installs with one `dpkg -i` into a fresh Debian 12 root of its
architecture with no network, runs `bmsgw check-config` and `bmsgw poll --once` on the simulator there as the
service user, and purges leaving nothing behind.

The roots are made once and cached (debian/emulation.py: a tarball per architecture in $BMSGW_CACHE, default
/var/cache/bmsgw); the packages are built once per tree (debian/make-deb reuses them while the tree is
unchanged), both in the first test that needs them. Needs root (dpkg, chroot). Without qemu-user-static and
binfmt-support the tests fail with the reason: they never skip. Times measured under emulation say nothing
about the controller's speed and are not reported as such.
"""
from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.test_deb import Lintian, Steps, needs_root, sh

ROOT = Path(__file__).resolve().parent.parent
ARCHES = ("arm64", "armhf")
# ELF e_machine of the extensions each package must bundle
ELF_MACHINE = {"arm64": 183, "armhf": 40}  # EM_AARCH64, EM_ARM
emulation = runpy.run_path(str(ROOT / "debian" / "emulation.py"))


def ensure_emulation(arch: str) -> None:
    try:
        emulation["ensure_emulation"](arch)
    except emulation["EmulationError"] as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def arm_debs() -> dict[str, Path]:
    """Both packages, built in one make-deb call (or reused while the tree is unchanged)."""
    for arch in ARCHES:
        ensure_emulation(arch)
    res = sh(sys.executable, ROOT / "debian/make-deb", "--out", "dist", *(f"--arch={a}" for a in ARCHES),
             check=False)
    assert res.returncode == 0, f"make-deb failed:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    debs = {}
    for line in res.stdout.splitlines():
        m = re.search(r"/bmsgw_[^/_]+_(\w+)\.deb$", line)
        if m and Path(line).is_file():
            debs[m.group(1)] = Path(line)
    assert sorted(debs) == sorted(ARCHES), res.stdout[-3000:]
    return debs


@pytest.fixture(scope="module")
def arm_lintian(arm_debs) -> dict[str, Lintian]:
    """lintian runs in the background while the packages are installed under emulation."""
    return {arch: Lintian(deb) for arch, deb in arm_debs.items()}


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


def traces(root: Path) -> set[str]:
    out = []
    for top in ("etc", "var/lib", "usr", "lib"):
        for dirpath, dirnames, filenames in os.walk(root / top):
            out += [os.path.join(dirpath, n) for n in dirnames + filenames if "bmsgw" in n]
    return {str(Path(p).relative_to(root)) for p in out}


class Root:
    """A fresh Debian 12 root of one architecture; commands run in it chrooted, without network."""

    def __init__(self, arch: str, path: Path) -> None:
        self.arch = arch
        self.path = emulation["fresh_root"](arch, path)

    def run(self, *argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        res = emulation["in_root"](self.path, argv, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"[{self.arch}] {' '.join(argv)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res


@pytest.fixture(scope="module")
def arm_lifecycles(arm_debs, arm_lintian, tmp_path_factory) -> dict[str, BaseException | None]:
    """Both lifecycles side by side (each is one emulated CPU-bound process at a time: two cores, two
    architectures), with lintian in the background; what each raised, by architecture."""
    def one(arch: str) -> BaseException | None:
        try:
            lifecycle(arch, arm_debs[arch], tmp_path_factory.mktemp(f"root-{arch}"))
        except BaseException as exc:  # noqa: BLE001  (re-raised by the architecture's own test)
            return exc
        return None

    with ThreadPoolExecutor(max_workers=len(ARCHES)) as pool:
        return dict(zip(ARCHES, pool.map(one, ARCHES)))


@needs_root
@pytest.mark.parametrize("arch", ARCHES)
def test_install_run_purge_under_emulation(arch, arm_lifecycles):
    if arm_lifecycles[arch] is not None:
        raise arm_lifecycles[arch]


def lifecycle(arch: str, deb: Path, work: Path) -> None:
    step = Steps()
    assert sh("dpkg-deb", "-f", deb, "Architecture").stdout.strip() == arch
    root = Root(arch, work / "root")
    # The root really is the target's: its own binaries run, under qemu-user.
    assert root.run("uname", "-m").stdout.strip() == emulation["MACHINES"][arch]
    assert root.run("dpkg", "--print-architecture").stdout.strip() == arch
    before = traces(root.path)
    step("root")

    # 1. One dpkg -i, no network, nothing else installed first. (Most of its time is the postinst compiling
    # the bytecode under emulation.)
    shutil.copy(deb, root.path / "tmp" / deb.name)
    root.run("dpkg", "-i", f"/tmp/{deb.name}")
    step("install")
    version = deb.name.split("_")[1]
    status = root.run("dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version} ${Architecture}", "bmsgw").stdout
    assert status.split() == ["ii", version, arch], status
    # the bundled extensions are the target's (cffi's, argon2's and Pillow's: armhf builds those from source)
    site = next((root.path / "usr/lib/bmsgw/lib").glob("python3.*/site-packages"))
    for pattern in ("_cffi_backend*.so", "PIL/_imaging.*.so", "_argon2_cffi_bindings/_ffi*.so"):
        found = list(site.glob(pattern))
        assert found, f"{pattern} not bundled"
        assert elf_machine(found[0]) == ELF_MACHINE[arch], found[0]
    assert root.run("bmsgw", "--version").stdout.strip() == f"bmsgw {version.split('-')[0]}"

    # 2. The packaged configuration is valid for the service user.
    res = root.run("runuser", "-u", "bmsgw", "--", "bmsgw", "check-config")
    assert res.stdout.startswith("/etc/bmsgw/config.yaml: valid:"), res.stdout + res.stderr
    step("check-config")

    # 3. One poll of the simulated bank of the default configuration (480 cells), as the service user.
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["gateway"]["state_dir"] = "/var/lib/bmsgw"
    config["simulator"]["wire_time"] = False  # the bus's pace is not what this test is about
    (root.path / "tmp/sim.yaml").write_text(yaml.safe_dump(config))
    res = root.run("runuser", "-u", "bmsgw", "--", "bmsgw", "poll", "--once", "--json", "--config", "/tmp/sim.yaml")
    readings = yaml.safe_load(res.stdout)
    volts = [r for r in readings if r["point"] == "cell.voltage"]
    cells = sum(s["cells"] for s in config["strings"])
    assert len(volts) == cells == 480, (len(volts), cells)
    assert all(r["quality"] == "GOOD" and 10 < r["value"] < 16 for r in volts), \
        [r for r in volts if r["quality"] != "GOOD" or not 10 < r["value"] < 16][:5]
    step("poll")

    # 4. Purge: nothing left, no user, no group, no stat override.
    root.run("dpkg", "--purge", "bmsgw")
    step("purge")
    assert root.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "bmsgw", check=False).stdout.strip() in ("", "pn")
    left = sorted(traces(root.path) - before)
    assert not left, f"left behind after purge: {left}"
    assert root.run("getent", "passwd", "bmsgw", check=False).returncode == 2, "the bmsgw user survived the purge"
    assert root.run("getent", "group", "bmsgw", check=False).returncode == 2, "the bmsgw group survived the purge"
    assert "bmsgw" not in root.run("dpkg-statoverride", "--list", check=False).stdout  # exit 1: none at all
    shutil.rmtree(root.path)
    # test time under emulation, not the controller's speed
    print(f"test_deb_arm {arch} steps (emulated):", step.report())


@pytest.mark.parametrize("arch", ARCHES)
def test_arm_lintian_clean(arch, arm_lintian):
    findings = arm_lintian[arch].findings()
    assert not findings, f"lintian ({arch}):\n" + "\n".join(findings)


def test_missing_emulation_is_an_error_with_its_reason(monkeypatch):
    """Without qemu-user-static the ARM tests and builds stop with what to install, never a silent skip."""
    ensure = emulation["ensure_emulation"]
    monkeypatch.setitem(ensure.__globals__, "host_arch", lambda: "amd64")
    monkeypatch.setattr(emulation["shutil"], "which", lambda tool: None if tool.startswith("qemu-") else "/x")
    with pytest.raises(emulation["EmulationError"], match=r"cannot run arm64 binaries: qemu-aarch64-static "
                                                          r"missing .*qemu-user-static"):
        ensure("arm64")
    with pytest.raises(emulation["EmulationError"], match="unknown architecture 'mips'"):
        ensure("mips")
