"""The verifier, one failure mode per test, on synthesized quotes (tests/attest/synth.py): no TPM.

Each test changes one thing in an otherwise good bundle (or in the verifier's expectations), checks that the
finding for it fails and names what differs, and that the report fails as a whole (exit code 1).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from obelisk.attest import verify
from obelisk.core.findings import Status
from obelisk.tpm import bootevents, eventlog
from obelisk.tpm import quote as q
from tests.attest import synth
from tests.attest.synth import CLOCK, NONCE, failing, run

KINDS = ("rsa", "ecc")


@pytest.fixture(params=KINDS)
def ak(request) -> synth.SoftAK:
    return synth.make_ak(request.param)


def counters(clock: q.ClockInfo) -> verify.Counters:
    return verify.Counters(clock.clock, clock.reset_count, clock.restart_count)


# ---- the baseline: every check passes on an honest bundle -------------------------------------------------

CHECKED_HERE = ("attest.ak.attributes", "attest.quote.signature", "attest.quote.nonce", "attest.quote.signer",
                "attest.quote.pcr-selection", "attest.quote.pcr-digest", "attest.quote.clock",
                *(f"attest.eventlog.pcr{i}" for i in range(10)), "ima.log.template-hashes", "ima.pcr.10.sha256",
                "ima.boot-aggregate", "ima.reference", "attest.boot.pcr11")


def test_honest_bundle_passes_every_check(ak):
    report, got, found = run(synth.evidence(ak), synth.options(ak))
    assert {fid: found[fid].status for fid in CHECKED_HERE} == dict.fromkeys(CHECKED_HERE, Status.PASS)
    assert all(f.status is Status.PASS for f in report.findings)
    assert report.exit_code() == 0 and got == counters(CLOCK)


def test_honest_bundle_after_an_earlier_quote_passes(ak, tmp_path):
    """The state file round trip: a later quote (clock advanced) passes against the stored counters."""
    state = str(tmp_path / "state.json")
    assert verify.load_state(state, ak.record) is None
    verify.save_state(state, ak.record, counters(CLOCK))
    later = replace(CLOCK, clock=CLOCK.clock + 60_000)
    node = synth.boot()
    report, got, found = run(synth.evidence(ak, node, quote=synth.attest(ak, node.pcrs, clock=later)),
                             synth.options(ak, previous=verify.load_state(state, ak.record)))
    assert found["attest.quote.clock"].status is Status.PASS and report.exit_code() == 0
    assert got == counters(later)


# ---- nonce ----------------------------------------------------------------------------------------------

def test_quote_over_another_nonce_fails(ak):
    """A replayed quote: signed by the right AK, over an older nonce; the bundle echoes the current nonce."""
    node = synth.boot()
    old = bytes(20)
    found = failing(synth.evidence(ak, node, quote=synth.attest(ak, node.pcrs, nonce=old)), synth.options(ak),
                    "attest.quote.nonce")
    assert found["attest.quote.nonce"].observed == old.hex() and found["attest.quote.nonce"].expected == NONCE.hex()
    assert found["attest.quote.signature"].status is Status.PASS
    # nothing is compared with PCR values that are not fresh
    assert found["attest.eventlog"].status is Status.ERROR
    assert found["attest.boot.pcr11"].status is Status.ERROR
    assert run(synth.evidence(ak, node, quote=synth.attest(ak, node.pcrs, nonce=old)), synth.options(ak))[1] is None


# ---- signature ------------------------------------------------------------------------------------------

def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_signature_with_a_flipped_byte_fails(ak):
    good = synth.evidence(ak)
    found = failing(replace(good, signature=_flip(good.signature, len(good.signature) - 5)), synth.options(ak),
                    "attest.quote.signature")
    assert "does not verify" in found["attest.quote.signature"].detail
    assert found["attest.eventlog"].status is Status.ERROR  # an unsigned quote covers nothing


def test_quote_changed_after_signing_fails(ak):
    """The TPMS_ATTEST itself altered (a PCR digest of the attacker's choosing), the signature kept."""
    good = synth.evidence(ak)
    forged = synth.attest(ak, {**synth.boot().pcrs, 7: bytes(32)})
    found = failing(replace(good, attest=q.serialize_attest(forged), pcrs={**good.pcrs, 7: bytes(32)}),
                    synth.options(ak), "attest.quote.signature")
    assert found["attest.quote.pcr-digest"].status is Status.PASS  # consistent, but not signed
    assert found["attest.eventlog"].status is Status.ERROR


def test_signature_by_another_key_fails(ak):
    other = synth.make_ak(ak.kind, label="another TPM")
    found = failing(synth.evidence(ak, signed_by=other), synth.options(ak), "attest.quote.signature")
    assert "does not verify under the AK" in found["attest.quote.signature"].detail


def test_signature_of_the_other_algorithm_fails(ak):
    """An ECDSA signature for an RSA AK (and the reverse) is refused, not misread."""
    other = synth.make_ak("rsa" if ak.kind == "ecc" else "ecc")
    found = failing(synth.evidence(ak, signed_by=other), synth.options(ak), "attest.quote.signature")
    assert "is not an" in found["attest.quote.signature"].detail


def test_sha1_signature_fails_even_when_valid(ak):
    good = synth.evidence(ak)
    found = failing(replace(good, signature=ak.sign(good.attest, "sha1")), synth.options(ak),
                    "attest.quote.signature")
    assert "sha1 is not allowed" in found["attest.quote.signature"].detail
    assert found["attest.quote.signature"].observed.endswith("-sha1")


def test_quote_naming_another_signer_fails(ak):
    """qualifiedSigner is another AK's (say the same key loaded under another parent)."""
    other = synth.make_ak(ak.kind, label="another TPM")
    node = synth.boot()
    found = failing(synth.evidence(ak, node, quote=synth.attest(ak, node.pcrs, signer=other.record.qualified_name)),
                    synth.options(ak), "attest.quote.signer")
    assert found["attest.quote.signer"].observed == other.record.qualified_name.hex()
    assert found["attest.quote.signer"].expected == ak.record.qualified_name.hex()


# ---- PCR digest ------------------------------------------------------------------------------------------

def test_reported_pcr_value_not_the_quoted_one_fails(ak):
    good = synth.evidence(ak)
    found = failing(replace(good, pcrs={**good.pcrs, 7: hashlib.sha256(b"forged").digest()}), synth.options(ak),
                    "attest.quote.pcr-digest")
    f = found["attest.quote.pcr-digest"]
    assert f.observed != f.expected and "differs from what the TPM signed" in f.detail
    # the forged value is never compared with logs or predictions
    assert found["attest.eventlog"].status is Status.ERROR and found["attest.ima"].status is Status.ERROR


def test_signed_pcr_digest_not_over_the_reported_values_fails(ak):
    node = synth.boot()
    quote = synth.attest(ak, node.pcrs, pcr_digest=hashlib.sha256(b"other PCR values").digest())
    found = failing(synth.evidence(ak, node, quote=quote), synth.options(ak), "attest.quote.pcr-digest")
    assert found["attest.quote.pcr-digest"].expected == quote.pcr_digest.hex()
    assert found["attest.quote.signature"].status is Status.PASS


def test_reported_pcr_value_missing_fails(ak):
    good = synth.evidence(ak)
    found = failing(replace(good, pcrs={p: v for p, v in good.pcrs.items() if p != 11}), synth.options(ak),
                    "attest.quote.pcr-digest")
    assert "values missing for PCRs [11]" in found["attest.quote.pcr-digest"].detail


def test_reported_pcr_value_of_the_wrong_size_fails(ak):
    good = synth.evidence(ak)
    found = failing(replace(good, pcrs={**good.pcrs, 3: bytes(20)}), synth.options(ak), "attest.quote.pcr-digest")
    assert "wrong size: [3]" in found["attest.quote.pcr-digest"].detail


def test_reported_bank_not_the_quoted_one_fails(ak):
    found = failing(synth.evidence(ak, bank="sha1"), synth.options(ak), "attest.quote.pcr-digest")
    assert found["attest.quote.pcr-digest"].detail == "bundle carries sha1 values, quote selects sha256"


# ---- PCR selection --------------------------------------------------------------------------------------

def test_quote_not_covering_pcrs_10_and_11_fails(ak):
    """A quote of PCRs 0-9 only: consistently signed, but the IMA and boot-measurement PCRs are not in it."""
    node = synth.boot()
    quote = synth.attest(ak, node.pcrs, selections=(q.PCRSelection("sha256", tuple(range(10))),))
    found = failing(synth.evidence(ak, node, quote=quote, pcrs={p: node.pcrs[p] for p in range(10)}),
                    synth.options(ak), "attest.quote.pcr-selection")
    assert found["attest.quote.pcr-selection"].detail == "not quoted: sha256:10, sha256:11"
    assert found["attest.quote.pcr-digest"].status is Status.PASS


def test_quote_of_another_bank_fails(ak):
    node = synth.boot()
    sha1 = {p: hashlib.sha1(v).digest() for p, v in node.pcrs.items()}
    quote = synth.attest(ak, sha1, selections=(q.PCRSelection("sha1", tuple(range(12))),))
    found = failing(synth.evidence(ak, node, quote=quote, bank="sha1", pcrs=sha1), synth.options(ak),
                    "attest.quote.pcr-selection")
    assert found["attest.quote.pcr-selection"].detail.startswith("not quoted: sha256:0, sha256:1,")


def test_reported_pcr_outside_the_quote_is_not_trusted(ak):
    """The bundle adds PCR 12, which the quote does not cover; the build predicts PCR 12. The unsigned value
    must not be compared as if quoted (the verifier trusted every reported value before this test)."""
    good = synth.evidence(ak)
    value = hashlib.sha256(b"what the build predicted for PCR 12").digest()
    refs = synth.references()
    refs.predicted = {**refs.predicted, 12: value}
    found = failing(replace(good, pcrs={**good.pcrs, 12: value}), synth.options(ak, refs),
                    "attest.reference.pcr12")
    assert found["attest.reference.pcr12"].observed == "not quoted"
    assert found["attest.quote.pcr-digest"].status is Status.PASS


def test_unquoted_pcr11_is_not_compared_with_the_prediction(ak):
    """A quote without PCR 11, the bundle carrying the predicted PCR 11 anyway."""
    node = synth.boot()
    quote = synth.attest(ak, node.pcrs, selections=(q.PCRSelection("sha256", tuple(range(11))),))
    found = failing(synth.evidence(ak, node, quote=quote), synth.options(ak), "attest.quote.pcr-selection")
    assert found["attest.boot.pcr11"].status is Status.FAIL
    assert found["attest.boot.pcr11"].observed == "not quoted"


# ---- clock and counters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("previous, problem", [
    (CLOCK, "clock did not advance"),  # the same quote again
    (replace(CLOCK, clock=CLOCK.clock + 1), "clock did not advance"),  # the TPM's clock was rolled back
    (replace(CLOCK, clock=CLOCK.clock - 1, reset_count=CLOCK.reset_count + 1), "resetCount went backwards"),
    (replace(CLOCK, clock=CLOCK.clock - 1, restart_count=CLOCK.restart_count + 1), "restartCount went backwards"),
], ids=["replay", "clock-back", "reset-back", "restart-back"])
def test_counters_going_backwards_fail(ak, previous, problem):
    found = failing(synth.evidence(ak), synth.options(ak, previous=counters(previous)), "attest.quote.clock")
    f = found["attest.quote.clock"]
    assert problem in f.detail and f.observed == "clock=5000000 reset=7 restart=2"
    assert f.expected == (f"clock>{previous.clock} reset>={previous.reset_count} "
                          f"restart>={previous.restart_count}")


