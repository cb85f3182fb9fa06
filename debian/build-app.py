#!/usr/bin/python3
"""Build bmsgw's private application tree in the package's staging directory (called by debian/rules).

    /usr/lib/bmsgw        a Python virtual environment holding exactly the runtime part of requirements.lock
                          (pyproject.toml's dependencies and what they need, computed here from the lock; compiled
                          wheels, so the package is Architecture: any) and the bmsgw launcher
    /usr/share/bmsgw      the application, laid out as in the source tree: gateway/, plugins/, profiles/, mibs/
    /usr/share/snmp/mibs  the project's own (enterprise) MIBs, as symlinks, where net-snmp looks
    /usr/bin/bmsgw        -> /usr/lib/bmsgw/bin/bmsgw

Why a venv: it is the only layout in which the interpreter ignores the system's dist-packages, so the
bundled, tested versions are the only ones the gateway can import; and the generic import names `gateway`
and `plugins` stay out of the system's Python.  A venv hard-codes its own path in only three places
(pyvenv.cfg's `command` line, the console scripts' shebangs and the activate scripts); this script creates
it in the staging directory, removes the scripts and activate files, rewrites pyvenv.cfg, writes its own
launcher with the final path, and then fails the build if the staging path is left in any file.
The interpreter finds the venv from pyvenv.cfg next to bin/python3, wherever the tree lives.
debian/check-imports.py then imports every module of the application and every compiled extension from
the staging tree (after dh_strip), so a missing library or a broken binary fails the build, not the box.

Another architecture (dpkg-buildpackage -a arm64|armhf on this amd64 machine; DEB_HOST_ARCH says which): the
venv is made the same way (its layout does not depend on the architecture: bin/python3 is a link to the
system's interpreter), and the libraries are the target's wheels of the same pins, installed by this machine's
pip for that platform (--platform manylinux_2_17..2_36_<machine> --python-version 3.11 --implementation cp,
still --require-hashes). armhf's four packages without an armv7l wheel come from debian/armhf-wheels.py, built
from the lock's sdists with Debian's armhf cross compiler. `pip check` and the import check then run under the
target's own interpreter, in a Debian 12 root of that architecture under qemu-user (debian/emulation.py).

Environment: BMSGW_PIP_OPTS replaces the default pip options (`--only-binary=:all:`), e.g. to use a wheel
mirror (see docs/install.md, "Installing on the controller").
"""
from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

APPLIB = "/usr/lib/bmsgw"      # the venv
APPSHARE = "/usr/share/bmsgw"  # the application code and data
SRC = Path(__file__).resolve().parent.parent
LOCK = SRC / "requirements.lock"  # its runtime part is bundled (debian/lockfile.py)
APP_TREES = ("gateway", "plugins", "profiles", "mibs")  # copied whole: new faces need no packaging change
# Never shipped: tests, caches, bytecode (compiled by the postinst instead).
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "tests", "conftest.py", ".pytest_cache",
                                ".hypothesis", ".mypy_cache", "*.orig", "*.rej", "*~")
ENTERPRISE_MIB = re.compile(r"MODULE-IDENTITY.*?::=\s*\{\s*enterprises\b", re.S)
# Debian architecture -> the machine name in wheel tags and in environment markers
MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}
GLIBC_MINOR = 36  # Debian 12's glibc 2.36: manylinux wheels up to manylinux_2_36 run on it


def dpkg_arch(var: str) -> str:
    return os.environ.get(var) or subprocess.run(["dpkg-architecture", f"-q{var}"], check=True,
                                                 capture_output=True, text=True).stdout.strip()


class Target:
    """The architecture the package is built for, and how pip installs wheels for it."""

    def __init__(self) -> None:
        self.arch = dpkg_arch("DEB_HOST_ARCH")
        self.cross = self.arch != dpkg_arch("DEB_BUILD_ARCH")
        if self.cross and self.arch not in MACHINES:
            sys.exit(f"no wheels for {self.arch}: the package is built for {', '.join(MACHINES)}")
        self.machine = MACHINES.get(self.arch, os.uname().machine)

    def pip_platform_opts(self) -> list[str]:
        """pip's options to pick this target's wheels on another machine (nothing for a native build)."""
        if not self.cross:
            return []
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(GLIBC_MINOR, 16, -1)]
        tags += [f"manylinux2014_{self.machine}", f"linux_{self.machine}"]
        return [*(f"--platform={tag}" for tag in tags), f"--python-version=3.{sys.version_info.minor}",
                "--implementation=cp"]

    def markers(self) -> dict[str, str] | None:
        """The environment markers of the target (None: this machine's)."""
        return {"platform_machine": self.machine} if self.cross else None


