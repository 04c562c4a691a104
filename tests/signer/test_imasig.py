import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core.errors import ParseError
from obelisk.signer import hashalgo, imasig


def test_v2_signature_round_trips_and_lays_out_like_the_kernel_header():
    sig = imasig.ImaSignature(2, hashalgo.by_name("sha256"), bytes.fromhex("e30fc481"), b"\x01" * 256)
    raw = imasig.serialize(sig)
    # type 0x03, version 2, hash_algo 4 (sha256), keyid, big-endian length 0x0100
    assert raw[:9] == bytes.fromhex("030204e30fc4810100")
    assert imasig.parse(raw) == sig


def test_v3_verity_signature_round_trips():
    sig = imasig.ImaSignature(3, hashalgo.by_name("sha512"), b"\xaa\xbb\xcc\xdd", b"\x30\x44" + b"\x02" * 68)
    raw = imasig.serialize(sig)
    assert raw[0] == 0x06 and raw[1] == 3 and raw[2] == 6
    assert imasig.parse(raw) == sig


def test_hash_only_values_parse_as_unsigned_digests():
    ng = imasig.parse(bytes([0x04, 4]) + b"\x11" * 32)
    assert isinstance(ng, imasig.ImaDigest) and not ng.signed and ng.hash_algo.name == "sha256"
    legacy = imasig.parse(bytes([0x01]) + b"\x22" * 20)
    assert legacy.hash_algo.name == "sha1"
    assert imasig.serialize(ng) == bytes([0x04, 4]) + b"\x11" * 32


@pytest.mark.parametrize("raw, message", [
    (b"", "empty"),
    (b"\x03\x02\x04\x00", "truncated"),
    (bytes.fromhex("030204e30fc4810100") + b"\x00" * 10, "says 256 bytes but 10 follow"),
    (bytes.fromhex("030304e30fc4810001") + b"\x00", "needs version 2"),
    (bytes.fromhex("030263e30fc4810001") + b"\x00", "unknown hash algorithm id 99"),
    (bytes.fromhex("030204e30fc4810000"), "out of range"),
    (b"\x09abc", "unknown security.ima type 0x09"),
    (bytes([0x04, 4]) + b"\x00" * 5, "must be 32 bytes"),
])
def test_malformed_values_name_the_problem(raw, message):
    with pytest.raises(ParseError, match=message):
        imasig.parse(raw, source="f")


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_hostile_bytes_only_ever_raise_parse_error(raw):
    try:
        parsed = imasig.parse(raw)
    except ParseError:
        return
    assert imasig.serialize(parsed) == raw  # whatever parses, round-trips exactly


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([2, 3]), st.sampled_from(["sha256", "sha384", "sha512"]), st.binary(min_size=4, max_size=4),
       st.binary(min_size=1, max_size=4096))
def test_any_signature_round_trips(version, algo, key_id, signature):
    sig = imasig.ImaSignature(version, hashalgo.by_name(algo), key_id, signature)
    assert imasig.parse(imasig.serialize(sig)) == sig
