"""Strict parsers of TPMS_ATTEST, TPMT_SIGNATURE and tpm2-tools PCR files: round trips, hostile bytes, fuzzing."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.core.errors import InputError, ParseError
from obelisk.tpm import algorithms as alg
from obelisk.tpm import quote as q

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
    ecdsa = q.Signature(alg.ECDSA, alg.SHA256.alg_id, ecdsa_r=b"\x01" * 32, ecdsa_s=b"\x02" * 32)
    assert q.parse_signature(q.serialize_signature(ecdsa)) == ecdsa
    rsa = q.Signature(alg.RSASSA, alg.SHA256.alg_id, rsa=b"\x05" * 256)
    assert q.parse_signature(q.serialize_signature(rsa)) == rsa
    with pytest.raises(ParseError, match="trailing"):
        q.parse_signature(q.serialize_signature(rsa) + b"\0")
    with pytest.raises(ParseError, match="sigAlg 0x0005"):
        q.parse_signature(struct.pack(">HH", 5, alg.SHA256.alg_id))
    with pytest.raises(ParseError, match="exceeds"):
        q.parse_signature(struct.pack(">HHH", alg.RSASSA, alg.SHA256.alg_id, 0xFFFF))


def test_sha1_signatures_refused():
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    sig = q.Signature(alg.ECDSA, alg.SHA1.alg_id, ecdsa_r=b"\1", ecdsa_s=b"\1")
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



# ---- checkquote's PCR file: `tpm2_quote -F values` (concatenated) or the serialized file ---------

_VALUES = {p: bytes([p]) * 32 for p in range(12)}


def test_quoted_pcr_values_from_concatenated_values():
    data = b"".join(_VALUES[p] for p in range(12))
    assert q.quoted_pcr_values(SAMPLE, data) == ("sha256", _VALUES)


def test_quoted_pcr_values_from_serialized_file():
    data = q.serialize_tools_pcrs("sha256", sorted(_VALUES.items()))
    assert q.quoted_pcr_values(SAMPLE, data) == ("sha256", _VALUES)


def test_quoted_pcr_values_other_selection():
    data = q.serialize_tools_pcrs("sha256", [(p, _VALUES[p]) for p in range(8)])
    with pytest.raises(InputError, match="pcrs.bin: the PCR file selects other PCRs than the quote"):
        q.quoted_pcr_values(SAMPLE, data, "pcrs.bin")


def test_quoted_pcr_values_one_bank_only():
    two = replace(SAMPLE, selections=(q.PCRSelection("sha256", (0,), 3), q.PCRSelection("sha1", (0,), 3)))
    with pytest.raises(InputError, match=r"quote.bin: quote selects banks \['sha1', 'sha256'\]"):
        q.quoted_pcr_values(two, b"", "pcrs.bin", "quote.bin")


def test_quoted_pcr_values_garbage_is_a_parse_error():
    with pytest.raises(ParseError, match="pcrs.bin"):
        q.quoted_pcr_values(SAMPLE, b"\x01" * 31, "pcrs.bin")


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