def run(*cmd: str | Path, **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def build_venv(dest: Path, target: Target) -> Path:
    venv = dest / APPLIB.lstrip("/")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "venv", venv)
    if target.cross and target.arch == "armhf" and (venv / "lib64").is_symlink():
        (venv / "lib64").unlink()  # venv adds lib64 -> lib on 64-bit machines only
    py = venv / "bin" / "python3"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    bundled = install_runtime(py, site_packages(venv), env, target)
    if target.cross:  # under the target's interpreter, in a root of its architecture
        emulated_pip_check(venv, target.arch)
    else:
        run(py, "-m", "pip", "check", env=env)  # the closure is complete and consistent
    run(py, "-m", "pip", "uninstall", "--yes", "--quiet", "pip", "setuptools", env=env)
    check_only_bundled(site_packages(venv), bundled)
    for junk in site_packages(venv).rglob(".DS_Store"):  # macOS litter in some sdists/wheels
        junk.unlink()
    return venv


def install_runtime(py: Path, site: Path, env: dict[str, str], target: Target) -> list[str]:
    """Install the runtime part of requirements.lock: pyproject.toml's dependencies and, level by level, what
    the packages just installed require (their own Requires-Dist, markers evaluated for the target), each from
    the lock with --require-hashes --no-deps, so every file is the one the tests ran against (for armhf, four
    are built from the lock's sdists: debian/armhf-wheels.py). Returns their names."""
    import lockfile  # here, not at the top: make-deb reads APP_TREES with an interpreter that may lack packaging

    opts = shlex.split(os.environ.get("BMSGW_PIP_OPTS", "--only-binary=:all:"))
    from_source: dict[str, Path] = {}
    if target.cross and target.arch == "armhf":
        armhf = runpy.run_path(str(SRC / "debian" / "armhf-wheels.py"))
        wheels = armhf["armhf_wheels"](py.parent / "pip")
        from_source = dict.fromkeys(armhf["FROM_SOURCE"], wheels)

    def pip_install(lines: list[str], *extra: str) -> None:
        with tempfile.NamedTemporaryFile("w", prefix="bmsgw-runtime-", suffix=".txt") as requirements:
            requirements.write("".join(line + "\n" for line in lines))
            requirements.flush()
            if not target.cross:
                run(py, "-m", "pip", "install", "--no-deps", "--no-compile", "--no-warn-script-location",
                    *extra, "-r", requirements.name, env=env)
                return
            # pip installs another platform's wheels only with --target: into a folder of its own, then merged
            # into site-packages (a second --target run would skip the folders the first one made, bin/).
            with tempfile.TemporaryDirectory(prefix="bmsgw-target-") as tmp:
                run(py, "-m", "pip", "install", "--no-deps", "--no-compile", "--no-warn-script-location",
                    "--only-binary=:all:", *target.pip_platform_opts(), "--target", tmp, *extra,
                    "-r", requirements.name, env=env)
                shutil.rmtree(Path(tmp, "bin"), ignore_errors=True)  # console scripts: the launcher replaces them
                shutil.copytree(tmp, site, symlinks=True, dirs_exist_ok=True)

    def install_then_read(pins: list[lockfile.Pin]) -> dict[str, list[str]]:
        indexed = [pin.requirement_line() for pin in pins if pin.name not in from_source]
        if indexed:
            pip_install(indexed, "--require-hashes", *opts)
        for pin in pins:
            if pin.name in from_source:  # their sdists were checked against the lock's hashes when built
                pip_install([f"{pin.name}=={pin.version}"], "--no-index", "--find-links", str(from_source[pin.name]))
        return lockfile.installed_requirements(pins, path=[str(site)])

    try:
        pins = lockfile.runtime_closure(lockfile.project_dependencies(SRC / "pyproject.toml"),
                                        lockfile.read_lock(LOCK), install_then_read, target.markers())
    except lockfile.LockError as exc:
        sys.exit(f"requirements.lock: {exc}")
    print(f"bundled {len(pins)} packages of {LOCK.name}: " + ", ".join(f"{p.name} {p.version}" for p in pins))
    return [pin.name for pin in pins]


def emulated_pip_check(venv: Path, arch: str) -> None:
    """`pip check` by the target's interpreter: the venv copied into a fresh root of its architecture."""
    emulation = runpy.run_path(str(SRC / "debian" / "emulation.py"))
    with tempfile.TemporaryDirectory(prefix="bmsgw-pipcheck-") as tmp:
        root = emulation["fresh_root"](arch, Path(tmp))
        shutil.copytree(venv, root / APPLIB.lstrip("/"), symlinks=True)
        print(f"+ [{arch} root] {APPLIB}/bin/python3 -m pip check", flush=True)
        res = emulation["in_root"](root, [f"{APPLIB}/bin/python3", "-m", "pip", "check"],
                                   env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if res.returncode != 0:
            sys.exit(f"pip check failed under the {arch} interpreter")


def check_only_bundled(site: Path, bundled: list[str]) -> None:
    """Nothing but the runtime closure is left in the venv (its own pip and setuptools are gone)."""
    from packaging.utils import canonicalize_name  # here: see install_runtime

    names = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions(path=[str(site)])}
    if names != set(bundled):
        sys.exit(f"the venv holds {sorted(names - set(bundled))} beyond the runtime part of the lock and lacks "
                 f"{sorted(set(bundled) - names)}")


