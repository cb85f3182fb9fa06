"""The codes of ``string.state``, by name, as profiles/points.yaml declares them (the one list of names)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..points import PointSpec

STATE_POINT = "string.state"


@dataclass(frozen=True, slots=True)
class StringStates:
    """``string.state``'s codes: read them here, never write the numbers or the names anywhere else."""

    unknown: int
    floating: int
    charging: int
    discharging: int
    rest: int
    names: tuple[tuple[int, str], ...]

    @classmethod
    def from_spec(cls, spec: PointSpec) -> StringStates:
        codes = {name: code for code, name in spec.states}
        missing = {"unknown", "float", "charging", "discharging", "rest"} - set(codes)
        if missing:
            raise ValueError(f"{spec.id} lacks the state(s) {', '.join(sorted(missing))}")
        return cls(codes["unknown"], codes["float"], codes["charging"], codes["discharging"], codes["rest"],
                   tuple(spec.states))

    def name(self, code: float | int | None) -> str:
        if code is None:
            return "-"
        return dict(self.names).get(int(code), str(int(code)))


def string_states(catalog: Iterable[PointSpec] | None = None) -> StringStates:
    """From a catalog (the gateway's, or any iterable of families), or from profiles/points.yaml itself."""
    if catalog is None:
        from ..profiles import load_catalog_file

        catalog = load_catalog_file()
    for spec in catalog:
        if spec.id == STATE_POINT:
            return StringStates.from_spec(spec)
    raise KeyError(STATE_POINT)
