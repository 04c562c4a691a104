"""The bounded readers themselves: JSON, YAML and decompression refuse hostile input with one line."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core.decompress import inflate
from obelisk.core.errors import InputError, ParseError
from obelisk.core.inputs import read_bounded
from obelisk.core.jsonsafe import MAX_DEPTH, load_json
from obelisk.core.yamlsafe import load_yaml

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30)


def _one_line(exc: BaseException, source: str = "f") -> None:
    assert "\n" not in str(exc) and str(exc).startswith((f"{source}:", f"{source} (offset"))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_round_trip(value):
    assert load_json(json.dumps(value), "f") == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_json_random_bytes_only_parse_error(data):
    try:
        load_json(data, "f")
    except ParseError as exc:
        _one_line(exc)


@pytest.mark.parametrize(("data", "why"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    (b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), "nested deeper"),
    (b'{"a": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"a": ' + b"9" * 200 + b"}", "digits"),
    (b'{"a": Infinity}', "Infinity"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": 1e999}', "out of range"),
    (b'{"a": "\xff"}', "UTF-8"),
    (b'{"a": 1,}', "offset 8"),
])
def test_json_hostile_classes(data, why):
    with pytest.raises(ParseError, match=why) as exc:
        load_json(data, "f")
    _one_line(exc.value)


@pytest.mark.parametrize(("data", "why"), [
    (b"a: " + b"[" * 50_000 + b"]" * 50_000, "nest"),
    (b"a: " + b"[" * 70 + b"]" * 70, "nested deeper"),
    (b"x: " + b"9" * 5000, "4300|digits"),
    (b"x: " + b"9" * 200, "128 digits"),
    (b"name: \xff\xfe bad", "UTF-8"),
    (b"\n".join([b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]".encode() for i in range(1, 9)]), "expands"),
])
def test_yaml_hostile_classes(data, why):
    with pytest.raises(InputError, match=why) as exc:
        load_yaml(data, "f")
    _one_line(exc.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_yaml_random_bytes_only_input_error(data):
    try:
        load_yaml(data, "f")
    except InputError as exc:
        _one_line(exc)


@pytest.mark.parametrize(("kind", "compress"), [
    ("gzip", gzip.compress), ("xz", lzma.compress), ("bzip2", bz2.compress),
    ("lzma", lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE)),
])
def test_inflate_round_trip_and_caps(kind, compress):
    data = os.urandom(1000) + b"\0" * 5000
    assert inflate(compress(data), kind, limit=1 << 20, ratio=10) == data
    bomb = compress(b"\0" * (32 << 20))
    with pytest.raises(ParseError, match="inflates beyond") as exc:
        inflate(bomb, kind, limit=16 << 20, ratio=10, source="f", offset=7)
    _one_line(exc.value)
    assert "offset 7" in str(exc.value)
    with pytest.raises(ParseError, match="truncated|does not decompress"):
        inflate(compress(data)[:-40], kind, limit=1 << 20, ratio=10, source="f")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(["gzip", "xz", "lzma", "bzip2"]))
def test_inflate_random_bytes_only_parse_error(data, kind):
    try:
        inflate(data, kind, limit=1 << 20, ratio=100, source="f")
    except ParseError as exc:
        _one_line(exc)


def test_read_bounded_refuses_special_files_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        read_bounded(fifo, "file", 10)
    with pytest.raises(InputError, match="character device"):
        read_bounded("/dev/zero", "file", 10)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as handle:
        handle.truncate(4 << 30)
    with pytest.raises(InputError, match="larger than 10 bytes"):
        read_bounded(sparse, "file", 10)
