"""The Debian package, end to end: build it, lint it, install it with dpkg, run it as the service user the
way its systemd unit would, upgrade it over itself keeping a changed conffile, purge it, find nothing left.

Needs root (dpkg); this machine's systemd is not PID 1, so the unit is started by hand: its User, groups,
capabilities and NoNewPrivileges are applied with setpriv, and MemoryDenyWriteExecute with the kernel's
PR_SET_MDWE where the kernel has it.  The build is reused while the tree is unchanged (debian/make-deb).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from tests.lock_support import bundled_pins, lockfile

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
SYSTEM_PY = "/usr/bin/python3"
UNIT = "/lib/systemd/system/bmsgw.service"
LEFT_BEHIND = ["/etc/bmsgw", "/var/lib/bmsgw", "/usr/lib/bmsgw", "/usr/share/bmsgw", UNIT,
               "/usr/lib/sysusers.d/bmsgw.conf", "/usr/lib/tmpfiles.d/bmsgw.conf", "/usr/bin/bmsgw",
               "/etc/systemd/system/multi-user.target.wants/bmsgw.service"]
# Left by a run of this test that was killed before it could clean up (never by a real installation).
MARKER = Path("/var/tmp/bmsgw-deb-test.running")
MAX_EXPOSURE = 2.0  # systemd-analyze security; docs/install.md records the figure

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="installing a .deb needs root (dpkg)")


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    res = subprocess.run([str(c) for c in cmd], **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def traces() -> set[str]:
    """Every path named after the package where a package, dpkg or systemd puts files."""
    out = sh("find", "/etc", "/var/lib", "/usr/lib", "/usr/share", "/usr/bin", "/usr/sbin", "/lib", "-xdev",
             "-name", "*bmsgw*", check=False).stdout
    return set(out.split())


def installed_version() -> str | None:
    res = sh("dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", "bmsgw", check=False)
    if res.returncode != 0 or not res.stdout.startswith(("ii", "iF", "iU", "rc", "iH")):
        return None
    return res.stdout.split()[-1]


# --force-unsafe-io: no fsync per unpacked file (only a crash of this machine would notice).
# --no-triggers: other packages' triggers (man-db indexing the man page) run once, at the end of the test.
DPKG = ["dpkg", "--force-unsafe-io", "--no-triggers"]


def purge() -> None:
    sh(*DPKG, "--purge", "bmsgw", check=False)
    sh("dpkg", "--triggers-only", "--pending", check=False)


@pytest.fixture(scope="module")
def deb() -> Path:
    res = sh(sys.executable, ROOT / "debian/make-deb", "--out", "dist", capture_output=True)
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == DIST, res.stdout
    return path


@pytest.fixture(scope="module")
def lintian(deb):
    """lintian runs in the background while the package is installed and exercised."""
    return Lintian(deb)


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit file, in order (repeatable keys keep all their values)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def setpriv_for_unit(unit: dict[str, list[str]]) -> list[str]:
    """The unit's identity and privileges as a setpriv command line (systemd is not PID 1 here)."""
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in " ".join(unit["AmbientCapabilities"]).split())
    bounding = ",".join("+" + c.lower().removeprefix("cap_") for c in " ".join(unit["CapabilityBoundingSet"]).split())
    cmd = ["setpriv", f"--reuid={unit['User'][0]}", f"--regid={unit['Group'][0]}",
           f"--groups={','.join(' '.join(unit['SupplementaryGroups']).split())}",
           f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set=-all,{bounding}"]
    if unit["NoNewPrivileges"] == ["yes"]:
        cmd.append("--no-new-privs")
    return cmd


# MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE (Linux 6.3+) refuses W+X mappings the same way and
# is kept across exec; on an older kernel the gateway runs without it.
MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("bmsgw-test: this kernel has no PR_SET_MDWE; running without it", file=sys.stderr)
os.execvp(sys.argv[1], sys.argv[1:])
"""


class Service:
    """``ExecStart`` of the installed unit, started as the unit would start it, with its log captured."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        self.log_path = workdir / f"run-{time.monotonic_ns()}.log"
        with open(self.log_path, "w") as log:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"bmsgw exited {self.proc.returncode} before {pattern!r}:\n{self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the log:\n{self.text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


class Lintian:
    """lintian's errors and warnings for the .deb; the verdict is cached per .deb and lintian version."""

    def __init__(self, deb: Path) -> None:
        version = sh("lintian", "--version").stdout.strip()
        digest = hashlib.sha256(deb.read_bytes() + version.encode()).hexdigest()[:16]
        self.prefix = f".lintian-{deb.stem}-"  # one verdict kept per package name, version and architecture
        self.cache = DIST / f"{self.prefix}{digest}.txt"
        self.proc = None
        if not self.cache.exists():
            self.proc = subprocess.Popen(["lintian", "--display-level", ">=warning", str(deb)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def findings(self) -> list[str]:
        if self.proc is not None:
            out, err = self.proc.communicate(timeout=600)
            assert self.proc.returncode in (0, 1, 2), err  # 2: tags at error level, listed below
            for old in DIST.glob(f"{self.prefix}*.txt"):
                old.unlink()
            self.cache.write_text(out)
            self.proc = None
        return [ln for ln in self.cache.read_text().splitlines() if re.match(r"^[EW]: ", ln)]


# -- quick checks, no root needed -----------------------------------------------------------------------------
def test_bundled_versions_are_the_tested_ones():
    """The .deb bundles the runtime part of requirements.lock: exactly what this suite runs against, covering
    pyproject.toml's pins, and debian/copyright lists exactly those libraries."""
    bundled = bundled_pins()
    stale = {p.name: (p.version, metadata.version(p.name)) for p in bundled if metadata.version(p.name) != p.version}
    assert not stale, f"bundled != tested (name: (lock, .venv)); run make install: {stale}"
    lock = {p.name: p.version for p in bundled}
    for dep in lockfile.project_dependencies():
        name, version = re.split(r"==", dep)
        assert lock.get(canonicalize_name(name.strip())) == version.strip(), f"{dep} not pinned in the lock"
    copyright_text = (ROOT / "debian/copyright").read_text()
    listed = {canonicalize_name(name): version
              for name, version in re.findall(r"(?m)^  (\S+) (\S+): \S", copyright_text)}
    assert listed == lock, "debian/copyright (left) is not the bundled set (right); run make deb-copyright"


def test_unit_hardening_and_exposure():
    unit_file = ROOT / "debian/bmsgw.service"
    unit = unit_settings(unit_file.read_text())
    assert unit["User"] == ["bmsgw"] and unit["SupplementaryGroups"] == ["dialout"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"] == unit["CapabilityBoundingSet"]
    assert unit["Restart"] == ["on-failure"] and unit["ProtectSystem"] == ["strict"]
    assert "/var/lib/bmsgw" in unit["ReadWritePaths"][0].split()
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "MemoryDenyWriteExecute", "RestrictSUIDSGID"):
        assert unit[key] == ["yes"], key
    assert unit["SystemCallFilter"][0] == "@system-service"
    res = sh("systemd-analyze", "security", "--offline=true", "--no-pager", unit_file)
    exposure = float(re.search(r"Overall exposure level for bmsgw.service: ([0-9.]+)", res.stdout).group(1))
    assert exposure <= MAX_EXPOSURE, res.stdout
    install = (ROOT / "docs" / "install.md").read_text()
    assert f"exposure level {exposure}" in install, f"docs/install.md should record the exposure figure {exposure}"


def test_packaged_config_is_valid_and_safe(tmp_path):
    """The packaged config passes check-config and holds only sections this tree knows, polling a real port."""
    data = yaml.safe_load((ROOT / "debian/config.yaml").read_text())
    assert data["simulator"]["enabled"] is False
    assert all(b["port"].startswith("/dev/") for b in data["buses"])
    assert data["gateway"]["state_dir"] == "/var/lib/bmsgw"
    assert data["plugins"]["profile_dirs"] == ["/etc/bmsgw/profiles.d"]
    # the package creates /etc/bmsgw/profiles.d; check the same text with that folder standing elsewhere
    (tmp_path / "profiles.d").mkdir()
    text = (ROOT / "debian/config.yaml").read_text().replace("/etc/bmsgw/profiles.d", str(tmp_path / "profiles.d"))
    (tmp_path / "config.yaml").write_text(text)
    res = sh(Path(sys.executable).parent / "bmsgw", "check-config", "--config", tmp_path / "config.yaml",
             check=False)
    assert res.returncode == 0, res.stderr


# -- the package itself ---------------------------------------------------------------------------------------
@needs_root
def test_install_run_upgrade_purge(deb, lintian):
    if MARKER.exists():  # an earlier run of this test was killed: its installation is ours to remove
        purge()
        MARKER.unlink()
    assert installed_version() is None, "bmsgw is installed on this machine: the test would replace it"
    for path in LEFT_BEHIND:
        assert not os.path.lexists(path), f"{path} exists before the test: refusing to touch it"
    assert sh("getent", "passwd", "bmsgw", check=False).returncode == 2, "a bmsgw user exists already"
    before = traces()
    MARKER.write_text(f"{os.getpid()}\n")
    work = Path(tempfile.mkdtemp(prefix="bmsgw-deb-"))
    work.chmod(0o755)  # the service user reads the test's configs from here
    try:
        lifecycle(deb, work, before)
    finally:
        purge()
        MARKER.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


class Steps:
    """How long each step took, printed at the end (pytest -s shows it): where the test's time goes."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.times: list[tuple[str, float]] = []

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self.last))
        self.last = now

    def report(self) -> str:
        return ", ".join(f"{n} {t:.1f}s" for n, t in self.times) + f"; total {time.monotonic() - self.t0:.1f}s"


def lifecycle(deb: Path, work: Path, before: set[str]) -> None:
    step = Steps()
    version = deb.name.split("_")[1]
    # 1. Install: one dpkg -i, nothing fetched.
    sh(*DPKG, "-i", deb)
    step("install")
    assert installed_version() == version
    user = sh("getent", "passwd", "bmsgw").stdout.strip().split(":")
    assert int(user[2]) < 1000 and user[5] == "/var/lib/bmsgw" and user[6] == "/usr/sbin/nologin"
    st = os.stat("/var/lib/bmsgw")
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (int(user[2]), "0o750")
    for path, mode in (("/etc/bmsgw", "0o750"), ("/etc/bmsgw/config.yaml", "0o640")):
        st = os.stat(path)
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (int(user[2]), mode), path
    assert "/etc/bmsgw/config.yaml" in sh("dpkg-query", "-W", "-f=${Conffiles}", "bmsgw").stdout
    assert os.path.islink("/etc/systemd/system/multi-user.target.wants/bmsgw.service")  # enabled

    # Private: the system's Python cannot import the application, and nothing went to dist-packages.
    files = sh("dpkg", "-L", "bmsgw").stdout.splitlines()
    assert not [f for f in files if "-packages" in f and not f.startswith("/usr/lib/bmsgw/")]
    assert sh(SYSTEM_PY, "-I", "-c", "import gateway", check=False).returncode != 0
    assert sh(SYSTEM_PY, "-I", "-c", "import plugins", check=False).returncode != 0
    # ...and its own environment holds the tested versions of every bundled library.
    # Exactly the runtime part of the lock, nothing else (not even pip).
    code = ("from importlib import metadata\n"
            "for d in metadata.distributions(): print(d.metadata['Name'], d.version)")
    bundled = {canonicalize_name(name): version for name, version in
               (ln.split() for ln in sh("/usr/lib/bmsgw/bin/python3", "-I", "-c", code).stdout.splitlines())}
    assert bundled == {p.name: metadata.version(p.name) for p in bundled_pins()}
    # Data where Debian puts it: profiles and MIBs in /usr/share/bmsgw, our MIBs also for net-snmp.
    assert Path("/usr/share/bmsgw/profiles/points.yaml").is_file()
    for mib in sorted(p for p in (ROOT / "mibs").glob("*") if p.is_file()):
        assert Path("/usr/share/bmsgw/mibs", mib.name).read_bytes() == mib.read_bytes()
        if re.search(r"MODULE-IDENTITY.*?::=\s*\{\s*enterprises\b", mib.read_text(errors="replace"), re.S):
            assert Path("/usr/share/snmp/mibs", mib.name).resolve() == Path("/usr/share/bmsgw/mibs", mib.name)
    assert sh("bmsgw", "--version").stdout.strip() == f"bmsgw {version.split('-')[0]}"
    sh("systemd-analyze", "verify", UNIT)  # the unit as installed: ExecStart exists, syntax is right
    step("checks")

    # 2. The packaged config is valid for the service user; a site profile in profiles.d overrides a built-in.
    as_bmsgw = ["runuser", "-u", "bmsgw", "--"]
    shutil.copy("/usr/share/bmsgw/plugins/string_sensor/profiles/bm-smd.yaml", "/etc/bmsgw/profiles.d/")
    res = sh(*as_bmsgw, "bmsgw", "check-config", cwd="/")
    assert res.stdout.startswith("/etc/bmsgw/config.yaml: valid:"), res.stdout
    assert "profile bm-smd from /etc/bmsgw/profiles.d/bm-smd.yaml overrides" in res.stderr
    step("check-config")

    # 3. Poll the simulator once, then run as the unit runs it, from the installed files.
    state = work / "var"
    state.mkdir()
    shutil.chown(state, "bmsgw", "bmsgw")
    sim = work / "sim.yaml"
    sim.write_text(yaml.safe_dump({
        "gateway": {"state_dir": str(state), "poll": {"fast_s": 0.5, "slow_s": 5}},
        "simulator": {"enabled": True, "wire_time": False},
        "buses": [{"name": "bus1", "port": "sim", "baud": 115200}],
        "strings": [{"id": 1, "cells": 8, "devices": [{"profile": "bm-smd", "bus": "bus1", "address": 1},
                                                      {"profile": "bm-bcs-12", "bus": "bus1", "address": 2,
                                                       "count": 8}]}]}))
    readings = yaml.safe_load(sh(*as_bmsgw, "bmsgw", "poll", "--once", "--json", "--config", sim, cwd="/").stdout)
    volts = [r for r in readings if r["point"] == "cell.voltage"]
    assert len(volts) == 8 and all(r["quality"] == "GOOD" and 10 < r["value"] < 16 for r in volts), volts
    step("poll")

    unit_text = Path(UNIT).read_text()
    unit = unit_settings(unit_text)
    exec_start = unit["ExecStart"][0].split()
    assert exec_start[:2] == ["/usr/bin/bmsgw", "run"] and exec_start[-2:] == ["--config", "/etc/bmsgw/config.yaml"]
    wrapper = work / "mdwe.py"
    wrapper.write_text(MDWE_WRAPPER)
    launch = [*setpriv_for_unit(unit), SYSTEM_PY, "-I", wrapper]
    svc = Service([*launch, *exec_start[:-1], sim], work)
    try:
        svc.wait_for(r"bmsgw started for .*: 1 strings, 8 batteries, 9 devices")
        status = Path(f"/proc/{svc.proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{user[2]}\b", status, re.M)
        groups = re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()
        assert groups == [sh("getent", "group", "dialout").stdout.split(":")[2]]
        cap_bit = 1 << 10  # CAP_NET_BIND_SERVICE
        for field in ("CapEff", "CapAmb", "CapBnd"):
            value = int(re.search(rf"^{field}:\s*([0-9a-f]+)", status, re.M).group(1), 16)
            assert value == cap_bit, f"{field} = {value:#x}: only CAP_NET_BIND_SERVICE expected"
        assert re.search(r"^NoNewPrivs:\s+1", status, re.M)
    finally:
        assert svc.stop() == 0, svc.text()
    assert "stopping" in svc.text() and "Traceback" not in svc.text()
    step("run")

    # The packaged config on a box whose port is missing: the port error is reported, the service stays up.
    noport = work / "noport.yaml"
    noport.write_text(Path("/etc/bmsgw/config.yaml").read_text().replace("/dev/ttyS1", str(work / "ttyS1")))
    shutil.chown(noport, "bmsgw", "bmsgw")
    svc = Service([*launch, *exec_start[:-1], noport], work)
    try:
        svc.wait_for(r"bmsgw started for Battery room: 1 strings, 40 batteries")
        svc.wait_for(re.escape(str(work / "ttyS1")))
        assert svc.proc.poll() is None
    finally:
        assert svc.stop() == 0, svc.text()
    step("run without port")

    # 4. Upgrade over itself (a version bump built here) with a changed conffile and some data.
    conf = Path("/etc/bmsgw/config.yaml")
    conf.write_text(conf.read_text().replace("name: Battery room", "name: Room 4 UPS-B"))
    data = Path("/var/lib/bmsgw/history.db")
    data.write_bytes(b"data the operator keeps")
    bumped = bump_version(deb, work, version + "+pkgtest1")
    step("bump")
    res = sh(*DPKG, "-i", bumped)  # no --force-conf*: an unchanged packaged conffile must not prompt
    step("upgrade")
    assert installed_version() == version + "+pkgtest1"
    assert "name: Room 4 UPS-B" in conf.read_text()
    assert data.read_bytes() == b"data the operator keeps"
    assert not list(Path("/etc/bmsgw").glob("*.dpkg-*")), "dpkg left a conffile copy: it asked about the config"
    assert sh("getent", "passwd", "bmsgw").stdout.strip().split(":")[2] == user[2]
    assert oct(os.stat(conf).st_mode & 0o777) == "0o640" and os.stat(conf).st_uid == int(user[2])
    assert Path("/etc/bmsgw/profiles.d/bm-smd.yaml").exists()
    assert sh(*as_bmsgw, "bmsgw", "check-config", cwd="/").stdout.startswith("/etc/bmsgw/config.yaml: valid:")

    # 5. Purge: nothing left behind.
    res = sh(*DPKG, "--purge", "bmsgw")
    step("purge")
    assert installed_version() is None
    left = [p for p in LEFT_BEHIND if os.path.lexists(p)] + sorted(traces() - before)
    assert not left, f"left behind after purge: {left}"
    assert sh("getent", "passwd", "bmsgw", check=False).returncode == 2, "the bmsgw user survived the purge"
    assert sh("getent", "group", "bmsgw", check=False).returncode == 2, "the bmsgw group survived the purge"
    assert "bmsgw" not in sh("dpkg-statoverride", "--list").stdout
    assert not [f for f in files if os.path.lexists(f) and f.startswith(("/usr/lib/bmsgw", "/usr/share/bmsgw"))]
    print("test_deb steps:", step.report())


def bump_version(deb: Path, work: Path, version: str) -> Path:
    """The same package with a higher version: what an upgrade delivers (repacked, no compression)."""
    tree = work / "bump"
    sh("dpkg-deb", "-R", deb, tree)
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    out = work / f"bmsgw_{version}.deb"
    sh("dpkg-deb", "-Znone", "-b", tree, out)
    shutil.rmtree(tree)
    return out


def test_lintian_clean(lintian):
    findings = lintian.findings()
    assert not findings, "lintian:\n" + "\n".join(findings)


def test_app_tree_is_packaged_whole(tmp_path):
    """Whatever a face adds under gateway/, plugins/, profiles/ or mibs/ is packaged with no packaging change;
    tests and bytecode are not; only the project's own (enterprise) MIBs go where net-snmp looks."""
    import runpy
    build_app = runpy.run_path(str(ROOT / "debian/build-app.py"))
    src = tmp_path / "src"
    files = {
        "gateway/__init__.py": "", "gateway/outputs/web/static/chart.min.js": "js",
        "gateway/outputs/web/templates/index.html": "<html>", "gateway/__pycache__/x.cpython-311.pyc": "",
        "plugins/ups/__init__.py": "", "plugins/ups/profiles/ups.yaml": "model: x",
        "plugins/ups/tests/test_ups.py": "", "plugins/conftest.py": "", "profiles/points.yaml": "points: []",
        "mibs/BMSGW-MIB.txt": "BMSGW-MIB DEFINITIONS ::= BEGIN\nbmsgw MODULE-IDENTITY\n ::= { enterprises 32473 }\nEND",
        "mibs/SNMPv2-SMI.txt": "SNMPv2-SMI DEFINITIONS ::= BEGIN\nenterprises OBJECT IDENTIFIER ::= { private 1 }\nEND",
        "tests/test_x.py": "",
    }
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    (src / "gateway/_data").mkdir()
    (src / "gateway/_data/profiles").symlink_to("../../profiles")  # how the package finds its data
    install_app = build_app["install_app"]
    install_app.__globals__["SRC"] = src
    dest = tmp_path / "dest"
    install_app(dest)
    shipped = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink())
    app = ["gateway/__init__.py", "gateway/outputs/web/static/chart.min.js", "gateway/outputs/web/templates/index.html",
           "plugins/ups/__init__.py", "plugins/ups/profiles/ups.yaml", "profiles/points.yaml",
           "mibs/BMSGW-MIB.txt", "mibs/SNMPv2-SMI.txt"]
    assert shipped == sorted(["usr/bin/bmsgw", "usr/share/snmp/mibs/BMSGW-MIB.txt",
                              "usr/share/bmsgw/gateway/_data/profiles", *(f"usr/share/bmsgw/{f}" for f in app)])
    data_link = dest / "usr/share/bmsgw/gateway/_data/profiles"
    assert os.readlink(data_link) == "../../profiles" and (data_link / "points.yaml").read_text() == "points: []"
    link = dest / "usr/share/snmp/mibs/BMSGW-MIB.txt"
    assert os.readlink(link) == "../../bmsgw/mibs/BMSGW-MIB.txt" and link.read_text() == files["mibs/BMSGW-MIB.txt"]
    assert os.readlink(dest / "usr/bin/bmsgw") == "../lib/bmsgw/bin/bmsgw"
