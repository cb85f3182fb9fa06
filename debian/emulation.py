#!/usr/bin/python3
"""Debian 12 roots of the controller's architectures (arm64, armhf), run on this machine under qemu-user.

The package build uses them to check what it cannot check natively (the bundled venv imports and `pip check`s
under the target's own interpreter); tests/test_deb_arm.py installs the .deb into a fresh copy of one.
The armhf wheels PyPI does not publish are cross-compiled natively (debian/armhf-wheels.py) against a sysroot:
Debian 12's armhf headers and libraries, unpacked by `mmdebstrap --variant=extract` (nothing runs in it, so
it needs no emulation and takes only the download).

A root is made once by `mmdebstrap --variant=apt` (Essential packages, apt, and the packages named) and kept
as a tarball in the cache folder ($BMSGW_CACHE, default /var/cache/bmsgw), named after a hash of everything
that chose its contents (suite, architecture, variant, package list), so a change of any of them makes a new
one and `rm -rf /var/cache/bmsgw` starts over. Each use extracts a fresh copy, so nothing a test did survives.
Programs run in it through chroot, in a mount namespace of their own (unshare) with /proc and /dev mounted:
the mounts vanish with the process, even when it is killed.

Emulation needs qemu-user-static and binfmt-support (Makefile, APT_PACKAGES) with the binfmt handlers
registered in the kernel; `ensure_emulation` registers them when it can (root) and otherwise raises
EmulationError with the reason: a test that needs emulation fails with it, it never skips.

    debian/emulation.py ARCH [PACKAGE...]    build (or find) the root tarball and print its path
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SUITE = "bookworm"  # Debian 12: what the controllers run
VARIANT = "apt"  # Essential packages and apt: the smallest root apt can install into
# What a controller has before bmsgw: the package's Depends (python3, passwd, a sysusers implementation;
# systemd's own is the standalone one, without systemd as PID 1 which a chroot cannot have). Nothing else: the
# test proves the .deb installs with one dpkg -i and nothing fetched.
RUN_PACKAGES = ("python3", "passwd", "systemd-standalone-sysusers")
# The sysroot against which debian/armhf-wheels.py cross-compiles the four packages PyPI has no armv7l wheel of:
# Debian 12's armhf C library, Python headers (and sysconfig data), libffi and zlib, exactly what the controller's
# Debian 12 links them against; only unpacked (variant extract), never run.
SYSROOT_PACKAGES = ("libc6-dev", "libpython3.11-dev", "libffi-dev", "zlib1g-dev")
SYSROOT_VARIANT = "extract"
QEMU_NAMES = {"arm64": "aarch64", "armhf": "arm", "amd64": "x86_64"}
# What `uname -m` (and Python's platform.machine()) says in a root of that architecture under qemu-user.
MACHINES = {"arm64": "aarch64", "armhf": "armv7l", "amd64": "x86_64"}
FORMAT = 1  # bump when the way a root is made changes without its inputs changing


class EmulationError(RuntimeError):
    """This machine cannot run binaries of the asked architecture: the message says why and what to install."""


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()


def cache_dir() -> Path:
    return Path(os.environ.get("BMSGW_CACHE", "/var/cache/bmsgw"))


def _runs(arch: str) -> bool:
    return subprocess.run(["arch-test", arch], capture_output=True, check=False).returncode == 0


def ensure_emulation(arch: str) -> None:
    """Make sure binaries of ``arch`` run here (registering qemu's binfmt handlers if needed), or raise."""
    if arch == host_arch():
        return
    if arch not in QEMU_NAMES:
        raise EmulationError(f"unknown architecture {arch!r}: one of {', '.join(sorted(QEMU_NAMES))}")
    missing = [tool for tool, pkg in (("arch-test", "arch-test"), ("update-binfmts", "binfmt-support"),
                                      (f"qemu-{QEMU_NAMES[arch]}-static", "qemu-user-static"))
               if shutil.which(tool) is None]
    if missing:
        raise EmulationError(f"cannot run {arch} binaries: {', '.join(missing)} missing "
                             "(apt-get install qemu-user-static binfmt-support arch-test, or `make system-deps`)")
    if _runs(arch):
        return
    # binfmt-support registers the handlers when its service starts; without systemd as PID 1 (containers, CI
    # machines) nobody does, so do what the service would: mount binfmt_misc and enable qemu's entries.
    problems = []
    if os.geteuid() != 0:
        problems.append("registering binfmt handlers needs root")
    else:
        if not Path("/proc/sys/fs/binfmt_misc/register").exists():
            res = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                problems.append(f"mount binfmt_misc: {res.stderr.strip()}")
        res = subprocess.run(["update-binfmts", "--enable", f"qemu-{QEMU_NAMES[arch]}"], capture_output=True,
                             text=True, check=False)
        if res.returncode != 0:
            problems.append(f"update-binfmts --enable qemu-{QEMU_NAMES[arch]}: {res.stderr.strip()}")
    if not _runs(arch):
        why = "; ".join(problems) or "arch-test still fails after registering the handlers"
        raise EmulationError(f"cannot run {arch} binaries on this machine ({why}): qemu-user-static's binfmt "
                             "handler must be registered (update-binfmts --enable, as root)")


def root_key(arch: str, packages: Sequence[str], variant: str = VARIANT) -> str:
    spec = {"format": FORMAT, "suite": SUITE, "variant": variant, "arch": arch, "packages": sorted(set(packages))}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def root_tarball(arch: str, packages: Sequence[str] = RUN_PACKAGES, variant: str = VARIANT) -> Path:
    """The cached tarball of a Debian 12 root of ``arch`` holding ``packages``, made when missing (minutes).
    ``variant`` extract: the packages' files only, unpacked natively (a sysroot: nothing in it ever runs)."""
    if variant != SYSROOT_VARIANT:
        ensure_emulation(arch)
    cache = cache_dir()
    kind = "sysroot" if variant == SYSROOT_VARIANT else "debian12"
    tarball = cache / f"{kind}-{arch}-{root_key(arch, packages, variant)}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f"{tarball.stem}.partial-{os.getpid()}.tar")  # mmdebstrap: .tar means a tarball
    print(f"emulation: making a Debian 12 {arch} {kind} with {', '.join(packages)} (cached as {tarball})",
          file=sys.stderr, flush=True)
    # No mirror given: mmdebstrap's default, with the suite's updates and security archives for a stable release.
    # stdin closed: mmdebstrap would otherwise read a sources.list from a stdin that is not a terminal.
    cmd = ["mmdebstrap", "--quiet", f"--variant={variant}", f"--arch={arch}", f"--include={','.join(packages)}",
           # documentation and apt's downloaded lists take room and no test reads them
           "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
           "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
           "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
           SUITE, str(partial)]
    try:
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        partial.rename(tarball)
    finally:
        partial.unlink(missing_ok=True)
    return tarball


def roots_for(arches: Sequence[str]) -> list[tuple[str, tuple[str, ...], str]]:
    """The roots (architecture, packages, variant) that building packages for ``arches`` on this machine needs."""
    foreign = [arch for arch in dict.fromkeys(arches) if arch != host_arch()]
    specs = [(arch, RUN_PACKAGES, VARIANT) for arch in foreign]
    if "armhf" in foreign:
        specs.append(("armhf", SYSROOT_PACKAGES, SYSROOT_VARIANT))
    return specs


def prepare_roots(arches: Sequence[str]) -> None:
    """Make the missing roots for ``arches`` side by side: on a fresh machine they are most of the time."""
    specs = roots_for(arches)
    for arch in dict.fromkeys(arch for arch, _, variant in specs if variant != SYSROOT_VARIANT):
        ensure_emulation(arch)
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        for future in [pool.submit(root_tarball, *spec) for spec in specs]:
            future.result()


def extract(tarball: Path, dest: Path) -> Path:
    """A fresh copy of the root in ``dest`` (created; must not exist or be empty)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(dest)], check=True)
    return dest


def fresh_root(arch: str, dest: Path, packages: Sequence[str] = RUN_PACKAGES) -> Path:
    return extract(root_tarball(arch, packages), dest)


# Mounts made in the command's own mount namespace (unshare -m): they vanish with it, even when it is killed.
_ENTER = ('root=$1; shift; mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" && '
          'exec chroot "$root" "$@"')
# A predictable environment inside: nothing of the host's PATH, pip or Python settings.
ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}


def in_root(root: Path, argv: Sequence[str | os.PathLike], *, network: bool = False,
            env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` chrooted in ``root`` (needs root privileges); without network unless asked."""
    unshare = ["unshare", "--mount", "--propagation", "private"] + ([] if network else ["--net"])
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("check", False)
    return subprocess.run([*unshare, "sh", "-c", _ENTER, "enter", str(root), *map(str, argv)],
                          env={**ROOT_ENV, **(env or {})}, **kw)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__.splitlines()[-1].strip())
    try:
        print(root_tarball(sys.argv[1], sys.argv[2:] or RUN_PACKAGES))
    except EmulationError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
