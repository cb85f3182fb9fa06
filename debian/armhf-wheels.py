#!/usr/bin/python3
"""Build the armhf wheels PyPI does not publish, from their pinned sdists, in a Debian 12 armhf root under qemu.

Four runtime packages of requirements.lock have no armv7l wheel: argon2-cffi-bindings, cffi, Pillow and
PyYAML. debian/build-app.py asks this module for them when it builds the armhf package; everything else comes
from PyPI's armv7l or pure wheels, as for the other architectures. How each is built, and why (README,
"Installing on the controller"):

- the sdist is the lock's: pip downloads it inside the root with --require-hashes against the lock's hashes;
- the build backends are the lock's (the `wheel-build` extra with setuptools and pip): downloaded here with
  --require-hashes and installed in a venv in the root; the builds run with --no-build-isolation, so no
  backend is fetched at whatever version is newest;
- the compiler, CMake and the headers are Debian 12's armhf packages, in a root made for building
  (debian/emulation.py, ARMHF_BUILD_PACKAGES), so the extensions link the same libc, libffi and zlib as the controller's Debian 12;
- nothing may need a library that a bare Debian 12 with python3 lacks (the package installs with one
  `dpkg -i` and nothing fetched): Pillow is built with zlib only (`-C jpeg=disable`; the gateway uses Pillow
  only through ReportLab's vector charts) and PyYAML without libyaml (its pure-Python loader, which
  gateway/profiles.py falls back to); argon2-cffi-bindings compiles its bundled libargon2, cffi uses libffi8,
  which python3 itself needs;
- each sdist is unpacked and built in a fixed folder with a fixed SOURCE_DATE_EPOCH, so the same inputs give
  the same binaries.

The wheels are cached in $BMSGW_CACHE (debian/emulation.py) under a key of everything that chose them (the
root, the pins with their hashes, the build options, this file); their sha256s are recorded when built and
checked each time they are used. Building them takes minutes under emulation; a cached set takes nothing.

    debian/armhf-wheels.py      build (or find) the wheels and print their folder
"""
from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent
sys.path.insert(0, str(HERE))
import lockfile  # debian/ is not a package: after the sys.path line above

emulation = runpy.run_path(str(HERE / "emulation.py"))

