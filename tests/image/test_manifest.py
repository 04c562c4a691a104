"""manifest.json as a typed record: byte-identical round trip, strict parsing naming the field, signature."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from obelisk.core.errors import InputError, ParseError
from obelisk.image import manifest as mf

from .manifests import sample_manifest


def _refused(doc: dict, field: str) -> str:
    """parse() of `doc` must fail in one line naming the source and `field`; returns the message."""
    with pytest.raises(ParseError) as info:
        mf.parse(mf.dumps(doc), "out/manifest.json")
    message = str(info.value)
    assert message.startswith(f"out/manifest.json: {field}: "), message
    assert "\n" not in message
    return message


def _predicted() -> mf.Manifest:
    """The sample with PCR 11 predicted event by event, as a build with a kernel records it."""
    from obelisk.image import measure, uki

    sections = uki.UkiSections(linux=b"bzImage", initrd=b"initrd", cmdline=b"console=ttyS0", osrel=b"ID=obelisk\n")
    pcr11 = measure.predict(uki.pcr11_prediction(sections).events).pcr11
    m = sample_manifest()
    return replace(m, pcrs=replace(m.pcrs, predicted={11: pcr11.value}, predictions=(pcr11,)))


@pytest.fixture(scope="module")
def built(built_image) -> bytes:
    _, out = built_image
    return (out / mf.MANIFEST).read_bytes()


def test_round_trip_of_a_built_manifest_is_byte_identical(built):
    m = mf.parse(built, "manifest.json")
    assert mf.serialize(m) == built
    assert mf.parse(mf.serialize(m), "again") == m
    assert m.image == mf.Image(name="test-node", version="1.0")
    assert m.artifacts["rootfs.squashfs"].size % 512 == 0
    assert m.disk.size_mib == m.var_size_mib() == 64


def test_round_trip_of_a_constructed_manifest():
    m = sample_manifest(disk=replace(sample_manifest().disk, var="luks2", policy="pcr", sealed_to={11: b"\x01" * 32}))
    data = mf.serialize(m)
    assert mf.parse(data, "m") == m
    m = _predicted()
    data = mf.serialize(m)
    assert mf.parse(data, "m") == m and mf.serialize(mf.parse(data, "m")) == data
    assert m.pcrs.prediction(11).events[-1].data == b"sysinit"
    m = sample_manifest(disk=replace(sample_manifest().disk, var="luks2", policy="pcr", sealed_to={11: b"\x01" * 32}))
    data = mf.serialize(m)
    assert mf.parse(data, "m") == m
    assert mf.serialize(mf.parse(data, "m")) == data
    assert json.loads(data)["disk"]["sealed_to"] == {"11": "01" * 32}


def test_rollback_fields_round_trip_and_are_absent_without_rollback_protection():
    plain = mf.serialize(sample_manifest())
    assert "rollback_index" not in json.loads(plain)["disk"]  # manifests before it read and write the same
    m = sample_manifest(disk=replace(sample_manifest().disk, var="luks2", policy="signed", rollback_index=3,
                                     advance_rollback_index=False))
    data = mf.serialize(m)
    assert mf.parse(data, "m") == m and json.loads(data)["disk"]["rollback_index"] == 3
    doc = json.loads(data)
    doc["disk"]["rollback_index"] = "3"
    with pytest.raises(ParseError, match="disk.rollback_index: expected an integer"):
        mf.parse(json.dumps(doc), "m")


def test_waived_command_line_checks_round_trip_and_are_absent_when_none(built):
    m = sample_manifest()
    waiver = mf.CmdlineWaiver(id="kernel.cmdline.pti", observed=None, expected="pti=on", reason="r", approver="a",
                              expires="2030-01-01")
    m = replace(m, boot=replace(m.boot, waived=(waiver,)))
    data = mf.serialize(m)
    assert mf.parse(data, "m") == m and mf.serialize(mf.parse(data, "m")) == data
    assert b'"waived"' not in built  # the test image's line passes its profile: nothing recorded


def test_manifest_written_before_disk_size_mib_still_reads(built):
    """Manifests of this schema built before `disk.size_mib` existed: same bytes back, size from their spec copy."""
    older = built.replace(b'  "size_mib": 64,\n', b"", 1)
    assert older != built and b'"size_mib": 64' in older  # only the spec's copy is left
    m = mf.parse(older, "old/manifest.json")
    assert m.disk.size_mib is None and mf.serialize(m) == older
    assert replace(m, spec={**m.spec, "disk": {**m.spec["disk"], "size_mib": 48}}).var_size_mib() == 48
    assert replace(m, spec={}).var_size_mib() == mf.DEFAULT_VAR_SIZE_MIB


def test_missing_field_is_named(built):
    doc = json.loads(built)
    del doc["disk"]["sealed_to"]
    assert _refused(doc, "disk.sealed_to").endswith("missing")
    doc = mf.to_json(_predicted())
    del doc["pcrs"]["predictions"][0]["events"][2]["digest"]
    _refused(doc, "pcrs.predictions[0].events[2].digest")
    doc = json.loads(built)
    del doc["image"]
    _refused(doc, "image")


def test_misspelt_field_is_named(built):
    doc = json.loads(built)
    doc["artefacts"] = doc.pop("artifacts")
    assert "did you mean 'artifacts'" in _refused(doc, "artefacts")
    doc = json.loads(built)
    doc["boot"]["cmd_line"] = doc["boot"].pop("cmdline")
    _refused(doc, "boot.cmd_line")
    doc = json.loads(built)
    doc["files"][3]["sha265"] = "00"
    _refused(doc, "files[3].sha265")


def test_wrong_type_is_named(built):
    doc = json.loads(built)
    doc["artifacts"] = {"ima-policy": "x"}
    assert "expected an object, got a string" in _refused(doc, "artifacts.ima-policy")
    doc = mf.to_json(_predicted())
    doc["pcrs"]["predictions"][0]["events"][2]["digest"] = "not hex"
    _refused(doc, "pcrs.predictions[0].events[2].digest")
    doc = json.loads(built)
    doc["source_date_epoch"] = "1700000000"
    _refused(doc, "source_date_epoch")
    doc = json.loads(built)
    doc["disk"]["var"] = "zfs"
    _refused(doc, "disk.var")
    doc = json.loads(built)
    doc["pcrs"]["predicted"] = {"eleven": "00" * 32}
    _refused(doc, "pcrs.predicted.eleven")
    doc = json.loads(built)
    doc["disk"]["size_mib"] = None  # an optional key is left out, never null
    _refused(doc, "disk.size_mib")


def test_entries_carry_the_keys_of_their_kind(built):
    doc = json.loads(built)
    index = next(i for i, f in enumerate(doc["files"]) if f["type"] == "file")
    del doc["files"][index]["sha256"]
    _refused(doc, f"files[{index}].sha256")
    doc = json.loads(built)
    index = next(i for i, f in enumerate(doc["files"]) if f["type"] == "slink")
    doc["files"][index]["mode"] = "0777"
    assert "not expected on a slink entry" in _refused(doc, f"files[{index}].mode")


def test_ima_reference_is_checked_by_its_own_parser(built):
    doc = json.loads(built)
    doc["ima_reference"]["rules"][0]["action"] = "allow"
    _refused(doc, "ima_reference")
    doc = json.loads(built)
    doc["ima_reference"]["allow_vary"] = []
    _refused(doc, "ima_reference.allow_vary")


def test_not_a_manifest_is_refused():
    with pytest.raises(ParseError, match="^x.json: not an obelisk image manifest"):
        mf.parse(b'{"schema": "obelisk.image-manifest/1"}', "x.json")  # before issue 13: rebuild
    with pytest.raises(ParseError, match="^x.json: not JSON"):
        mf.parse(b"{", "x.json")
    with pytest.raises(ParseError, match="^x.json: image: the key appears twice"):
        mf.parse(b'{"schema": "obelisk.image-manifest/1", "image": 1, "image": 2}', "x.json")


def test_every_reader_refuses_a_misspelt_manifest(built_image, tmp_path):
    """image verify and the attestation's reference loader both go through parse()."""
    import shutil

    from obelisk.attest import ima_check
    from obelisk.image.verify import verify_image

    root, out = built_image
    bad = tmp_path / "out"
    shutil.copytree(out, bad)
    doc = json.loads((bad / mf.MANIFEST).read_bytes())
    doc["pcrs"]["predicted_values"] = doc["pcrs"].pop("predicted")
    (bad / mf.MANIFEST).write_bytes(mf.dumps(doc))
    with pytest.raises(InputError, match="pcrs.predicted_values: unknown key"):
        verify_image(bad, root / "keys/ca.pem")
    with pytest.raises(InputError, match="pcrs.predicted_values: unknown key"):
        ima_check.load_references(str(bad / mf.MANIFEST), str(root / "keys/ca.pem"))


