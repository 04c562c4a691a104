"""The LUKS2 token and signed-policy documents as a node reads them from its disk and initramfs:
hostile JSON gives one InputError naming the place, never another exception."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core.errors import InputError
from obelisk.disk import policy as policymod
from obelisk.disk import token as tokenmod
from obelisk.tpm import seal

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                 max_size=6), max_leaves=20)


def _token_doc() -> dict:
    sealed = seal.Sealed(public=b"\0\1pub", private=b"\0\1priv", pcrs=(11,), values={11: b"\1" * 32},
                         policy=b"\2" * 32)
    return tokenmod.to_json(tokenmod.Token(keyslot=0, sealed=sealed))


def test_token_round_trip():
    doc = _token_doc()
    token = tokenmod.from_json(doc, 3, "dev token 3")
    assert token.keyslot == 0 and token.sealed.values == {11: b"\1" * 32} and token.token_id == 3
    assert tokenmod.to_json(token) == doc


def test_derived_token_round_trip_and_unknown_mode_refused():
    doc = {**_token_doc(), "obelisk-derived": "tpm+fleet"}
    token = tokenmod.from_json(doc, 1, "dev token 1")
    assert token.derived == "tpm+fleet" and tokenmod.to_json(token) == doc
    assert "obelisk-derived" not in _token_doc()  # a TPM-only token stays in the old form
    with pytest.raises(InputError, match="obelisk-derived 'fleet'"):
        tokenmod.from_json({**doc, "obelisk-derived": "fleet"}, 1, "dev token 1")


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_hostile_token_documents(doc):
    try:
        tokenmod.from_json(doc if isinstance(doc, dict) else {"x": doc}, 0, "dev token 0")
    except InputError as exc:
        assert "dev token 0" in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_token_doc())), JSON)
def test_token_with_one_hostile_field(key, value):
    doc = {**_token_doc(), key: value}
    try:
        tokenmod.from_json(doc, 0, "dev token 0")
    except InputError:
        pass


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_hostile_signed_policies(doc):
    try:
        policymod.from_json(doc if isinstance(doc, dict) else {"format": doc}, "policy.json")
    except InputError as exc:
        assert "policy.json" in str(exc)


def test_signed_policy_round_trip():
    policy = seal.SignedPolicy(pcrs=(11,), values={11: b"\3" * 32}, signature=base64.b64decode("AAEC"))
    assert policymod.from_json(policymod.to_json(policy), "p") == policy


def test_token_bytes_round_trip():
    token = tokenmod.parse(tokenmod.serialize(tokenmod.from_json(_token_doc(), None, "t")), 5, "t")
    assert token.token_id == 5 and tokenmod.to_json(token) == _token_doc()
    assert tokenmod.serialize(token) == json.dumps(_token_doc()).encode()  # what cryptsetup imported before


def test_token_with_signed_policies_round_trip():
    policy = seal.SignedPolicy(pcrs=(7, 11), values={7: b"\4" * 32, 11: b"\5" * 32}, signature=b"sig",
                               policy_ref=b"ref")
    sealed = seal.Sealed(public=b"pub", private=b"priv", pcrs=(7, 11), values=policy.values, policy=b"\6" * 32,
                         authorize_key=b"DER key")
    token = tokenmod.Token(keyslot=2, sealed=sealed, signed_policies=(policy,), token_id=1)
    assert tokenmod.parse(tokenmod.serialize(token), 1, "t") == token


@pytest.mark.parametrize("data", [b"", b"[1]", b"{", b"[" * 100000, b'{"keyslots": []}'])
def test_hostile_token_bytes(data):
    with pytest.raises(InputError, match="dev token 0: malformed obelisk-tpm2 token") as exc:
        tokenmod.parse(data, 0, "dev token 0")
    assert "\n" not in str(exc.value)


def test_signed_policy_file_round_trip():
    policy = seal.SignedPolicy(pcrs=(7, 11), values={7: b"\4" * 32, 11: b"\5" * 32}, signature=b"sig",
                               policy_ref=b"ref")
    data = policymod.serialize(policy)
    assert policymod.parse(data, "p.json") == policy
    assert data == (json.dumps(policymod.to_json(policy), indent=2) + "\n").encode()  # sign-policy's file
    assert json.loads(data)["format"] == "obelisk.signed-pcr-policy/1"


@pytest.mark.parametrize("data, message", [
    (b"nope", "p.json: not JSON"), (b"[]", "p.json: expected a JSON object"), (b"[" * 100000, "p.json: not JSON"),
    (b'{"format": "other"}', "p.json: malformed signed PCR policy: format is not"),
    (b'{"format": "obelisk.signed-pcr-policy/1", "pcrs": [7], "values": {"11": "00"}, "signature": ""}',
     "p.json: signed PCR policy: values do not match pcrs"),
])
def test_hostile_signed_policy_files(data, message):
    with pytest.raises(InputError) as exc:
        policymod.parse(data, "p.json")
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
