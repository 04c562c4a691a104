"""The LUKS2 token and signed-policy documents as a node reads them from its disk and initramfs:
hostile JSON gives one InputError naming the place, never another exception."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.disk import volume as disk
from obelisk.tpm import seal
from obelisk.core.errors import InputError

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                 max_size=6), max_leaves=20)


def _token_doc() -> dict:
    sealed = seal.Sealed(public=b"\0\1pub", private=b"\0\1priv", pcrs=(11,), values={11: b"\1" * 32},
                         policy=b"\2" * 32)
    return disk.Token(keyslot=0, sealed=sealed).to_json()


def test_token_round_trip():
    doc = _token_doc()
    token = disk.Token.from_json(doc, 3, "dev token 3")
    assert token.keyslot == 0 and token.sealed.values == {11: b"\1" * 32} and token.token_id == 3
    assert token.to_json() == doc


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_hostile_token_documents(doc):
    try:
        disk.Token.from_json(doc if isinstance(doc, dict) else {"x": doc}, 0, "dev token 0")
    except InputError as exc:
        assert "dev token 0" in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_token_doc())), JSON)
def test_token_with_one_hostile_field(key, value):
    doc = {**_token_doc(), key: value}
    try:
        disk.Token.from_json(doc, 0, "dev token 0")
    except InputError:
        pass


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_hostile_signed_policies(doc):
    try:
        disk.signed_policy_from_json(doc if isinstance(doc, dict) else {"format": doc}, "policy.json")
    except InputError as exc:
        assert "policy.json" in str(exc)


def test_signed_policy_round_trip():
    policy = seal.SignedPolicy(pcrs=(11,), values={11: b"\3" * 32}, signature=base64.b64decode("AAEC"))
    assert disk.signed_policy_from_json(disk.signed_policy_json(policy), "p") == policy