def test_references_come_from_the_record(built_image):
    from obelisk.attest import ima_check

    root, out = built_image
    refs = ima_check.load_references(str(out / mf.MANIFEST), str(root / "keys/ca.pem"))
    m = mf.load(out / mf.MANIFEST)
    assert refs.manifest == m
    assert refs.predicted == m.pcrs.predicted and refs.boot_predictions == m.pcrs.predictions
    assert refs.ima_reference == m.ima_reference
    assert [f.status.value for f in refs.findings] == ["pass"]  # the signature, by the customer CA


def test_signature_catches_a_flipped_byte(built_image):
    from obelisk.signer.keys import load_certificate, load_signing_key

    root, out = built_image
    data = (out / mf.MANIFEST).read_bytes()
    sig = mf.ManifestSignature.loads((out / mf.SIGNATURE).read_bytes(), mf.SIGNATURE)
    assert mf.check_signature(data, sig)
    assert mf.chains_to(sig.certificate, load_certificate(root / "keys/ca.pem")) is None
    for offset in (0, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        assert not mf.check_signature(bytes(flipped), sig), offset
    # sign() over serialize()'s bytes: what the build does
    m = mf.parse(data, "manifest.json")
    again = mf.sign(mf.serialize(m), load_signing_key(str(root / "keys/ima.key")), sig.certificate)
    assert mf.check_signature(data, again)
    renamed = mf.serialize(replace(m, image=replace(m.image, version="1.1")))
    assert not mf.check_signature(renamed, sig)



def test_references_carry_the_predictions_event_by_event(tmp_path):
    from obelisk.attest import ima_check

    m = _predicted()
    (tmp_path / mf.MANIFEST).write_bytes(mf.serialize(m))
    refs = ima_check.load_references(str(tmp_path / mf.MANIFEST), None)
    assert refs.predicted == {11: m.pcrs.predicted[11]} and refs.boot_predictions == m.pcrs.predictions
    assert [e.data for e in refs.boot_predictions[0].events[-3:]] == [b"enter-initrd", b"leave-initrd", b"sysinit"]
