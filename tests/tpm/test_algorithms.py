"""The one table of TPM algorithm ids."""

from __future__ import annotations

import hashlib

import pytest

from obelisk.core.errors import InputError
from obelisk.tpm import algorithms

REGISTRY = {  # TCG Algorithm Registry: TPM_ALG_ID, digest size
    "sha1": (0x0004, 20), "sha256": (0x000B, 32), "sha384": (0x000C, 48), "sha512": (0x000D, 64),
    "sm3_256": (0x0012, 32), "sha3_256": (0x0027, 32), "sha3_384": (0x0028, 48), "sha3_512": (0x0029, 64),
}


@pytest.mark.parametrize("alg", algorithms.HASHES, ids=lambda a: a.name)
def test_every_id_round_trips(alg):
    assert algorithms.by_id(alg.alg_id) is alg
    assert algorithms.by_name(alg.name) is alg
    assert algorithms.by_name(algorithms.name_of(alg.alg_id)).alg_id == alg.alg_id
    assert (alg.alg_id, alg.digest_size) == REGISTRY[alg.name]
    if alg.available:
        assert len(alg.digest(b"obelisk")) == alg.digest_size
        assert alg.digest(b"obelisk") == hashlib.new(alg.hashlib_name, b"obelisk").digest()


def test_table_is_the_registry():
    assert {a.name for a in algorithms.HASHES} == set(REGISTRY)
    assert [a.name for a in algorithms.SHA_BANKS] == ["sha1", "sha256", "sha384", "sha512"]


@pytest.mark.parametrize("lookup", [lambda: algorithms.by_id(0x0099), lambda: algorithms.by_name("md5"),
                                    lambda: algorithms.by_id(0x0012, algorithms.SHA_BANKS),
                                    lambda: algorithms.by_name("sha3_256", algorithms.SHA_BANKS)])
def test_unknown_is_a_one_line_input_error(lookup):
    with pytest.raises(algorithms.UnknownAlgorithm) as exc:
        lookup()
    assert isinstance(exc.value, InputError) and "\n" not in str(exc.value)
    assert "not" in str(exc.value) and "known" in str(exc.value)


def test_unknown_id_message_names_the_id():
    with pytest.raises(InputError, match="0x0099"):
        algorithms.by_id(0x0099)
    assert algorithms.name_of(0x0099) == "alg_0x0099"
    assert not algorithms.is_known(0x0099) and algorithms.is_known(0x000B, algorithms.SHA_BANKS)


def test_signature_schemes():
    assert (algorithms.RSASSA, algorithms.RSAPSS, algorithms.ECDSA) == (0x0014, 0x0016, 0x0018)
    assert algorithms.scheme_name(algorithms.ECDSA) == "ecdsa" and algorithms.scheme_name(0x0001) == "alg_0x0001"