ARCH = "armhf"
# In the order they are built; the value is pip's extra options for that build.
FROM_SOURCE = {
    "cffi": [],
    "argon2-cffi-bindings": [],
    "pillow": ["-C", "zlib=enable", "-C", "jpeg=disable"],
    "pyyaml": [],
}
# The backends: pyproject.toml's `wheel-build` extra, setuptools, and the pip that runs them.
BACKEND_ROOTS = ("wheel-build", "setuptools", "pip")
PLATFORMS = ("linux_armv7l",)  # pure wheels only, for the backends
SOURCE_DATE_EPOCH = "1700000000"  # any fixed time: the wheels' files are the same whenever they are built
MARKER_ENV = {"platform_machine": "armv7l", "python_version": "3.11", "python_full_version": "3.11.2",
              "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return Parser().parsestr(zf.read(meta).decode()).get_all("Requires-Dist") or []


def backend_pins(lock: dict, pip: Path, dl: Path) -> list:
    """The backends and everything they need (the lock's pins), their wheels downloaded into ``dl``."""
    import tomllib
    project = tomllib.loads((SRC / "pyproject.toml").read_text())["project"]
    roots = [r for name in BACKEND_ROOTS
             for r in (project["optional-dependencies"][name] if name in project["optional-dependencies"]
                       else [f"{name}=={lock[name].version}"])]

    def download_then_read(pins):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
            req.write("".join(p.requirement_line() + "\n" for p in pins))
            req.flush()
            run(pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes",
                *(f"--platform={p}" for p in PLATFORMS), "--python-version=3.11", "--implementation=cp",
                "-r", req.name, "-d", dl)
        found = {}
        for wheel in dl.glob("*.whl"):
            name, version = wheel.name.split("-")[:2]
            for pin in pins:
                if lockfile.canonicalize_name(name) == pin.name and version == pin.version:
                    found[pin.name] = wheel_requires(wheel)
        return found

    return lockfile.runtime_closure(roots, lock, download_then_read, MARKER_ENV)


def cache_key(root_tar: Path, sources: list, backends: list) -> str:
    h = hashlib.sha256()
    h.update(root_tar.name.encode() + b"\0")
    for pin in [*sources, *backends]:
        h.update(pin.requirement_line().encode() + b"\0")
    h.update(json.dumps(FROM_SOURCE, sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def checked(folder: Path) -> Path:
    manifest = json.loads((folder / "SHA256SUMS.json").read_text())
    for name, digest in manifest.items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            sys.exit(f"{folder / name}: not the wheel that was built (sha256 differs): remove {folder}")
    return folder


# Run inside the root: the backends' venv, then each sdist downloaded (hash-checked), unpacked in a fixed
# folder and built there.
BUILD_SCRIPT = r"""
set -eu
cd /build
python3 -m venv --without-pip env
env/bin/python dl/$(cd dl && ls pip-*.whl)/pip install --quiet --no-compile --no-index --find-links dl \
    --no-deps --require-hashes -r backends.txt
env/bin/pip download --quiet --no-deps --no-binary=:all: --no-build-isolation --require-hashes -r sdists.txt \
    -d sdists
mkdir -p src wheels
while read -r name file opts; do
    mkdir "src/$name"
    tar -xzf "sdists/$file" -C "src/$name" --strip-components=1
    echo "building $name (under emulation: minutes)"
    env/bin/pip wheel --quiet --no-deps --no-build-isolation --no-index $opts -w wheels "src/$name"
done < plan.txt
"""


def build(root_tar: Path, sources: list, backends: list, dl: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bmsgw-armhf-root-") as tmp:
        root = emulation["extract"](root_tar, Path(tmp) / "root")
        work = root / "build"
        shutil.copytree(dl, work / "dl")
        (work / "backends.txt").write_text("".join(p.requirement_line() + "\n" for p in backends))
        (work / "sdists.txt").write_text("".join(p.requirement_line() + "\n" for p in sources))
        plan = []
        for pin in sources:
            plan.append(f"{pin.name} {pin.name.replace('-', '_')}-{pin.version}.tar.gz "
                        + " ".join(FROM_SOURCE[pin.name]))
        (work / "plan.txt").write_text("\n".join(plan) + "\n")
        env = {"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "MAX_CONCURRENCY": str(os.cpu_count() or 1),
               "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               # paths in the binaries: the fixed source folders, relative
               "CFLAGS": "-ffile-prefix-map=/build/src=.", "CXXFLAGS": "-ffile-prefix-map=/build/src=."}
        # The certificates this machine trusts (pip's own bundle may not know a proxy's), for pip in the root.
        ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        if ca.is_file():
            shutil.copy(ca, work / "ca-certificates.crt")
            env["PIP_CERT"] = "/build/ca-certificates.crt"
        for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "http_proxy", "https_proxy",
                    "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
            if os.environ.get(var) and "file:" not in os.environ[var]:
                env[var] = os.environ[var]
        res = emulation["in_root"](root, ["sh", "-c", BUILD_SCRIPT], network=True, env=env)
        if res.returncode != 0:
            sys.exit(f"building the armhf wheels failed (exit {res.returncode}, see above)")
        wheels = sorted((work / "wheels").glob("*.whl"))
        built = {lockfile.canonicalize_name(w.name.split("-")[0]) for w in wheels}
        if built != {p.name for p in sources}:
            sys.exit(f"the armhf build gave {sorted(built)}, not {sorted(p.name for p in sources)}")
        partial = out.with_name(out.name + f".partial-{os.getpid()}")
        partial.mkdir(parents=True)
        for wheel in wheels:
            shutil.copy(wheel, partial / wheel.name)
        (partial / "SHA256SUMS.json").write_text(json.dumps(
            {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels}, indent=1, sort_keys=True))
        partial.rename(out)


def armhf_wheels(pip: Path | None = None) -> Path:
    """The folder of the four source-built armhf wheels (built when not cached)."""
    pip = pip or Path(shutil.which("pip3") or "pip3")
    lock = lockfile.read_lock(SRC / "requirements.lock")
    sources = [lock[name] for name in FROM_SOURCE]
    root_tar = emulation["root_tarball"](ARCH, emulation["ARMHF_BUILD_PACKAGES"])
    with tempfile.TemporaryDirectory(prefix="bmsgw-backends-") as tmp:
        dl = Path(tmp)
        backends = backend_pins(lock, pip, dl)
        out = emulation["cache_dir"]() / f"armhf-wheels-{cache_key(root_tar, sources, backends)}"
        if not out.exists():
            build(root_tar, sources, backends, dl, out)
    return checked(out)


def main() -> None:
    try:
        print(armhf_wheels(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
    except emulation["EmulationError"] as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