def test_counters_from_the_state_file_catch_a_replay(ak, tmp_path):
    """What `attest verify --state` does: store the counters of a passing report, then see the bundle again."""
    state = str(tmp_path / "state.json")
    ev = synth.evidence(ak)
    report, got, _ = run(ev, synth.options(ak, previous=verify.load_state(state, ak.record)))
    assert report.exit_code() == 0 and got is not None
    verify.save_state(state, ak.record, got)
    found = failing(ev, synth.options(ak, previous=verify.load_state(state, ak.record)), "attest.quote.clock")
    assert "replayed quote" in found["attest.quote.clock"].detail


def test_reboot_resets_restart_count_and_passes(ak):
    """A reboot (resetCount up, restartCount back to 0) is no failure: the check compares, it does not just fail."""
    node = synth.boot()
    rebooted = q.ClockInfo(CLOCK.clock + 10, CLOCK.reset_count + 1, 0, True)
    report, _, found = run(synth.evidence(ak, node, quote=synth.attest(ak, node.pcrs, clock=rebooted)),
                           synth.options(ak, previous=counters(CLOCK)))
    assert found["attest.quote.clock"].status is Status.PASS and report.exit_code() == 0


def test_a_tpm_reset_may_set_the_clock_back_and_nothing_else_may():
    """No orderly TPM2_Shutdown (a VM killed, a power cut): the TPM restarts Clock from its last NV save, below
    the last quote's, and resetCount grows. That is a new boot: a fleet node rebooted under QEMU showed it
    (tests/fleet/test_qemu_node.py; swtpm kept `safe` set). (resetCount, clock) must still only go up."""
    previous = verify.Counters(5000000, 7, 2)
    for safe in (True, False):
        check = verify._clock_finding(verify.Counters(24009, 8, 0), previous, safe, ())
        assert check.status is Status.PASS and "at a TPM reset (resetCount 7 -> 8" in check.detail
    for current in (verify.Counters(4900000, 7, 2), verify.Counters(5000000, 7, 3), verify.Counters(5000001, 6, 0)):
        check = verify._clock_finding(current, previous, True, ())
        assert check.status is Status.FAIL, current


