"""PCR arithmetic: the one composite digest and the one extend."""

from __future__ import annotations

import hashlib

import pytest

from obelisk.core.errors import InputError
from obelisk.tpm import pcr

SHA256 = [hashlib.sha256(bytes([i])).digest() for i in range(24)]
SHA1 = [hashlib.sha1(bytes([i])).digest() for i in range(24)]

# What tpm/quote.py's pcr_digest and tpm/eventlog.py's pcr_composite_digest (identical) gave.
BEFORE = [
    ((0, 1, 2, 3, 4, 5, 6, 7), "sha256", SHA256, "2b3e6d92bfa1c8f41c60e107bc352d83e51e1a4414298a2e3ed2bac1a2427a53"),
    ((7, 11), "sha256", SHA256, "f2d15b5f401abd86b836b32b6d17081441a66f96bb724421b8ea3bc987450755"),
    (tuple(range(12)), "sha384", SHA256, ("7e6a14183704954909f94017ef27abf22a95d762dd31c59fe6050b3d500d3809"
                                          "48b9e66bfb5d5b9eea98695ee28a4a60")),
    ((10,), "sha1", SHA1, "127a54cf4fbd31a588a9cf45f63b37df7dc25f16"),
    ((), "sha256", SHA256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
]


@pytest.mark.parametrize("selection,bank,values,expected", BEFORE)
def test_composite_digest_is_unchanged(selection, bank, values, expected):
    assert pcr.composite_digest([values[i] for i in selection], bank).hex() == expected
    assert pcr.composite_digest((values[i] for i in selection), bank).hex() == expected


def test_composite_digest_unknown_bank():
    with pytest.raises(InputError, match="md5"):
        pcr.composite_digest([b"\0" * 16], "md5")


@pytest.mark.parametrize("bank", ["sha1", "sha256", "sha384", "sha512"])
def test_extend_is_tpm2_pcr_extend(bank):
    size = hashlib.new(bank).digest_size
    digest = hashlib.new(bank, b"event").digest()
    assert pcr.extend(bytes(size), digest, bank) == hashlib.new(bank, bytes(size) + digest).digest()


def test_parse_pcr_list():
    assert pcr.parse_pcr_list("11,0-2,7") == (0, 1, 2, 7, 11)
    with pytest.raises(InputError):
        pcr.parse_pcr_list("24")


def test_parse_pcr_values():
    a, b = "ab" * 32, "cd" * 32
    assert pcr.parse_pcr_values([f"7={a}", f"11={b}", f"7={b}"], "sha256") == {7: bytes.fromhex(b),
                                                                                 11: bytes.fromhex(b)}
    assert pcr.parse_pcr_values([f"0={'ee' * 20}"], "sha1") == {0: b"\xee" * 20}
    assert pcr.parse_pcr_values([], "sha256") == {}


@pytest.mark.parametrize("item", ["7", "7=", "x=" + "ab" * 32, "24=" + "ab" * 32, "-1=" + "ab" * 32,
                                  "7=" + "ab" * 31, "7=" + "zz" * 32, "7=" + "ab" * 20])
def test_parse_pcr_values_errors_as_the_cli_printed_them(item):
    with pytest.raises(InputError) as exc:
        pcr.parse_pcr_values([item], "sha256", "--pcr-value")
    assert str(exc.value) == f"--pcr-value {item!r}: expected N=64 hex digits (sha256)"
