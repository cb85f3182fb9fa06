"""Fuzzing the files a person writes: the configuration (``bmsgw check-config``) and device profiles.

Whatever the file holds, ``check-config`` answers "valid" (exit 0) or one readable line naming the file and
the key (exit 2): never a traceback, never a hang.  Three generators: the valid default document with a few
values replaced, removed or added (structure-aware: it gets deep into the cross-section checks), the same
document as text with characters and YAML constructs spliced in, and arbitrary bytes.  Profiles get the
same treatment through ``parse_profile`` and through a profile folder the config names.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, strategies as st

from gateway import cli
from gateway.errors import ConfigError
from gateway.profiles import load_profile
from tests.conftest import DEFAULT_CONFIG
from tests.fuzz.cases import fuzz_settings, ran
from tests.support import small_bank

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "plugins" / "cell_sensor" / "profiles" / "bm-bcs-12.yaml"
MAX_MESSAGE = 600  # a person reads it on one terminal line or two


def base_config() -> dict:
    """The shipped default config, all face sections included, on a 2 x 3 bank (fast to check)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data.update(small_bank(2, 3))
    data["gateway"]["state_dir"] = "var"
    return data


BASE = base_config()
BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)
PROFILE_DATA = yaml.safe_load(PROFILE.read_text())
PROFILE_TEXT = PROFILE.read_text()


