"""EFI signature lists: round trip, real firmware databases, virt-firmware as the independent reader, hostile input."""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from virt.firmware.efi import siglist as vf_siglist

from obelisk.core.errors import ParseError
from obelisk.signer import efi_signature_list as esl
from obelisk.tpm import eventlog as el
from obelisk.tpm import uefi

SHARED = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "eventlog"


def real_databases():
    """PK, KEK, db and dbx contents as real firmware measured them (non-empty ones)."""
    for path in sorted(SHARED.glob("*.bin")):
        for ev in el.parse(path.read_bytes()).events[1:]:
            if ev.event_type == uefi.EV_EFI_VARIABLE_DRIVER_CONFIG:
                var = uefi.parse_variable_data(ev.data)
                if var.name in ("PK", "KEK", "db", "dbx") and var.data:
                    yield pytest.param(var.data, id=f"{path.name}-{var.name}")


@pytest.mark.parametrize("data", list(real_databases()))
def test_real_databases_roundtrip_and_agree_with_virt_firmware(data):
    lists = esl.parse_database(data)
    assert esl.serialize_database(lists) == data
    theirs = vf_siglist.EfiSigDB(data)
    assert [str(x.guid) for x in theirs] == [str(x.signature_type) for x in lists]
    assert [[(str(e["guid"]), e["data"]) for e in x] for x in theirs] == \
        [[(str(e.owner), e.data) for e in x.entries] for x in lists]


def test_real_databases_cover_certificates_and_hashes():
    types = {sl.signature_type for p in real_databases() for sl in esl.parse_database(p.values[0])}
    assert {esl.EFI_CERT_X509_GUID, esl.EFI_CERT_SHA256_GUID} <= types


def test_x509_list_is_what_virt_firmware_writes(rsa_keys):
    der_bytes = rsa_keys.ca_cert_der.read_bytes()
    owner = esl.owner_guid(der_bytes)
    ours = esl.serialize_list(esl.x509_list(owner, der_bytes))
    theirs = vf_siglist.EfiSigDB()
    theirs.add_cert_data(owner, der_bytes)
    assert ours == bytes(theirs)
    assert esl.x509_list(owner, der_bytes).entries[0].to_bytes() == owner.bytes_le + der_bytes


def test_owner_guid_is_derived_from_the_ca():
    assert esl.owner_guid(b"ca one") == esl.owner_guid(b"ca one")
    assert esl.owner_guid(b"ca one") != esl.owner_guid(b"ca two")
    assert esl.owner_guid(b"ca one").version == 5


entries = st.builds(esl.SignatureData, st.uuids(), st.binary(min_size=1, max_size=8))


@given(st.lists(st.tuples(st.uuids(), st.integers(1, 40), st.lists(st.uuids(), min_size=1, max_size=4),
                          st.binary(max_size=8)), max_size=4), st.data())
def test_roundtrip(specs, draw):
    lists = tuple(esl.SignatureList(sig_type, tuple(esl.SignatureData(o, draw.draw(st.binary(min_size=size,
                                                                                          max_size=size)))
                                                    for o in owners), header)
                  for sig_type, size, owners, header in specs)
    assert esl.parse_database(esl.serialize_database(lists)) == lists


@given(st.binary(max_size=300))
def test_hostile_bytes_raise_parse_error_only(data):
    try:
        esl.parse_database(data)
    except ParseError:
        pass


def _list(list_size: int, header_size: int, sig_size: int, tail: bytes) -> bytes:
    return esl.EFI_CERT_SHA256_GUID.bytes_le + struct.pack("<III", list_size, header_size, sig_size) + tail


@pytest.mark.parametrize("data, field", [
    (b"\0" * 27, "header needs 28"),
    (_list(1000, 0, 48, b"\0" * 48), "SignatureListSize 1000"),
    (_list(20, 0, 48, b""), "SignatureListSize 20"),
    (_list(28 + 48, 60, 48, b"\0" * 48), "SignatureHeaderSize 60"),
    (_list(28 + 16, 0, 16, b"\0" * 16), "SignatureSize 16"),
    (_list(28 + 50, 0, 48, b"\0" * 50), "multiple of SignatureSize"),
    (_list(28, 0, 48, b""), "multiple of SignatureSize"),
])
def test_malformed_lists_name_the_field(data, field):
    with pytest.raises(ParseError, match=field) as info:
        esl.parse_database(data, source="db")
    assert str(info.value).startswith("db")


def test_second_list_error_names_its_offset():
    good = esl.serialize_list(esl.SignatureList(esl.EFI_CERT_SHA256_GUID,
                                                (esl.SignatureData(uuid.uuid4(), hashlib.sha256().digest()),)))
    with pytest.raises(ParseError, match=f"offset {len(good)}"):
        esl.parse_database(good + b"\0" * 10)


def test_serialize_refuses_what_cannot_be_encoded():
    with pytest.raises(ValueError):
        esl.serialize_list(esl.SignatureList(esl.EFI_CERT_X509_GUID, ()))
    with pytest.raises(ValueError):
        esl.serialize_list(esl.SignatureList(esl.EFI_CERT_SHA256_GUID, (
            esl.SignatureData(uuid.uuid4(), b"a"), esl.SignatureData(uuid.uuid4(), b"bb"))))
