"""AK records and verifier state with wrong types: one-line InputErrors naming the file (issue 18)."""

from __future__ import annotations

import json

import pytest

from obelisk.attest import akrecord
from obelisk.attest.verify import parse_state
from obelisk.core.errors import InputError
from tests.attest import synth


@pytest.mark.parametrize("value", [True, "zz", 12, ["00"], "9" * 5000])
def test_ak_record_qualified_name_of_the_wrong_type(value):
    doc = synth.make_ak().record.to_json()
    doc["qualified_name"] = value
    with pytest.raises(InputError) as exc:
        akrecord.parse(json.dumps(doc).encode(), "ak.json")
    assert str(exc.value).startswith("ak.json") and "\n" not in str(exc.value)


@pytest.mark.parametrize("data", [
    b'{"' + b"a" * 10 + b'": {"clock": Infinity, "reset_count": 1, "restart_count": 1}}',
    b'{"aa": {"clock": 1e400, "reset_count": 1, "restart_count": 1}}',
    b'{"aa": {"clock": ' + b"9" * 5000 + b', "reset_count": 1, "restart_count": 1}}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"aa": {"clock": "x", "reset_count": 1, "restart_count": 1}}',
])
def test_state_with_hostile_values(data):
    with pytest.raises(InputError) as exc:
        parse_state(data, "state.json")
    assert str(exc.value).startswith("state.json") and "\n" not in str(exc.value)


def test_unknown_name_alg_names_the_file():
    public = bytearray(synth.make_ak().record.public)
    public[4:6] = b"\x12\x34"  # TPMT_PUBLIC.nameAlg
    with pytest.raises(InputError, match="nameAlg 0x1234 unknown") as exc:
        akrecord.name_of(bytes(public), "ak.pub")
    assert str(exc.value).startswith("ak.pub")
