#!/usr/bin/python3 -SB
"""Import everything the package ships, from the staging tree, with nothing else on the path.

    /usr/bin/python3 -I -S -B debian/check-imports.py debian/bmsgw

Run by debian/rules after dh_strip: every module of the application (gateway, plugins) and every
compiled extension of the bundled libraries must import with only the bundled libraries and the
standard library available (-S: not even the system's dist-packages).  A face importing a library
missing from the runtime part of requirements.lock, or a binary broken by stripping, fails the build here.

Built for another architecture (DEB_HOST_ARCH is not DEB_BUILD_ARCH: dpkg-buildpackage -a), the check runs
under that architecture's interpreter: the staging tree and this script are copied into a fresh Debian 12 root
of the target architecture and run there under qemu-user (debian/emulation.py), so the ARM extensions are
loaded by an ARM Python, linked against Debian's ARM libc, exactly as on the controller.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import runpy
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

# Extensions that need something a gateway never has, with the reason.
NOT_CHECKED = {"PIL._imagingtk": "Pillow's Tk bridge needs tkinter (a desktop GUI toolkit)"}


def extension_modules(site: Path) -> list[str]:
    names = []
    for so in site.rglob("*.so"):
        rel = so.relative_to(site)
        if not rel.parts[0].isidentifier() or ".libs" in rel.parts[0]:
            continue  # bundled shared libraries (pillow.libs/...) are loaded by the extensions
        if not all(part.isidentifier() for part in rel.parts[:-1]):
            continue
        name = ".".join([*rel.parts[:-1], so.name.split(".")[0]])
        if name not in NOT_CHECKED:
            names.append(name)
    return sorted(names)


def app_modules(share: Path) -> list[str]:
    names = []
    for top in ("gateway", "plugins"):
        if not (share / top / "__init__.py").exists():
            continue
        names.append(top)
        for info in pkgutil.walk_packages([str(share / top)], prefix=f"{top}."):
            if not info.name.endswith("__main__"):  # runs the CLI when imported
                names.append(info.name)
    return names


def check_in_root(dest: Path, arch: str) -> int:
    emulation = runpy.run_path(str(Path(__file__).resolve().parent / "emulation.py"))
    with tempfile.TemporaryDirectory(prefix="bmsgw-imports-") as tmp:
        root = emulation["fresh_root"](arch, Path(tmp))
        stage = root / "stage"
        for tree in ("usr/lib/bmsgw", "usr/share/bmsgw"):
            shutil.copytree(dest / tree, stage / tree, symlinks=True)
        shutil.copy(__file__, stage / "check-imports.py")
        print(f"check-imports: under the {arch} interpreter (qemu-user, Debian 12 {arch} root)", flush=True)
        return emulation["in_root"](root, ["/usr/bin/python3", "-I", "-S", "-B", "/stage/check-imports.py",
                                           "/stage"]).returncode


def main() -> None:
    dest = Path(sys.argv[1]).resolve()
    host, build = os.environ.get("DEB_HOST_ARCH"), os.environ.get("DEB_BUILD_ARCH")
    if host and build and host != build:
        sys.exit(check_in_root(dest, host))
    site = next((dest / "usr/lib/bmsgw/lib").glob("python3.*/site-packages"))
    share = dest / "usr/share/bmsgw"
    sys.path[:0] = [str(share), str(site)]
    failed = []
    modules = extension_modules(site) + app_modules(share)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
            traceback.print_exc()
    if failed:
        sys.exit(f"{len(failed)} of {len(modules)} modules do not import from the package: {', '.join(failed)}")
    print(f"check-imports: {len(modules)} modules import from the package alone")


if __name__ == "__main__":
    main()
