"""Strict parsers of TPMS_ATTEST, TPMT_SIGNATURE and tpm2-tools PCR files: round trips, hostile bytes, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.tpm import quote as q
from obelisk.core.errors import ParseError

SAMPLE = q.Attest(
    qualified_signer=bytes.fromhex("000b") + b"\x11" * 32,
    extra_data=b"\x22" * 20,
    clock_info=q.ClockInfo(clock=123456, reset_count=3, restart_count=1, safe=True),
    firmware_version=0x2019_0000_0001,
    selections=(q.PCRSelection("sha256", tuple(range(12)), 3),),
    pcr_digest=b"\x33" * 32,
)
SAMPLE_BYTES = q.serialize_attest(SAMPLE)


def test_attest_round_trip():
    assert q.parse_attest(SAMPLE_BYTES) == SAMPLE
    assert q.serialize_attest(q.parse_attest(SAMPLE_BYTES)) == SAMPLE_BYTES
    assert q.selected_in_order(SAMPLE) == [("sha256", i) for i in range(12)]


@pytest.mark.parametrize("mutate, needle", [
    (lambda b: b"\xff\x54\x43\x48" + b[4:], "magic"),
    (lambda b: b[:4] + b"\x80\x17" + b[6:], "type 0x8017"),
    (lambda b: b + b"\x00", "1 trailing bytes"),
    (lambda b: b[:-1], "pcrDigest"),
    (lambda b: b[:6] + b"\xff\xff" + b[8:], "qualifiedSigner size 65535"),
])
def test_attest_hostile(mutate, needle):
    with pytest.raises(ParseError) as info:
        q.parse_attest(mutate(SAMPLE_BYTES), "quote.msg")
    assert needle in str(info.value) and str(info.value).startswith("quote.msg (offset ")


def test_attest_huge_selection_count():
    # pcrSelect count sits after the fixed clock info; patch it to 2^32-1
    off = 2 + 4 + 2 + len(SAMPLE.qualified_signer) + 2 + len(SAMPLE.extra_data) + 8 + 4 + 4 + 1 + 8
    bad = SAMPLE_BYTES[:off] + b"\xff\xff\xff\xff" + SAMPLE_BYTES[off + 4:]
    with pytest.raises(ParseError, match="pcrSelect count 4294967295"):
        q.parse_attest(bad)


def test_signature_round_trip_and_hostile():
    ecdsa = q.Signature(q.ALG_ECDSA, q.ALG_SHA256, ecdsa_r=b"\x01" * 32, ecdsa_s=b"\x02" * 32)
    assert q.parse_signature(q.serialize_signature(ecdsa)) == ecdsa
    rsa = q.Signature(q.ALG_RSASSA, q.ALG_SHA256, rsa=b"\x05" * 256)
    assert q.parse_signature(q.serialize_signature(rsa)) == rsa
    with pytest.raises(ParseError, match="trailing"):
        q.parse_signature(q.serialize_signature(rsa) + b"\0")
    with pytest.raises(ParseError, match="sigAlg 0x0005"):
        q.parse_signature(struct.pack(">HH", 5, q.ALG_SHA256))
    with pytest.raises(ParseError, match="exceeds"):
        q.parse_signature(struct.pack(">HHH", q.ALG_RSASSA, q.ALG_SHA256, 0xFFFF))


def test_sha1_signatures_refused():
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    sig = q.Signature(q.ALG_ECDSA, q.ALG_SHA1, ecdsa_r=b"\1", ecdsa_s=b"\1")
    with pytest.raises(q.SignatureError, match="sha1 is not allowed"):
        q.verify_signature(key.public_key(), sig, b"msg")


def test_tools_pcr_file_round_trip():
    values = [(i, bytes([i]) * 32) for i in range(12)]
    data = q.serialize_tools_pcrs("sha256", values)
    assert len(data) == 1200  # what tpm2_quote writes for 12 sha256 PCRs
    assert q.parse_tools_pcrs(data) == [("sha256", i, v) for i, v in values]
    with pytest.raises(ParseError):
        q.parse_tools_pcrs(data[:-1])
    with pytest.raises(ParseError, match="selection count"):
        q.parse_tools_pcrs(b"\xff\xff\xff\xff" + data[4:])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_attest_random(data):
    try:
        parsed = q.parse_attest(data)
    except ParseError:
        return
    assert q.serialize_attest(parsed) == data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(SAMPLE_BYTES)))
def test_fuzz_attest_mutated(mutations, cut):
    data = bytearray(SAMPLE_BYTES)
    for pos, value in mutations:
        data[pos] = value
    data = bytes(data[:cut])
    try:
        parsed = q.parse_attest(data)
    except ParseError:
        return
    assert q.serialize_attest(parsed) == data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_signature_and_pcr_file(data):
    for parse in (q.parse_signature, q.parse_tools_pcrs):
        try:
            parse(data)
        except ParseError:
            pass


# ---- evidence bundle loader -----------------------------------------------------------------------

def _bundle_text() -> str:
    from obelisk.attest import evidence

    bundle = evidence.Evidence(nonce=b"\1" * 16, attest=SAMPLE_BYTES, signature=b"\0\x18\0\x0b",
                               bank="sha256", pcrs={i: bytes(32) for i in range(12)},
                               event_log=b"log", ima_log=b"10 abc", ima_format="ascii",
                               kernel={"release": "6.1"})
    return evidence.serialize(bundle)


def test_bundle_round_trip():
    from obelisk.attest import evidence

    text = _bundle_text()
    assert evidence.serialize(evidence.parse(text)) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(list('{}[]":,0123456789abcdef nul') + ["\\u0000"])),
                min_size=1, max_size=6), st.integers(0, 2000))
def test_fuzz_bundle_loader(mutations, cut):
    from obelisk.attest import evidence
    from obelisk.core.errors import InputError

    text = list(_bundle_text())
    for pos, ch in mutations:
        if pos < len(text):
            text[pos] = ch
    data = "".join(text)[: cut or None]
    try:
        evidence.parse(data)
    except InputError as exc:
        assert "\n" not in str(exc)