def test_unsafe_clock_is_reported_on_the_first_quote(ak):
    node = synth.boot()
    unsafe = synth.attest(ak, node.pcrs, clock=replace(CLOCK, safe=False))
    _, _, found = run(synth.evidence(ak, node, quote=unsafe), synth.options(ak))
    assert "clock not safe" in found["attest.quote.clock"].detail


# ---- the AK ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", sorted(synth.akrecord.REQUIRED_AK_ATTRIBUTES))
def test_ak_without_a_required_attribute_fails(missing):
    """Not restricted: it could sign a forged TPMS_ATTEST; not fixedTPM: its key could be outside the TPM."""
    weak = synth.make_ak("rsa", synth.AK_ATTRIBUTES & ~synth.akrecord.REQUIRED_AK_ATTRIBUTES[missing])
    found = failing(synth.evidence(weak), synth.options(weak), "attest.ak.attributes")
    assert found["attest.ak.attributes"].detail == f"missing: {missing}"
    assert found["attest.quote.signature"].status is Status.PASS  # only the AK is wrong


def test_enrolment_refuses_an_ak_that_is_not_restricted(tmp_path, obelisk_cli):
    """`attest credential make` (enrolment) checks the same attributes before it challenges the node."""
    weak = synth.make_ak("rsa", synth.AK_ATTRIBUTES & ~synth.akrecord.RESTRICTED)
    for name, ak in (("good", synth.make_ak("rsa")), ("weak", weak)):
        (tmp_path / f"{name}.json").write_text(synth.akrecord.serialize(ak.record))
    args = ("--secret-out", str(tmp_path / "secret"), "--challenge", str(tmp_path / "challenge.json"))
    res = obelisk_cli("attest", "credential", "make", "--ak", str(tmp_path / "weak.json"), *args)
    assert res.returncode == 2 and "AK lacks restricted" in res.stderr
    assert not (tmp_path / "challenge.json").exists()
    res = obelisk_cli("attest", "credential", "make", "--ak", str(tmp_path / "good.json"), *args)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "challenge.json").exists()


