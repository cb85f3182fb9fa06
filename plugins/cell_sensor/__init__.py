"""Cell sensors: BM BCS-02, BCS-06 and BCS-12: the device family's profiles, registered with the gateway through the
hook contract."""
from __future__ import annotations

from pathlib import Path

from gateway.hookspecs import hookimpl

PROFILES = Path(__file__).resolve().parent / "profiles"


@hookimpl
def bmsgw_profile_dirs() -> list[Path]:
    return [PROFILES]