def tidy_venv(venv: Path) -> None:
    """Remove everything that names the staging path; point the interpreter links at the system's."""
    bindir = venv / "bin"
    for entry in bindir.iterdir():
        if entry.name not in ("python", "python3", f"python3.{sys.version_info.minor}"):
            entry.unlink()
    # /usr/lib/bmsgw/bin/python3 -> /usr/bin/python3 as a relative link (Debian policy 10.5)
    for name, target in (("python3", "../../../bin/python3"), ("python", "python3"),
                         (f"python3.{sys.version_info.minor}", "python3")):
        (bindir / name).unlink(missing_ok=True)
        (bindir / name).symlink_to(target)
    prune_records(site_packages(venv))
    include = venv / "include"
    if include.is_dir() and not any(p.is_file() for p in include.rglob("*")):
        shutil.rmtree(include)
    cfg = venv / "pyvenv.cfg"
    lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("command")]
    lines.append(f"command = /usr/bin/python3 -m venv {APPLIB}")
    cfg.write_text("\n".join(lines) + "\n")
    # A shell launcher, so that lintian sees a standard interpreter; exec keeps the service's PID.
    # -I: the environment's libraries only (no PYTHONPATH, no user site-packages, not the current folder).
    launcher = bindir / "bmsgw"
    launcher.write_text(
        "#!/bin/sh\n"
        "# bmsgw: the battery monitoring gateway, run by the interpreter of its private environment.\n"
        f'exec {APPLIB}/bin/python3 -I -m gateway "$@"\n')
    launcher.chmod(0o755)
    (site_packages(venv) / "bmsgw-app.pth").write_text(APPSHARE + "\n")


def prune_records(site: Path) -> None:
    """Drop from each RECORD the files that are gone (the console scripts removed above): their hashes depend on
    the staging path in their #! line, so keeping them would make the package's bytes depend on where it was
    built, and RECORD would list files the package does not have."""
    for record in sorted(site.glob("*.dist-info/RECORD")):
        lines = record.read_text().splitlines(keepends=True)
        kept = [line for line in lines if os.path.lexists(os.path.normpath(site / line.rsplit(",", 2)[0]))]
        if kept != lines:
            record.write_text("".join(kept))


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python3.{sys.version_info.minor}" / "site-packages"


def install_app(dest: Path) -> None:
    share = dest / APPSHARE.lstrip("/")
    if share.exists():
        shutil.rmtree(share)
    share.mkdir(parents=True)
    for name in APP_TREES:
        if (SRC / name).is_dir():
            # symlinks=True: gateway/_data's links to profiles/ and mibs/ stay links (gateway/_data/__init__.py)
            shutil.copytree(SRC / name, share / name, ignore=IGNORE, symlinks=True)
    mibs = share / "mibs"
    if mibs.is_dir():
        netsnmp = dest / "usr/share/snmp/mibs"
        for mib in sorted(p for p in mibs.iterdir() if p.is_file()):
            # Only the project's own modules: the IETF base MIBs shipped alongside would shadow other
            # packages' copies, so they stay in /usr/share/bmsgw/mibs (use -M +/usr/share/bmsgw/mibs).
            if ENTERPRISE_MIB.search(mib.read_text(errors="replace")):
                netsnmp.mkdir(parents=True, exist_ok=True)
                (netsnmp / mib.name).symlink_to(f"../../bmsgw/mibs/{mib.name}")
    usrbin = dest / "usr/bin"
    usrbin.mkdir(parents=True, exist_ok=True)
    (usrbin / "bmsgw").unlink(missing_ok=True)
    (usrbin / "bmsgw").symlink_to("../lib/bmsgw/bin/bmsgw")


def check_no_staging_path(dest: Path) -> None:
    needle = str(dest.resolve()).encode()
    bad = []
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            bad.append(str(path))
    if bad:
        sys.exit("the staging path is left in: " + ", ".join(bad[:20]))


def normalise_modes(dest: Path) -> None:
    for path in [dest / APPLIB.lstrip("/"), dest / APPSHARE.lstrip("/")]:
        for p in [path, *path.rglob("*")]:
            if p.is_symlink():
                continue
            if p.is_dir() or (p.name == "bmsgw" and p.parent.name == "bin"):  # folders and the launcher
                p.chmod(0o755)
            else:
                p.chmod(0o644)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: build-app.py STAGING_DIR (debian/bmsgw)")
    dest = Path(sys.argv[1]).resolve()
    venv = build_venv(dest, Target())
    tidy_venv(venv)
    install_app(dest)
    normalise_modes(dest)
    check_no_staging_path(dest)


if __name__ == "__main__":
    main()