def check_config(path: Path) -> tuple[int, str]:
    """``bmsgw check-config`` in-process: (exit code, stderr).  Any exception but the CLI's own is a crash."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["check-config", "--config", str(path)])
    return rc, err.getvalue()


def assert_readable(rc: int, err: str, *files: Path) -> None:
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err, err
    if rc == 0:
        return
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"the error is not one line: {err!r}"
    line = lines[0]
    assert line.startswith("bmsgw: "), line
    assert any(line.startswith(f"bmsgw: {f}") for f in files), f"the error does not name the file: {line!r}"
    assert len(line) <= MAX_MESSAGE, f"{len(line)} characters: {line[:200]}..."
    assert line.isprintable(), f"control characters in the error: {line!r}"


# -- values a person (or a broken editor) could put anywhere --------------------------------------------------
NASTY_STRINGS = ["", " ", "sim", "bus1", "bus9", "127.0.0.1:0", "127.0.0.1:99999", "[::1]:5020", "[zz]:1",
                 "0.0.0.0:502", "localhost:8080", ":80", "bm-bcs-12", "no-such-profile", "1.3.6.1.4.1.32473",
                 "$argon2id$v=19$m=65536,t=3,p=4$x$y", "/nonexistent/dir", "..", "~", "null", "yes", "0x1F",
                 "1e999", "x" * 300, "line\nbreak", "tab\there", "\x00nul", "ünïcødé", "\u202eRTL", "%s%n{0}",
                 "DEBUG", "v2c", "v3", "aes", "sha", "exception", "ignore", "10.0.0.0/8", "10.0.0.300", "-1"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, 1, -1, 2, 247, 248, 255, 256, 65535, 65536, 2 ** 31, 2 ** 63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.5, 1e-9, 1e300]),
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=20),
    st.dates(),
)
keys = st.one_of(st.sampled_from(["enabled", "listen", "x", "buses", "name", "port", "count", "address", "id",
                                  "devices", "profile", "bus", "cells", "users", "targets", "unknown_key"]),
                 st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(keys, inner, max_size=3)), max_leaves=8)


def mutate(doc, data) -> object:
    """Apply one random edit somewhere in ``doc`` (in place where possible); returns the new root."""
    path = []
    node = doc
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 3), label="descend") > 0:
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append((node, key))
        node = node[key]
    op = data.draw(st.sampled_from(["replace", "delete", "add", "duplicate", "wrap"]), label="op")
    if not path:
        if op == "add" and isinstance(doc, dict):
            doc[data.draw(keys, label="new key")] = data.draw(values, label="value")
            return doc
        return data.draw(values) if op == "replace" else doc
    parent, key = path[-1]
    if op == "replace":
        parent[key] = data.draw(values, label="value")
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent, dict):
        parent[data.draw(keys, label="new key")] = data.draw(values, label="value")
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    elif op == "wrap":
        parent[key] = [parent[key]]
    return doc


SNIPPETS = ["&a [*a]", "*nope", "<<: *x", "!!python/object/apply:os.system ['true']", "!!binary AAAA", "\t",
            "{", "}", "[", "- - -", ": :", "? ", "---\n", "...\n", "\x00", "\ufeff", "\udcff", "%YAML 9.9\n",
            "'", '"', "\\", "#", "|", ">", "!!float nan", ".inf", "-.inf", "~", "null", "{a: 1, a: 2}",
            "[" * 60 + "]" * 60, "- " * 40, "\r\n", "\x85", "&x !!map {}"]


@st.composite
def spliced_text(draw, text: str):
    """``text`` with a few characters and YAML constructs inserted, deleted or replaced."""
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "truncate", "replace"]))
        piece = draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=6)))
        if kind == "insert":
            text = text[:pos] + piece + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 40)):]
        elif kind == "truncate":
            text = text[:pos]
        else:
            text = text[:pos] + piece + text[pos + len(piece):]
    return text


def write_edited(path: Path, base: dict, data) -> Path:
    """``base`` with one to three random edits, written to ``path`` as YAML."""
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        doc = mutate(doc, data)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogatepass"))


# -- the configuration --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


def test_the_base_config_is_valid(work):
    path = work / "base.yaml"
    path.write_text(BASE_TEXT)
    assert check_config(path) == (0, "")


@fuzz_settings(80)
@given(data=st.data())
def test_config_documents_with_edited_values(work, data):
    path = write_edited(work / "edited.yaml", BASE, data)
    ran("config.values")
    assert_readable(*check_config(path), path)  # check-config builds the faces too, as `run` does


@fuzz_settings(60)
@given(text=spliced_text(BASE_TEXT))
def test_config_text_with_spliced_yaml(work, text):
    path = work / "spliced.yaml"
    write_text(path, text)
    ran("config.text")
    assert_readable(*check_config(path), path)


@fuzz_settings(30)
@given(blob=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_config_any_bytes(work, blob):
    path = work / "bytes.yaml"
    path.write_bytes(blob)
    ran("config.bytes")
    assert_readable(*check_config(path), path)


# -- device profiles ----------------------------------------------------------------------------------------
def load_or_refuse(path: Path) -> None:
    """A profile loads, or is refused with a ConfigError naming the file (one line)."""
    try:
        load_profile(path)
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith(str(path)) and "\n" not in text and len(text) <= MAX_MESSAGE, text


@fuzz_settings(300)
@given(data=st.data())
def test_profiles_with_edited_values(work, data):
    path = write_edited(work / "fuzzed-profile.yaml", PROFILE_DATA, data)
    ran("profile.values")
    load_or_refuse(path)


@fuzz_settings(100)
@given(text=spliced_text(PROFILE_TEXT))
def test_profile_text_with_spliced_yaml(work, text):
    path = work / "spliced-profile.yaml"
    write_text(path, text)
    ran("profile.text")
    load_or_refuse(path)


@fuzz_settings(30)
@given(data=st.data())
def test_a_broken_profile_in_a_profile_folder(work, data):
    """A broken profile overriding a shipped one, through the config's profile_dirs: one line from check-config."""
    folder = work / "profiles"
    folder.mkdir(exist_ok=True)
    profile = write_edited(folder / PROFILE.name, PROFILE_DATA, data)
    config = work / "with-profiles.yaml"
    config.write_text(yaml.safe_dump({**BASE, "plugins": {"profile_dirs": [str(folder)]}}, sort_keys=False))
    ran("profile.in_config")
    assert_readable(*check_config(config), config, profile)