# ---- firmware event log ---------------------------------------------------------------------------------

def test_event_log_missing_an_event_fails_on_its_pcr(ak):
    """The node extended PCR 7 with an event its log does not show."""
    node = synth.boot(firmware=(*synth.FIRMWARE, (7, 0x80000001, b"db += attacker's key")))
    honest_looking = synth.boot()
    found = failing(synth.evidence(ak, node, event_log=honest_looking.event_log), synth.options(ak),
                    "attest.eventlog.pcr7")
    f = found["attest.eventlog.pcr7"]
    assert f.observed == honest_looking.pcrs[7].hex() and f.expected == node.pcrs[7].hex()
    assert [i for i in range(10) if found[f"attest.eventlog.pcr{i}"].status is Status.FAIL] == [7]


def test_no_event_log_fails(ak):
    found = failing(synth.evidence(ak, event_log=None), synth.options(ak), "attest.eventlog")
    assert found["attest.eventlog"].detail == "the bundle has no event log"


def test_event_log_without_sha256_bank_fails(ak):
    sha1_only = eventlog.serialize(eventlog.build(synth.FIRMWARE, crypto_agile=False))
    found = failing(synth.evidence(ak, event_log=sha1_only), synth.options(ak), "attest.eventlog")
    assert "no sha256 bank" in found["attest.eventlog"].detail


