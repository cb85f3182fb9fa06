#!/usr/bin/python3
"""Build the armhf wheels PyPI does not publish, from their pinned sdists, with Debian's armhf cross compiler.

Four runtime packages of requirements.lock have no armv7l wheel: argon2-cffi-bindings, cffi, Pillow and
PyYAML. debian/build-app.py asks this module for them when it builds the armhf package; everything else comes
from PyPI's armv7l or pure wheels, as for the other architectures. How each is built, and why (docs/install.md,
"Installing on the controller"):

- the sdist is the lock's: downloaded with --require-hashes against the lock's hashes;
- the build backends are the lock's (the `wheel-build` extra with setuptools and pip): installed with
  --require-hashes in a venv of this machine's python3 (3.11, Debian 12's, as on the controller); the builds run
  with --no-build-isolation, so no backend is fetched at whatever version is newest;
- the compiler is Debian 12's cross compiler for armhf (gcc-arm-linux-gnueabihf: the same GCC 12 as the armhf
  `gcc`, running natively instead of under qemu, minutes faster), and the headers and libraries are Debian 12's
  armhf packages unpacked into a sysroot (debian/emulation.py, SYSROOT_PACKAGES); Python's own cross-build
  hooks (_PYTHON_HOST_PLATFORM, _PYTHON_SYSCONFIGDATA_NAME with the armhf interpreter's sysconfig data from that
  sysroot) give the extensions the armhf interpreter's suffix, flags and wheel tag, and CMake (argon2) gets a
  toolchain file; so the extensions link the same libc, libffi and zlib as the controller's Debian 12;
- nothing may need a library that a bare Debian 12 with python3 lacks (the package installs with one
  `dpkg -i` and nothing fetched): Pillow is built with zlib only (`-C jpeg=disable`, every other optional
  library disabled, and no look into this machine's own library folders: `-C platform-guessing=disable`; the
  gateway uses Pillow only through ReportLab's vector charts) and PyYAML without libyaml (its pure-Python
  loader, which gateway/profiles.py falls back to); argon2-cffi-bindings compiles its bundled libargon2 (the
  portable implementation: SSE2 is x86's), cffi uses libffi8, which python3 itself needs;
- the build folders are mapped to fixed names in the binaries (-ffile-prefix-map) and SOURCE_DATE_EPOCH is
  fixed, so the same inputs give the same wheels, byte for byte, wherever they are built.

The wheels are cached in $BMSGW_CACHE (debian/emulation.py) under a key of everything that chose them (the
sysroot, the pins with their hashes, the build options, the compiler, this file); their sha256s are recorded
when built and checked each time they are used. Building them takes about a minute of CPU.

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
import lockfile  # noqa: E402  (debian/ is not a package: after the sys.path line above)

emulation = runpy.run_path(str(HERE / "emulation.py"))

ARCH = "armhf"
TRIPLET = "arm-linux-gnueabihf"  # Debian's multiarch name for armhf: the cross tools' prefix
# Pillow: zlib only (see above); the optional libraries it would otherwise look for, each disabled by name.
PILLOW_OFF = ("jpeg", "tiff", "freetype", "raqm", "lcms", "webp", "jpeg2000", "imagequant", "xcb", "avif")
# In the order they are built; the value is pip's extra options for that build.
FROM_SOURCE = {
    "cffi": [],
    "argon2-cffi-bindings": [],
    "pillow": ["-C", "zlib=enable", "-C", "platform-guessing=disable",
               *(opt for lib in PILLOW_OFF for opt in ("-C", f"{lib}=disable"))],
    "pyyaml": [],
}
# The backends: pyproject.toml's `wheel-build` extra, setuptools, and the pip that runs them.
BACKEND_ROOTS = ("wheel-build", "setuptools", "pip")
# Debian 12's interpreter, the controller's: its venv runs the backends (not whatever python3 is first on PATH)
SYSTEM_PYTHON = "/usr/bin/python3"
SOURCE_DATE_EPOCH = "1700000000"  # any fixed time: the wheels' files are the same whenever they are built
# CMake (argon2-cffi-bindings, through scikit-build-core) cross-compiling into the sysroot.
TOOLCHAIN = """set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_SYSROOT {sysroot})
set(CMAKE_C_COMPILER {triplet}-gcc)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
"""


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return Parser().parsestr(zf.read(meta).decode()).get_all("Requires-Dist") or []


def backend_pins(lock: dict, pip: Path, dl: Path) -> list:
    """The backends and everything they need on this machine (the lock's pins), their wheels downloaded into
    ``dl``."""
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
                "-r", req.name, "-d", dl)
        found = {}
        for wheel in dl.glob("*.whl"):
            name, version = wheel.name.split("-")[:2]
            for pin in pins:
                if lockfile.canonicalize_name(name) == pin.name and version == pin.version:
                    found[pin.name] = wheel_requires(wheel)
        return found

    return lockfile.runtime_closure(roots, lock, download_then_read)


def cross_tools() -> dict[str, str]:
    """The versions of the native tools that make the binaries (part of the cache key), or exit naming the
    package to install."""
    versions = {}
    for tool, package in ((f"{TRIPLET}-gcc", f"gcc-{TRIPLET}"), ("cmake", "cmake")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} missing: apt-get install {package} (or `make system-deps`)")
        versions[tool] = subprocess.run([tool, "--version"], capture_output=True, text=True,
                                        check=True).stdout.splitlines()[0]
    return versions


def cache_key(sysroot_tar: Path, sources: list, backends: list, tools: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(sysroot_tar.name.encode() + b"\0")
    for pin in [*sources, *backends]:
        h.update(pin.requirement_line().encode() + b"\0")
    h.update(json.dumps([FROM_SOURCE, tools], sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def checked(folder: Path) -> Path:
    manifest = json.loads((folder / "SHA256SUMS.json").read_text())
    for name, digest in manifest.items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            sys.exit(f"{folder / name}: not the wheel that was built (sha256 differs): remove {folder}")
    return folder


def cross_env(work: Path, sysroot: Path) -> dict[str, str]:
    """The environment that makes this machine's python3 build armhf extensions."""
    sysconfig_dir = work / "sysconfig"  # only the armhf sysconfig data, not the rest of the armhf stdlib
    sysconfig_dir.mkdir()
    name = f"_sysconfigdata__linux_{TRIPLET}"
    shutil.copy(sysroot / f"usr/lib/python3.11/{name}.py", sysconfig_dir)
    toolchain = work / "toolchain.cmake"
    toolchain.write_text(TOOLCHAIN.format(sysroot=sysroot, triplet=TRIPLET))
    cc = f"{TRIPLET}-gcc --sysroot={sysroot}"
    # Paths in the binaries: the source folders as ".", the sysroot as "/".
    flags = f"-I{sysroot}/usr/include/python3.11 -ffile-prefix-map={work}/src=. -ffile-prefix-map={sysroot}=/"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LANG": "C.UTF-8",
        "_PYTHON_HOST_PLATFORM": "linux-armv7l", "_PYTHON_SYSCONFIGDATA_NAME": name, "PYTHONPATH": str(sysconfig_dir),
        "CC": cc, "LDSHARED": f"{cc} -shared -Wl,-O1 -Wl,-Bsymbolic-functions", "CFLAGS": flags,
        "PKG_CONFIG_LIBDIR": f"{sysroot}/usr/lib/{TRIPLET}/pkgconfig:{sysroot}/usr/share/pkgconfig",
        "PKG_CONFIG_SYSROOT_DIR": str(sysroot),
        "CMAKE_TOOLCHAIN_FILE": str(toolchain), "CMAKE_GENERATOR": "Unix Makefiles",
        "ARGON2_CFFI_USE_SSE2": "0",
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0",
        "MAX_CONCURRENCY": str(os.cpu_count() or 1), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
    }
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT", "http_proxy", "https_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def build(sysroot_tar: Path, sources: list, backends: list, dl: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bmsgw-armhf-build-") as tmp:
        work = Path(tmp)
        sysroot = emulation["extract"](sysroot_tar, work / "sysroot")
        env = cross_env(work, sysroot)
        # The backends' venv: this machine's python3, the lock's backends (hash-checked wheels).
        run(SYSTEM_PYTHON, "-m", "venv", "--without-pip", work / "env")
        backends_txt = work / "backends.txt"
        backends_txt.write_text("".join(p.requirement_line() + "\n" for p in backends))
        pip_wheel = next(dl.glob("pip-*.whl"))
        run(work / "env/bin/python", pip_wheel / "pip", "install", "--quiet", "--no-compile", "--no-index",
            "--find-links", dl, "--no-deps", "--require-hashes", "-r", backends_txt)
        sdists_txt = work / "sdists.txt"
        sdists_txt.write_text("".join(p.requirement_line() + "\n" for p in sources))
        pip = [work / "env/bin/python", "-m", "pip"]
        run(*pip, "download", "--quiet", "--no-deps", "--no-binary=:all:", "--no-build-isolation",
            "--require-hashes", "-r", sdists_txt, "-d", work / "sdists")
        wheels_dir = work / "wheels"
        for pin in sources:
            sdist = next((work / "sdists").glob(f"{pin.name.replace('-', '_')}-{pin.version}.tar.gz"))
            src = work / "src" / pin.name
            src.mkdir(parents=True)
            run("tar", "-xzf", sdist, "-C", src, "--strip-components=1")
            # the cross environment only here: pip's own downloads and the venv above are this machine's
            run(*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                *FROM_SOURCE[pin.name], "-w", wheels_dir, src, env=env)
        wheels = sorted(wheels_dir.glob("*.whl"))
        built = {lockfile.canonicalize_name(w.name.split("-")[0]) for w in wheels}
        if built != {p.name for p in sources}:
            sys.exit(f"the armhf build gave {sorted(built)}, not {sorted(p.name for p in sources)}")
        bad = [w.name for w in wheels if not w.name.endswith("-linux_armv7l.whl")]
        if bad:
            sys.exit(f"not armhf wheels: {bad}")
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
    tools = cross_tools()
    sysroot_tar = emulation["root_tarball"](ARCH, emulation["SYSROOT_PACKAGES"], emulation["SYSROOT_VARIANT"])
    with tempfile.TemporaryDirectory(prefix="bmsgw-backends-") as tmp:
        dl = Path(tmp)
        backends = backend_pins(lock, pip, dl)
        out = emulation["cache_dir"]() / f"armhf-wheels-{cache_key(sysroot_tar, sources, backends, tools)}"
        if not out.exists():
            build(sysroot_tar, sources, backends, dl, out)
    return checked(out)


def main() -> None:
    try:
        print(armhf_wheels(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
    except emulation["EmulationError"] as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
