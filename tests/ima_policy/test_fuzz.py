"""Hostile bytes: the parsers raise only ParseError, with one line naming the entry or offset."""

import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.core.errors import ParseError
from obelisk.ima_policy.measurement_list import (
    parse_ascii,
    parse_binary,
    parse_measurement_list,
    serialize_ascii,
    serialize_binary,
)
from tests.ima_policy.logs import sample_entries

VALID = serialize_binary(sample_entries(6, "ima-sig"))
VALID_ASCII = serialize_ascii(sample_entries(6, "ima-sig"))
VALID_NG = serialize_binary(sample_entries(6, "ima-ng"))
VALID_NG_ASCII = serialize_ascii(sample_entries(6, "ima-ng"))


def _check(parse, data):
    try:
        parse(data)
    except ParseError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert "entry" in msg or "offset" in msg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes(data):
    _check(parse_measurement_list, data)
    _check(parse_binary, data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID)), st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                                            max_size=6))
def test_mutated_and_truncated_binary(cut, flips):
    data = bytearray(VALID[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _check(parse_binary, bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(VALID_ASCII)), st.lists(st.tuples(st.integers(0, len(VALID_ASCII) - 1),
                                                            st.integers(0, 255)), max_size=6))
def test_mutated_ascii(cut, flips):
    data = bytearray(VALID_ASCII[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _check(parse_ascii, bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([24, 34, 38]))
def test_absurd_length_fields_bounded_memory(value, pos):
    """A length field claiming gigabytes is refused before anything is allocated."""
    data = bytearray(VALID)
    data[pos:pos + 4] = value.to_bytes(4, "little")
    tracemalloc.start()
    try:
        _check(parse_binary, bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(VALID) + 1_000_000


def _verify(data):
    from obelisk.ima_policy.reference import ReferenceManifest
    from obelisk.ima_policy.verify import VerifyOptions, verify_log

    verify_log(data, "fuzz", VerifyOptions(banks=("sha1", "sha256"), reference=ReferenceManifest({}), workers=1))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([VALID, VALID_NG]), st.floats(0, 1),
       st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6))
def test_verify_walk_on_mutated_binary(valid, cut_at, flips_at):
    """`ima log verify` walks binary lists with its own tight loop: it must fail the same clean way."""
    cut = int(cut_at * len(valid))
    flips = [(int(f * (len(valid) - 1)), v) for f, v in flips_at]
    data = bytearray(valid[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _check(_verify, bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([VALID_ASCII, VALID_NG_ASCII]), st.floats(0, 1),
       st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6))
def test_verify_walk_on_mutated_ascii(valid, cut_at, flips_at):
    cut = int(cut_at * len(valid))
    flips = [(int(f * (len(valid) - 1)), v) for f, v in flips_at]
    data = bytearray(valid[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _check(_verify, bytes(data))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_verify_random_bytes(data):
    _check(_verify, data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(__import__("obelisk.ima_policy.templates", fromlist=["x"]).BUILTIN)),
       st.binary(max_size=120), st.booleans())
def test_entries_with_valid_hashes_over_hostile_template_data(template, tdata, little):
    """An attacker can give any template data a matching hash: the field structure is still checked."""
    import hashlib
    import struct

    order = "<" if little else ">"
    name = template.encode()
    if template == "ima":
        body = tdata[:20].ljust(20, b"\0") + struct.pack(order + "I", len(tdata[20:])) + tdata[20:]
        hashed = tdata[:20].ljust(20, b"\0") + tdata[20:].ljust(256, b"\0")
    else:
        body = struct.pack(order + "I", len(tdata)) + tdata
        hashed = tdata
    entry = struct.pack(order + "I20sI", 10, hashlib.sha1(hashed).digest(), len(name)) + name + body
    boot = serialize_binary(sample_entries(1)) if little else b""
    for data in (entry, boot + entry):
        _check(parse_binary, data)
        _check(_verify, data)