def test_malformed_event_log_fails(ak):
    log = synth.boot().event_log
    found = failing(synth.evidence(ak, event_log=log[:-3]), synth.options(ak), "attest.eventlog")
    assert "offset" in found["attest.eventlog"].detail and "truncated" in found["attest.eventlog"].detail


# ---- PCR 11: systemd-stub's UKI sections (firmware log), then the node's boot phases (boot_events) --------

def test_boot_phase_log_not_replaying_to_pcr11_fails(ak):
    """obelisk-init never ran (no sysinit in PCR 11), yet the node sends every phase: the firmware log and
    the phases do not replay to the quoted PCR 11, so they explain nothing."""
    node = synth.boot(events=synth.boot_event_list()[:2])
    lie = bootevents.serialize(synth.boot_event_list())
    found = failing(synth.evidence(ak, node, boot_events=lie), synth.options(ak), "attest.boot.pcr11")
    f = found["attest.boot.pcr11"]
    assert "does not replay to the quoted value" in f.detail and f.observed == node.pcrs[11].hex()
    assert found["attest.eventlog.pcr4"].status is Status.PASS


def test_uki_section_differing_from_the_build_is_named(ak):
    """A UKI with another command line: the stub's .cmdline event differs, everything else is the build's."""
    node = synth.boot(cmdline="console=ttyS0 ima_appraise=off")
    found = failing(synth.evidence(ak, node), synth.options(ak), "attest.boot.pcr11")
    f = found["attest.boot.pcr11"]
    assert f.detail.startswith("PCR 11: UKI section .cmdline differs (sha256 "), f.detail
    assert "boot phase" not in f.detail and len(f.evidence) == 1
    assert f.expected == synth.references().predicted[11].hex() and f.observed == node.pcrs[11].hex()


def test_boot_phase_not_measured_is_named(ak):
    node = synth.boot(events=synth.boot_event_list()[:2])  # obelisk-init never ran
    found = failing(synth.evidence(ak, node), synth.options(ak), "attest.boot.pcr11")
    assert found["attest.boot.pcr11"].detail.startswith(
        "PCR 11: missing event boot phase sysinit (/sbin/obelisk-init) (sha256 ")


def test_build_event_extended_again_after_boot_fails(ak):
    """Booted with appraisal off, then root extends PCR 11 with the build's .cmdline digest and logs it too:
    the log replays, but events are aligned in order, so the build's digest late in PCR 11 stands in for
    nothing the stub measured (a look-up by name or digest would have found it)."""
    build_cmdline = synth.stub_events()[5]
    assert build_cmdline.name == "UKI section .cmdline"
    late = bootevents.LoggedEvent(11, "uki.cmdline", build_cmdline.digest)
    node = synth.boot(cmdline="console=ttyS0 ima_appraise=off", events=[*synth.boot_event_list(), late])
    found = failing(synth.evidence(ak, node), synth.options(ak), "attest.boot.pcr11")
    detail = found["attest.boot.pcr11"].detail
    assert "UKI section .cmdline differs" in detail and "an extra event" in detail


def test_malformed_boot_phase_log_fails(ak):
    found = failing(synth.evidence(ak, boot_events=b"11 sysinit nothex\n"), synth.options(ak),
                    "attest.bootevents.parse")
    assert "expected 'PCR NAME SHA256-HEX'" in found["attest.bootevents.parse"].detail
    assert found["attest.boot.pcr11"].status is Status.FAIL  # without its phases the log explains no PCR 11


