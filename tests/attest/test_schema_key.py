"""The version key of the attest formats: `schema` is written; the old `format` key is still read."""

from __future__ import annotations

import json

import pytest

from obelisk.attest import akrecord, evidence
from obelisk.core.errors import InputError
from obelisk.core.schema import schema_of
from tests.attest import synth


def _bundle() -> evidence.Evidence:
    return evidence.Evidence(nonce=b"\1" * 16, attest=b"attest", signature=b"sig", bank="sha256",
                             pcrs={i: bytes(32) for i in range(12)}, kernel={"release": "6.1"})


def _renamed(doc: dict, old: str, new: str) -> dict:
    """`doc` with its key `old` renamed to `new`, in the same place (key order kept)."""
    return {(new if k == old else k): v for k, v in doc.items()}


def test_schema_of():
    assert schema_of({"schema": "a/1"}) == "a/1"
    assert schema_of({"format": "a/1"}) == "a/1"
    assert schema_of({"schema": "a/1", "format": "a/1"}) == "a/1"
    assert schema_of({}) is None
    with pytest.raises(ValueError, match="disagree"):
        schema_of({"schema": "a/1", "format": "b/1"})


def test_evidence_is_written_with_schema():
    doc = json.loads(evidence.serialize(_bundle()))
    assert doc["schema"] == "obelisk.evidence/1" and "format" not in doc


def test_evidence_with_the_old_format_key_still_parses():
    doc = _renamed(json.loads(evidence.serialize(_bundle())), "schema", "format")
    assert doc["format"] == "obelisk.evidence/1" and "schema" not in doc
    assert evidence.parse(json.dumps(doc)) == _bundle()


def test_evidence_with_both_keys_agreeing_parses_and_disagreeing_is_refused():
    doc = json.loads(evidence.serialize(_bundle()))
    assert evidence.parse(json.dumps({**doc, "format": doc["schema"]})) == _bundle()
    with pytest.raises(InputError, match=r"schema: .*disagree"):
        evidence.parse(json.dumps({**doc, "format": "obelisk.evidence/2"}), source="bundle.json")
    with pytest.raises(InputError, match="schema: expected 'obelisk.evidence/1'"):
        evidence.parse(json.dumps({**doc, "schema": "obelisk.evidence/2"}))


def test_ak_record_is_written_with_schema():
    doc = json.loads(akrecord.serialize(synth.make_ak().record))
    assert doc["schema"] == "obelisk.ak/1" and "format" not in doc


def test_ak_record_with_the_old_format_key_still_parses():
    record = synth.make_ak().record
    text = akrecord.serialize(record)
    old = json.dumps(_renamed(json.loads(text), "schema", "format"), indent=2, sort_keys=True) + "\n"
    parsed = akrecord.parse(old.encode(), "old-ak.json")
    assert (parsed.public, parsed.name, parsed.qualified_name, parsed.ek_public) == (
        record.public, record.name, record.qualified_name, record.ek_public)
    assert akrecord.serialize(parsed) == text  # read old, written new


def test_ak_record_with_disagreeing_keys_is_refused():
    doc = json.loads(akrecord.serialize(synth.make_ak().record))
    with pytest.raises(InputError, match="disagree"):
        akrecord.parse(json.dumps({**doc, "format": "obelisk.ak/2"}).encode(), "ak.json")
    with pytest.raises(InputError, match="not an AK record"):
        akrecord.parse(json.dumps({**doc, "schema": "obelisk.ak/2"}).encode(), "ak.json")


def test_verifier_state_round_trips(tmp_path):
    from obelisk.attest import verifier_state, verify

    state = {"00aa": verifier_state.NodeState(verify.Counters(5, 1, 2)),
             "00bb": verifier_state.NodeState(verify.Counters(7, 0, 0))}
    text = verifier_state.serialize(state)
    assert verifier_state.parse(text) == state
    assert json.loads(text) == {"schema": "obelisk.verifier-state/2",
                                "aks": {"00aa": {"clock": 5, "reset_count": 1, "restart_count": 2},
                                        "00bb": {"clock": 7, "reset_count": 0, "restart_count": 0}}}
    assert verify.parse_state(text) == {k: v.counters for k, v in state.items()}
    with pytest.raises(InputError, match="'00aa' malformed"):
        verify.parse_state(json.dumps({"00aa": {"clock": 1}}), source="state.json")
