"""The ARM packages' emulated checks, run by a process of their own that starts with the test session.

On a machine with an empty cache (CI) building the arm64 and armhf packages and installing them under qemu-user
costs minutes of mostly emulated work, which does not depend on anything the rest of the suite does. So the
session starts it first (tests/conftest.py, `pytest_collection_modifyitems`), at a lower priority, in a process
of its own (nothing the other tests monkeypatch reaches it), and tests/test_deb_arm.py, collected last, waits
for its verdicts: it overlaps with the rest of the suite instead of adding to it.

For each architecture, side by side: the package (debian/make-deb, which makes the Debian 12 root, and the
armhf sysroot, when they are not cached), lintian in the background, then the lifecycle in a fresh root: one
`dpkg -i` without network, `bmsgw check-config` and `bmsgw poll --once` on the simulator as the service user,
purge, nothing left. The assertions are below; a failure is recorded with its traceback, and the test of that
architecture raises it.

    python -m tests.arm_pipeline RESULTS.json ARCH...     (as root; the log goes to stdout)
"""
from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tests.test_deb import Lintian, Steps, sh

ROOT = Path(__file__).resolve().parent.parent
ARCHES = ("arm64", "armhf")
# ELF e_machine of the extensions each package must bundle
ELF_MACHINE = {"arm64": 183, "armhf": 40}  # EM_AARCH64, EM_ARM
emulation = runpy.run_path(str(ROOT / "debian" / "emulation.py"))
NICE = 10  # below the rest of the suite: its timing-sensitive tests keep their pace, this takes the idle CPU
WAIT_S = 3600  # how long the ARM tests wait for the verdicts at most (a cold run takes minutes)


def build_deb(arch: str) -> Path:
    """The package of ``arch`` (reused by make-deb while the tree is unchanged); make-deb's output goes to the
    log as it comes, each line stamped with the time and the architecture."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "debian/make-deb"), "--out", "dist", f"--arch={arch}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(f"{time.strftime('%H:%M:%S')} [{arch}] {line}", end="", flush=True)
        lines.append(line)
    assert proc.wait() == 0, f"make-deb --arch={arch} exited {proc.returncode}:\n{''.join(lines[-80:])}"
    debs = [Path(ln.strip()) for ln in lines if re.search(rf"/bmsgw_[^/_]+_{arch}\.deb$", ln.strip())]
    assert debs and debs[-1].is_file(), "".join(lines[-40:])
    return debs[-1]


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

    def run(self, *argv: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        res = emulation["in_root"](self.path, argv, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"[{self.arch}] {' '.join(argv)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res


def lifecycle(arch: str, deb: Path, work: Path) -> str:
    """Install, run and purge ``deb`` in a fresh root of ``arch``; returns the steps' (emulated) times."""
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
    for bus in config["buses"]:
        # nor its timeout: the simulated sensors answer from a thread of the emulated process, on a machine busy
        # with the rest of the suite, and a reply that misses the timeout marks its sensor late (not retried)
        bus["timeout_ms"] = 2000
    (root.path / "tmp/sim.yaml").write_text(yaml.safe_dump(config))
    res = root.run("runuser", "-u", "bmsgw", "--", "bmsgw", "poll", "--once", "--json", "--config", "/tmp/sim.yaml")
    readings = yaml.safe_load(res.stdout)
    volts = [r for r in readings if r["point"] == "cell.voltage"]
    cells = sum(s["cells"] for s in config["strings"])
    assert len(volts) == cells == 480, (len(volts), cells)
    # every cell read, and plausible for its battery (a 2 V cell floats near 2.25 V, a 12 V block near 13.5 V)
    nominal = {s["id"]: s["battery"]["nominal_voltage"] for s in config["strings"]}
    wrong = [r for r in volts if r["quality"] != "GOOD" or not 0.8 < r["value"] / nominal[r["string"]] < 1.3]
    assert not wrong, wrong[:5]
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
    return step.report()


def run_arch(arch: str, work: Path) -> dict:
    """Everything for one architecture; what failed is recorded, never raised."""
    started = time.monotonic()
    result: dict = {"arch": arch, "error": None, "lintian": None, "lifecycle": None, "seconds": {}}

    def failed() -> str:
        return "".join(traceback.format_exc())

    try:
        emulation["ensure_emulation"](arch)
        deb = build_deb(arch)
    except emulation["EmulationError"] as exc:
        result["error"] = str(exc)
        return result
    except BaseException:  # recorded; the architecture's test raises it
        result["error"] = failed()
        return result
    result["seconds"]["build"] = round(time.monotonic() - started, 1)
    result["deb"] = str(deb)
    lint = Lintian(deb)  # in the background while the package is installed under emulation
    if os.geteuid() == 0:
        try:
            steps = lifecycle(arch, deb, work)
            result["lifecycle"] = "passed"
            print(f"arm_pipeline {arch} steps (emulated, not the controller's speed): {steps}", flush=True)
        except BaseException:
            result["lifecycle"] = failed()
    result["seconds"]["lifecycle"] = round(time.monotonic() - started - result["seconds"]["build"], 1)
    try:
        result["lintian"] = lint.findings()
    except BaseException:
        result["lintian"] = [f"E: lintian failed: {failed()}"]
    result["seconds"]["total"] = round(time.monotonic() - started, 1)
    return result


def main() -> None:
    out = Path(sys.argv[1])
    arches = sys.argv[2:] or list(ARCHES)
    work = out.parent / "roots"  # beside the verdicts: Worker.close() removes both, even after a kill
    # the architectures side by side: each is mostly one emulated, CPU-bound process at a time
    with ThreadPoolExecutor(max_workers=len(arches)) as pool:
        results = list(pool.map(lambda arch: run_arch(arch, work / arch), arches))
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps({r["arch"]: r for r in results}, indent=1))
    partial.rename(out)


class Worker:
    """The pipeline's process, started by the test session, waited for by the ARM tests."""

    def __init__(self, arches: tuple[str, ...] = ARCHES) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bmsgw-arm-pipeline-"))
        self.results_path = self.dir / "results.json"
        self.log_path = self.dir / "log.txt"
        self.started = time.monotonic()
        with open(self.log_path, "w") as log:
            # its own session: stop() ends it and every process it started (mmdebstrap, qemu, dpkg...)
            self.proc = subprocess.Popen(["nice", "-n", str(NICE), sys.executable, "-m", "tests.arm_pipeline",
                                          str(self.results_path), *arches], cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._results: dict | None = None

    def log_tail(self, chars: int = 8000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def results(self) -> dict:
        """Each architecture's verdicts (waits for the process; fails with its log if it gave none)."""
        if self._results is None:
            try:
                self.proc.wait(timeout=max(1.0, WAIT_S - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError(f"the ARM pipeline took over {WAIT_S} s; its log:\n{self.log_tail()}") from None
            if not self.results_path.exists():
                raise AssertionError(f"the ARM pipeline exited {self.proc.returncode} without verdicts; its log:\n"
                                     f"{self.log_tail()}")
            self._results = json.loads(self.results_path.read_text())
            self._results["waited_s"] = round(time.monotonic() - self.started, 1)
        return self._results

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