# ---- the build's references: predicted PCRs, IMA reference ----------------------------------------------

def test_pcr_differing_from_the_prediction_fails(ak):
    refs = synth.references(cmdline=synth.CMDLINE + " dm-mod.create=the-image-the-customer-signed")
    found = failing(synth.evidence(ak), synth.options(ak, refs), "attest.boot.pcr11")
    f = found["attest.boot.pcr11"]
    assert f.observed == synth.boot().pcrs[11].hex() and f.expected == refs.predicted[11].hex()
    assert "UKI section .cmdline differs" in f.detail


def test_pcr_predicted_without_events_is_compared_with_the_quote(ak):
    """A manifest with pcrs.predicted only (no events to name differences with): the value is compared."""
    refs = synth.references()
    refs.boot_predictions = ()
    report, _, found = run(synth.evidence(ak), synth.options(ak, refs))
    assert found["attest.reference.pcr11"].status is Status.PASS and report.exit_code() == 0
    other = synth.references(cmdline="console=ttyS0")
    other.boot_predictions = ()
    found = failing(synth.evidence(ak), synth.options(ak, other), "attest.reference.pcr11")
    assert found["attest.reference.pcr11"].expected == other.predicted[11].hex()


def test_predictions_without_a_trusted_quote_are_errors(ak):
    good = synth.evidence(ak)
    found = failing(replace(good, signature=_flip(good.signature, 10)), synth.options(ak), "attest.boot.pcr11",
                    Status.ERROR)
    assert found["attest.boot.pcr11"].detail == "no trusted quote to compare with"


def test_ima_list_not_replaying_to_pcr10_fails(ak):
    """The list the node sends hides a file that was measured (and extended into PCR 10)."""
    node = synth.boot(files={**synth.FILES, "/tmp/implant": b"implant"})
    found = failing(synth.evidence(ak, node, ima_log=synth.boot().ima_log), synth.options(ak), "ima.pcr.10.sha256")
    assert found["ima.pcr.10.sha256"].expected == node.pcrs[10].hex()


def test_ima_file_not_in_the_reference_fails(ak):
    node = synth.boot(files={**synth.FILES, "/tmp/implant": b"implant"})
    found = failing(synth.evidence(ak, node), synth.options(ak), "ima.entry.5.unknown-file")
    assert found["ima.entry.5.unknown-file"].target == "/tmp/implant"
    assert found["ima.reference"].status is Status.FAIL and found["ima.pcr.10.sha256"].status is Status.PASS


def test_ima_file_with_another_digest_fails(ak):
    node = synth.boot(files={**synth.FILES, "/usr/bin/kubelet": b"kubelet, patched"})
    found = failing(synth.evidence(ak, node), synth.options(ak), "ima.entry.2.digest-mismatch")
    assert found["ima.entry.2.digest-mismatch"].target == "/usr/bin/kubelet"
    assert found["ima.reference"].status is Status.FAIL


def test_ima_boot_aggregate_of_another_boot_fails(ak):
    """An IMA list from another boot, replayed into PCR 10 honestly: its boot_aggregate does not cover PCRs 0-9."""
    node = synth.boot()
    other_boot = {i: hashlib.sha256(b"other boot %d" % i).digest() for i in range(10)}
    ima, pcr10 = synth.ima_list(other_boot, synth.FILES)
    node = replace(node, ima_log=ima, pcrs={**node.pcrs, 10: pcr10})
    found = failing(synth.evidence(ak, node), synth.options(ak), "ima.boot-aggregate")
    assert found["ima.pcr.10.sha256"].status is Status.PASS


def test_no_ima_list_fails(ak):
    found = failing(synth.evidence(ak, ima_log=None), synth.options(ak), "attest.ima")
    assert found["attest.ima"].detail == "the bundle has no IMA measurement list"


def test_no_ima_checker_is_an_error(ak):
    found = failing(synth.evidence(ak), synth.options(ak, ima_check=None), "attest.ima", Status.ERROR)
    assert "not available" in found["attest.ima"].detail
