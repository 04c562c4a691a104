"""Hostile bytes: the parsers raise only ParseError, with one line naming the entry or offset."""

import tracemalloc

from hypothesis import HealthCheck, given, settings, strategies as st

from obelisk.core.errors import ParseError
from obelisk.ima_policy.measurement_list import parse_ascii, parse_binary, parse_measurement_list, serialize_ascii, \
    serialize_binary
from tests.ima_policy.logs import sample_entries

VALID = serialize_binary(sample_entries(6, "ima-sig"))
VALID_ASCII = serialize_ascii(sample_entries(6, "ima-sig"))


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
