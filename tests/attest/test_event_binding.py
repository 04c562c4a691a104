"""Event data bound to digests, through the verifier: a real firmware log (tpm2-tools' GCE fixture) mutated ten
ways, each in a bundle whose quote is consistent with the mutated log (PCR replay passes), so only
`attest.eventlog.data` can catch the lie; and honest real logs verify with no false failure."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from obelisk.core.findings import Status
from obelisk.tpm import algorithms as alg
from obelisk.tpm import eventlog as el
from tests.attest import synth
from tests.attest.synth import failing, run

SHARED = Path(__file__).resolve().parents[3] / "shared" / "testdata"
GCE = SHARED / "eventlog" / "event-gce-ubuntu-2104-log.bin"
# real logs with a sha256 bank (the verifier's) whose PCRs 0-9 a quote can cover
REAL_SHA256_LOGS = [p for p in sorted((SHARED / "eventlog").glob("*.bin"))
                    + [SHARED / "ima" / "sample-binary_bios_measurements-pcrs-8-9",
                       SHARED / "ima" / "test_binary_bios_measurements"]
                    if "sha256" in el.parse(p.read_bytes()).banks]


@pytest.fixture(scope="module")
def ak() -> synth.SoftAK:
    return synth.make_ak("ecc")


def _flip(b: bytes, at: int) -> bytes:
    return b[:at] + bytes([b[at] ^ 0x01]) + b[at + 1:]


def _set_digest(ev: el.Event, bank: str, digest: bytes) -> el.Event:
    alg_id = alg.by_name(bank).alg_id
    return replace(ev, digests=tuple((a, digest if a == alg_id else d) for a, d in ev.digests))


def _name(ev: el.Event, new: str) -> el.Event:
    """The variable's name replaced by another of the same length."""
    name_len = struct.unpack("<Q", ev.data[16:24])[0]
    assert len(new) == name_len
    return replace(ev, data=ev.data[:32] + new.encode("utf-16-le") + ev.data[32 + 2 * name_len:])


# number of the event in the GCE log -> (what an attacker changes, the type the verifier must name)
MUTATIONS = {
    "SecureBoot 0 -> 1 (data)": (3, lambda e: replace(e, data=e.data[:-1] + b"\1")),
    "SecureBoot renamed (data)": (3, lambda e: _name(e, "SecureBooX")),
    "a byte of the db certificates (data)": (6, lambda e: replace(e, data=_flip(e.data, 500))),
    "EFI action text (data)": (14, lambda e: replace(e, data=b"Booting a signed, approved image here!!\0")),
    "separator made an error separator (data)": (15, lambda e: replace(e, data=b"\xff\xff\xff\xff")),
    "PK SHA-1 digest": (4, lambda e: _set_digest(e, "sha1", _flip(e.digest("sha1") or b"", 0))),
    "GPT SHA-256 digest": (22, lambda e: _set_digest(e, "sha256", _flip(e.digest("sha256") or b"", 7))),
    "separator SHA-1 and SHA-256 digests": (
        19, lambda e: _set_digest(_set_digest(e, "sha1", alg.SHA1.digest(b"x")), "sha256", alg.SHA256.digest(b"x"))),
    "BootOrder typed as a driver-config variable (type)": (9, lambda e: replace(e, event_type=0x80000001)),
    "shim's image event typed as an EFI action (type)": (23, lambda e: replace(e, event_type=0x80000007)),
}


def _mutated(number: int, change) -> tuple[bytes, el.Event]:
    log = el.parse(GCE.read_bytes())
    events = list(log.events)
    events[number] = change(events[number])
    assert events[number] != log.events[number]
    return el.serialize(replace(log, events=tuple(events))), events[number]


def test_ten_distinct_mutations():
    assert len(MUTATIONS) == 10
    assert len({_mutated(n, c)[1] for n, c in MUTATIONS.values()}) == 10


@pytest.mark.parametrize("what", list(MUTATIONS))
def test_mutated_real_event_log_is_caught_with_the_event_named(ak, what):
    number, change = MUTATIONS[what]
    data, event = _mutated(number, change)
    node = synth.boot_from_log(data)
    found = failing(synth.evidence(ak, node), _options(ak, data), "attest.eventlog.data")
    # the quote is consistent with the mutated log: replay alone would have passed
    assert all(found[f"attest.eventlog.pcr{i}"].status is Status.PASS for i in range(10))
    assert f"event {number} (PCR {event.pcr}, {event.type_name})" in found["attest.eventlog.data"].detail


def _options(ak, event_log: bytes):
    """The verifier's options for a node whose firmware log is `event_log`: PCR 11 predicted as that log
    holds it (these tests are about the other PCRs' event data)."""
    return synth.options(ak, synth.references(stub=synth.logged_stub(event_log)))


@pytest.mark.parametrize("path", REAL_SHA256_LOGS, ids=lambda p: p.name)
def test_honest_real_logs_verify_with_unverified_events_listed(ak, path):
    report, _, found = run(synth.evidence(ak, synth.boot_from_log(path.read_bytes())), _options(ak, path.read_bytes()))
    f = found["attest.eventlog.data"]
    assert f.status is Status.PASS, f.detail
    assert report.exit_code() == 0, [x for x in report.findings if x.status is not Status.PASS]
    bindings = el.bind_all(el.parse(path.read_bytes()))
    unverified = [b for b in bindings if b.status in (el.Bound.UNVERIFIED, el.Bound.BOUND_VALUE)]
    assert ("unverified" in f.detail) == bool(unverified)
    assert all(e.detail.startswith(("unverified: ", "bound-value: ")) for e in f.evidence)
    assert len(f.evidence) == min(len(unverified), 64)


def test_image_events_are_shown_unverified_never_as_facts(ak):
    _, _, found = run(synth.evidence(ak, synth.boot_from_log(GCE.read_bytes())), _options(ak, GCE.read_bytes()))
    shim = [e.detail for e in found["attest.eventlog.data"].evidence if "shimx64.efi" in e.detail]
    assert shim and shim[0].startswith("unverified: event 23 (PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION)")
    assert "Authenticode" in shim[0]


def test_synthetic_bundle_binds_too(ak):
    _, _, found = run(synth.evidence(ak), synth.options(ak))
    assert found["attest.eventlog.data"].status is Status.PASS


def test_cli_verify_names_the_altered_event(ak, obelisk_cli, tmp_path):
    import json

    from cryptography.hazmat.primitives import serialization

    from obelisk.attest import evidence as evmod

    number, change = MUTATIONS["SecureBoot 0 -> 1 (data)"]
    data, _ = _mutated(number, change)
    (tmp_path / "evidence.json").write_text(evmod.serialize(synth.evidence(ak, synth.boot_from_log(data))))
    (tmp_path / "ak.pem").write_bytes(ak.record.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    args = ("attest", "verify", str(tmp_path / "evidence.json"), "--nonce", synth.NONCE.hex(),
            "--ak", str(tmp_path / "ak.pem"))
    res = obelisk_cli(*args, "--format", "json")
    assert res.returncode == 1, res.stderr
    found = {f["id"]: f for f in json.loads(res.stdout)["findings"]}
    assert found["attest.eventlog.data"]["status"] == "fail"
    assert all(found[f"attest.eventlog.pcr{i}"]["status"] == "pass" for i in range(10))
    text = obelisk_cli(*args, "--format", "text")
    assert text.returncode == 1 and "event 3 (PCR 7, EV_EFI_VARIABLE_DRIVER_CONFIG)" in text.stdout
