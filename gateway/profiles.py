"""Device profiles: YAML register maps, validated against profiles/schema.json."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from ._data import data_dir
from .errors import ConfigError, key_path
from .points import PointSpec

log = logging.getLogger(__name__)

PROFILES_DIR = data_dir("profiles")
SCHEMA_PATH = PROFILES_DIR / "schema.json"
CATALOG_PATH = PROFILES_DIR / "points.yaml"
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    point: str
    table: str  # input | holding
    address: int
    dtype: str
    scale: float = 1.0
    offset: float = 0.0
    word_order: str = "big"
    bit: int | None = None
    channel: int | None = None
    poll: str = "fast"
    valid_range: tuple[float, float] | None = None
    not_available: int | None = None
    per_cell_stride: int | None = None  # concentrator: repeats for every cell of the string
    writable: bool = False

    @property
    def count(self) -> int:
        return _WIDTH[self.dtype]


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    table: str
    address: int
    count: int
    model_offset: int
    model_code: int
    vendor_offset: int | None = None
    vendor_code: int | None = None
    firmware_offset: int | None = None
    serial_offset: int | None = None

    @property
    def location(self) -> tuple[str, int, int]:
        return (self.table, self.address, self.count)

    def matches(self, words: list[int]) -> bool:
        if len(words) < self.count or words[self.model_offset] != self.model_code:
            return False
        return self.vendor_offset is None or words[self.vendor_offset] == self.vendor_code


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    name: str  # the file stem: what a config's `profile:` names
    model: str
    vendor: str
    family: str
    scope: str
    registers: tuple[RegisterSpec, ...]
    identity: IdentitySpec | None = None
    points: tuple[PointSpec, ...] = ()
    description: str = ""
    nominal_voltage: float | None = None
    max_block: int = 125
    max_gap: int = 4
    source: str = ""

    @property
    def concentrator(self) -> bool:
        return any(r.per_cell_stride for r in self.registers)


_schema_validator: jsonschema.Draft202012Validator | None = None


def _validator() -> jsonschema.Draft202012Validator:
    global _schema_validator
    if _schema_validator is None:
        _schema_validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    return _schema_validator


if TYPE_CHECKING:  # the C loader has the pure-Python one's interface; the stubs only know that one as a class
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YamlLoader(_SafeLoader):
    """PyYAML's safe loader, on libyaml when PyYAML has it (the wheels do: about 14x faster than the pure-Python
    parser, which was most of the gateway's start-up time on the target), refusing duplicate keys: YAML says
    they are an error, PyYAML silently keeps the last one (a second ``modbus_tcp:`` section would replace the
    first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if isinstance(node, yaml.MappingNode):  # the base class refuses anything else with its own message
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # <<: *defaults; the keys written next to it override the merged ones, as intended
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # unhashable: PyYAML refuses it with its own message
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_YAML_LOADER = _YamlLoader
MAX_YAML_VALUES = 200_000  # values of a document once its aliases are expanded (the default config: ~1,500)
MAX_YAML_DEPTH = 64


def check_size(data: Any, src: str, where: str = "") -> None:
    """Refuse documents that would hang or crash the checks that walk them: an alias that contains itself,
    aliases that multiply into millions of values ("billion laughs"), absurd nesting."""
    count, stack = 0, [(data, 1)]  # (node, depth)
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(src, where, f"more than {MAX_YAML_VALUES} values once its aliases (*name) are "
                                          "expanded: an alias that refers to itself, or aliases of aliases?")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(src, where, f"nested more than {MAX_YAML_DEPTH} levels deep (or an alias that "
                                          "contains itself)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(where, what) of a YAML error, each on one line."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}", str(getattr(exc, "problem", None) or exc)
    if isinstance(exc, yaml.reader.ReaderError):  # undecodable bytes, control characters
        what = exc.reason
        if isinstance(exc.character, int) and exc.character >= 0:
            what = f"character #x{exc.character:04x}: {what}"
        elif isinstance(exc.character, bytes):
            what = f"byte #x{exc.character.hex()}: {what} ({exc.encoding})"
        return f"position {exc.position}", what
    return "", str(exc).split("\n", 1)[0]


def parse_yaml(text: str | bytes, src: str) -> Any:
    """The data of a YAML document (a file's bytes, or a text from a form); ConfigError naming ``src`` and the
    line when it is not valid YAML, or too large or deep to be checked safely."""
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        where, what = _yaml_problem(exc)
        raise ConfigError(src, where, f"not valid YAML: {what}") from None
    except RecursionError:
        raise ConfigError(src, "", f"not valid YAML: nested more than {MAX_YAML_DEPTH} levels deep") from None
    check_size(data, src)
    return data


def load_yaml(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    return parse_yaml(raw, str(path))


def non_finite(data: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The key path of the first NaN or infinite number in ``data`` (YAML's .nan/.inf), or None.

    JSON Schema lets them through (every comparison with NaN is false), and no setting means them."""
    if isinstance(data, float) and not math.isfinite(data):
        return path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = non_finite(value, path + (key,))
        if found is not None:
            return found
    return None


def schema_error(path: str, error: jsonschema.ValidationError) -> ConfigError:
    where = key_path(error.absolute_path)
    return ConfigError(path, where, error.message)


def point_spec_from_dict(d: dict[str, Any]) -> PointSpec:
    rng = d.get("range")
    return PointSpec(
        id=d["id"], scope=d["scope"], unit=d["unit"], description=d.get("description", ""), slot=d["slot"],
        dtype=d.get("dtype", "uint16"), scale=float(d.get("scale", 1.0)),
        valid_range=tuple(rng) if rng else None, poll=d.get("poll", "fast"), kind=d.get("kind", "gauge"),
        source=d.get("source", "measured"), channels=d.get("channels", 0), metric=d.get("metric"),
        states=tuple((int(k), str(v)) for k, v in d.get("states", ())), writable=bool(d.get("writable", False)),
    )


def parse_profile(data: Any, path: Path) -> DeviceProfile:
    src = str(path)
    if not isinstance(data, dict):
        raise ConfigError(src, "", "expected a mapping with model, vendor, family, scope and registers")
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        raise schema_error(src, errors[0])
    bad = non_finite(data)
    if bad is not None:
        raise ConfigError(src, key_path(bad), "expected a finite number, got NaN or infinity")
    word_order = data.get("word_order", "big")
    registers = []
    for i, r in enumerate(data["registers"]):
        rng = r.get("range")
        if rng and rng[0] > rng[1]:
            raise ConfigError(src, f"registers[{i}].range", f"expected [low, high], got {rng}")
        if r.get("per_cell") and data["scope"] != "string":
            raise ConfigError(src, f"registers[{i}].per_cell",
                              "only a string-scope device can serve the cells of its string")
        registers.append(RegisterSpec(
            point=r["point"], table=r["table"], address=r["address"], dtype=r["type"],
            scale=float(r.get("scale", 1)), offset=float(r.get("offset", 0)),
            word_order=r.get("word_order", word_order), bit=r.get("bit"), channel=r.get("channel"),
            poll=r.get("poll", "fast"), valid_range=tuple(rng) if rng else None,
            not_available=r.get("not_available"),
            per_cell_stride=(r.get("per_cell") or {}).get("stride"), writable=bool(r.get("writable", False)),
        ))
    ident = data.get("identity")
    identity = IdentitySpec(**ident) if ident else None
    if identity and identity.model_offset >= identity.count:
        raise ConfigError(src, "identity.model_offset", f"expected an offset below count ({identity.count})")
    return DeviceProfile(
        name=path.stem, model=data["model"], vendor=data["vendor"], family=data["family"], scope=data["scope"],
        registers=tuple(registers), identity=identity,
        points=tuple(point_spec_from_dict(p) for p in data.get("points", ())),
        description=data.get("description", ""), nominal_voltage=data.get("nominal_voltage"),
        max_block=data.get("max_block", 125), max_gap=data.get("max_gap", 4), source=src,
    )


def load_profile(path: Path) -> DeviceProfile:
    return parse_profile(load_yaml(path), path)


def load_profiles(dirs: Iterable[Path]) -> dict[str, DeviceProfile]:
    """Every ``*.yaml`` profile in ``dirs``; a later directory overrides an earlier one by file name."""
    out: dict[str, DeviceProfile] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.yaml")):
            if path.resolve() == CATALOG_PATH:
                continue
            prof = load_profile(path)
            if prof.name in out:
                log.info("profile %s from %s overrides %s", prof.name, path, out[prof.name].source)
            out[prof.name] = prof
    return out


def load_catalog_file(path: Path = CATALOG_PATH) -> list[PointSpec]:
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ConfigError(str(path), "points", "expected a list of point families")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())["definitions"]["pointFamily"])
    specs = []
    for i, item in enumerate(data["points"]):
        errs = list(validator.iter_errors(item))
        if errs:
            raise ConfigError(str(path), f"points[{i}]." + key_path(errs[0].absolute_path), errs[0].message)
        specs.append(point_spec_from_dict(item))
    return specs
