"""The credential challenge record: parse/serialize round trip, hostile files, the verifier's check."""

from __future__ import annotations

import json

import pytest

from obelisk.attest import credential
from obelisk.attest.akrecord import AKRecord
from obelisk.core.errors import InputError

SAMPLE = credential.Challenge(credential_blob=bytes.fromhex("0044") + b"\x01" * 0x44,
                              encrypted_secret=bytes.fromhex("0100") + b"\x02" * 0x100)


def test_round_trip():
    data = credential.serialize(SAMPLE)
    assert credential.parse(data) == SAMPLE
    assert credential.serialize(credential.parse(data)) == data


def test_serialized_form_is_the_cli_challenge_file():
    # what `attest credential make` wrote before the record moved out of the CLI
    expected = json.dumps({"format": "obelisk.credential/1", "credential_blob": SAMPLE.credential_blob.hex(),
                           "encrypted_secret": SAMPLE.encrypted_secret.hex()}, indent=2) + "\n"
    assert credential.serialize(SAMPLE) == expected.encode()


@pytest.mark.parametrize("data, why", [
    (b"", "not JSON"),
    (b"\xff\xfe{", "not JSON"),
    (b"[" * 100000, "not JSON"),
    (b'["credential_blob"]', "not a JSON object"),
    (b'"x"', "not a JSON object"),
    (b'{"format": "obelisk.ak/1", "credential_blob": "00", "encrypted_secret": "00"}', "format"),
    (b'{"encrypted_secret": "00"}', "credential_blob missing"),
    (b'{"credential_blob": 5, "encrypted_secret": "00"}', "credential_blob missing"),
    (b'{"credential_blob": "00", "encrypted_secret": "zz"}', "encrypted_secret is not hex"),
    (b'{"credential_blob": "0", "encrypted_secret": "00"}', "credential_blob is not hex"),
])
def test_hostile_input_is_a_one_line_error(data, why):
    with pytest.raises(InputError) as exc:
        credential.parse(data, "chal.json")
    message = str(exc.value)
    assert message.startswith("chal.json: not an obelisk credential challenge") and why in message
    assert "\n" not in message


def _record(**kw) -> AKRecord:
    base = {"public": b"\x00", "public_key": None, "name": b"\x00\x0b" + b"\x11" * 32, "qualified_name": None,
            "attributes": 0x2 | 0x10 | 0x20 | 0x10000 | 0x40000, "ek_public": b"EK", "source": "ak.json"}
    return AKRecord(**{**base, **kw})


def test_check_marks_the_record_activated_only_for_the_secret():
    record = _record()
    assert credential.check(record, b"s" * 32, b"s" * 32).activated is True
    with pytest.raises(credential.CredentialMismatch, match="did not recover the secret") as exc:
        credential.check(record, b"s" * 32, b"t" * 32)
    assert exc.value.exit_code == 1


def test_ek_of():
    assert credential.ek_of(_record()) == b"EK"
    assert credential.ek_of(_record(), b"OTHER") == b"OTHER"
    with pytest.raises(InputError, match="needs the AK's TPM public area"):
        credential.ek_of(_record(ek_public=None))
    with pytest.raises(InputError, match="ak.json: AK lacks restricted: not an attestation key"):
        credential.ek_of(_record(attributes=0x2 | 0x10 | 0x20 | 0x40000))
