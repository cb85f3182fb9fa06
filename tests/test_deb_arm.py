"""The packages for the controllers' architectures (arm64, armhf), built on this machine from the same lock and
run under qemu-user: each passes lintian, installs with one `dpkg -i` into a fresh Debian 12 root of its
architecture with no network, runs `bmsgw check-config` and `bmsgw poll --once` on the simulator there as the
service user, and purges leaving nothing behind.

The work (tests/arm_pipeline.py: the packages, lintian, the emulated install/run/purge with its assertions) runs
in a process that the session starts before the first test (tests/conftest.py), so that its minutes of
emulation overlap with the rest of the suite; these tests are collected last and wait for its verdicts. The
Debian 12 roots are made once and cached (debian/emulation.py: tarballs in $BMSGW_CACHE, default
/var/cache/bmsgw), the packages once per tree (debian/make-deb). Needs root (dpkg, chroot). Without
qemu-user-static and binfmt-support the tests fail with the reason: they never skip. Times measured under
emulation say nothing about the controller's speed and are not reported as such.
"""
from __future__ import annotations

import runpy

import pytest

from tests.arm_pipeline import ARCHES, ROOT, Worker
from tests.test_deb import needs_root

emulation = runpy.run_path(str(ROOT / "debian" / "emulation.py"))
WORKER_KEY = pytest.StashKey[Worker]()  # the session's pipeline process (tests/conftest.py starts it)


@pytest.fixture(scope="session")
def arm_results(request) -> dict:
    """The pipeline's verdicts by architecture; started here if the session did not start it already."""
    worker = request.config.stash.get(WORKER_KEY, None)
    if worker is None:
        worker = request.config.stash[WORKER_KEY] = Worker()
    results = worker.results()
    print(f"ARM pipeline: verdicts after {results['waited_s']} s of this session "
          + ", ".join(f"{a}: {results[a]['seconds']}" for a in ARCHES if a in results))
    return results


def verdict(results: dict, arch: str) -> dict:
    result = results.get(arch)
    assert result is not None, f"no verdict for {arch}: {sorted(results)}"
    if result["error"]:
        pytest.fail(f"[{arch}] {result['error']}", pytrace=False)
    return result


@needs_root
@pytest.mark.parametrize("arch", ARCHES)
def test_install_run_purge_under_emulation(arch, arm_results):
    outcome = verdict(arm_results, arch)["lifecycle"]
    if outcome != "passed":
        pytest.fail(f"[{arch}] install/run/purge under emulation:\n{outcome}", pytrace=False)


@pytest.mark.parametrize("arch", ARCHES)
def test_arm_lintian_clean(arch, arm_results):
    findings = verdict(arm_results, arch)["lintian"]
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
