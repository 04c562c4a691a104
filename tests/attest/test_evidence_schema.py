"""The evidence parser enforces the schema docs/attest.md documents: each refused shape is one ParseError line
naming the field; what the agent sends (evidence.collect, the synthetic bundles) is read."""

from __future__ import annotations

import json

import pytest

from obelisk.attest import evidence
from obelisk.core.errors import ParseError
from tests.attest import synth


def _good() -> dict:
    return json.loads(evidence.serialize(synth.evidence(synth.make_ak("ecc"))))


def _without(doc: dict, key: str) -> dict:
    return {k: v for k, v in doc.items() if k != key}


def test_what_the_agent_sends_is_read():
    doc = _good()
    ev = evidence.parse(json.dumps(doc))
    assert evidence.serialize(ev) == json.dumps(doc, indent=1, sort_keys=True) + "\n"
    # optional: boot_events (absent reads as null); null logs
    assert evidence.parse(json.dumps(_without(doc, "boot_events"))).boot_events is None
    assert evidence.parse(json.dumps({**doc, "event_log": None, "ima_log": None})).event_log is None
    # every kernel fact the agent collects is a known key
    assert set(evidence.kernel_facts()) <= set(evidence._KERNEL_KEYS)
    assert evidence.parse(json.dumps({**doc, "kernel": {}})).kernel == {}
    assert evidence.parse(json.dumps({**doc, "collected_at": "2024-05-01T12:00:00.123Z"}))


def test_a_bundle_made_without_a_time_gets_one():
    ev = evidence.Evidence(nonce=b"\1", attest=b"a", signature=b"s", bank="sha256", pcrs={0: bytes(32)})
    assert evidence.parse(evidence.serialize(ev)) == ev and ev.collected_at.endswith("Z")


def _mutate(doc: dict, path: str, value) -> dict:
    """`doc` with the field at dotted `path` set to `value` (or removed when value is ...)."""
    out = json.loads(json.dumps(doc))
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


REFUSED = [
    ("kernel", [], "kernel: expected an object of strings"),
    ("kernel", None, "kernel: must not be null"),
    ("kernel", ..., "kernel: missing"),
    ("kernel.release", 6, "kernel.release: expected a string"),
    ("kernel.shell", "x", "kernel.shell: unknown field"),
    ("collected_at", ..., "collected_at: missing"),
    ("collected_at", "", "collected_at: empty"),
    ("collected_at", 1714564800, "collected_at: expected a string"),
    ("collected_at", "yesterday", "collected_at: expected RFC 3339 UTC"),
    ("collected_at", "2024-05-01T12:00:00+02:00", "collected_at: expected RFC 3339 UTC"),
    ("collected_at", "2024-13-01T12:00:00Z", "collected_at: not a valid date"),
    ("nonce", "", "nonce: empty"),
    ("nonce", ..., "nonce: missing"),
    ("nonce", 5, "nonce: expected a string"),
    ("nonce", "zz", "nonce: not hex"),
    ("nonce", "00" * 65, "nonce: 65 bytes"),
    ("ak_name", ..., "ak_name: missing"),
    ("ak_name", [], "ak_name: expected a string"),
    ("event_log", ..., "event_log: missing"),
    ("event_log", 7, "event_log: expected base64"),
    ("ima_log", ..., "ima_log: missing"),
    ("ima_log", "AAAA", "ima_log: expected an object"),
    ("ima_log", {"data": "AAAA"}, "ima_log.format: missing"),
    ("ima_log", {"format": "binary", "data": "AAAA", "x": 1}, "ima_log.x: unknown field"),
    ("ima_log", {"format": "", "data": "AAAA"}, "ima_log.format: empty"),
    ("ima_log", {"format": "xml", "data": "AAAA"}, "ima_log.format: must be binary or ascii"),
    ("ima_log", {"format": "binary", "data": None}, "ima_log.data: expected base64"),
    ("boot_events", {}, "boot_events: expected base64"),
    ("quote", None, "quote: must not be null"),
    ("quote", [], "quote: expected an object"),
    ("quote.bank", ..., "quote.bank: missing"),
    ("quote.bank", 256, "quote.bank: expected a string"),
    ("quote.bank", "md5", "quote.bank: must be one of"),
    ("quote.extra", 1, "quote.extra: unknown field"),
    ("quote.pcrs", {}, "quote.pcrs: expected an object of 1 to 32 PCRs"),
    ("quote.pcrs", [], "quote.pcrs: expected an object"),
    ("quote.pcrs.0", 0, "quote.pcrs.0: expected a string"),
    ("quote.pcrs.0", "", "quote.pcrs.0: empty"),
    ("quote.pcrs.99", "00", "quote.pcrs.99: PCR index must be 0..31"),
    ("quote.attest", None, "quote.attest: expected base64"),
    ("quote.signature", "***", "quote.signature: not base64"),
    ("unknown", 1, "unknown: unknown field"),
]


@pytest.mark.parametrize(("path", "value", "message"), REFUSED, ids=[f"{p}={v!r}"[:60] for p, v, _ in REFUSED])
def test_refused_shapes_name_the_field(path, value, message):
    with pytest.raises(ParseError) as exc:
        evidence.parse(json.dumps(_mutate(_good(), path, value)), source="bundle.json")
    text = str(exc.value)
    assert message in text and "bundle.json" in text and "\n" not in text, text


def test_cli_refuses_kernel_list_with_exit_2(obelisk_cli, tmp_path):
    bad = tmp_path / "evidence.json"
    bad.write_text(json.dumps({**_good(), "kernel": []}))
    ak = tmp_path / "ak.pem"
    from cryptography.hazmat.primitives import serialization

    ak.write_bytes(synth.make_ak("ecc").record.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    res = obelisk_cli("attest", "verify", str(bad), "--nonce", synth.NONCE.hex(), "--ak", str(ak))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "kernel: expected an object" in res.stderr
