"""The node's PCR 11 boot phase log: format, hostile input, and the verifier's use of it on a real swtpm."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.attest import akrecord, evidence, verify
from obelisk.core.errors import ParseError
from obelisk.core.findings import Status
from obelisk.tpm import bootevents
from obelisk.tpm import device as tpm
from tests.conftest import extend_pcr11

ROOT = hashlib.sha256(b"the built root").digest()


def test_round_trip():
    events = (bootevents.LoggedEvent(11, "obelisk.cmdline", b"\1" * 32),
              bootevents.LoggedEvent(11, "obelisk.root", b"\2" * 32))
    data = bootevents.serialize(events)
    assert data.startswith(b"11 obelisk.cmdline 0101") and bootevents.parse(data) == events


@pytest.mark.parametrize("data, where", [
    (b"11 obelisk.root zz\n", "offset 0"),
    (b"11 obelisk.root " + b"0" * 64 + b"\n99 x " + b"0" * 64 + b"\n", "offset 81"),
    (b"11 Obelisk " + b"0" * 64, "offset 0"),
    (b"x" * (bootevents.MAX_SIZE + 1), "larger than"),
    ((b"11 a " + b"0" * 64 + b"\n") * (bootevents.MAX_EVENTS + 1), "more than"),
])
def test_malformed_logs_are_named(data, where):
    with pytest.raises(ParseError, match=where):
        bootevents.parse(data, "log")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_hostile_bytes_only_raise_parse_errors(data):
    try:
        events = bootevents.parse(data)
    except ParseError:
        return
    assert bootevents.parse(bootevents.serialize(events)) == events


@pytest.mark.swtpm
def test_verifier_names_the_measurement_that_differs(swtpm, tmp_path):
    """A node whose UKI has another command line, on a real TPM: the stub's events (in the firmware log)
    and the node's boot phases replay to the quote, and PCR 11's .cmdline is named, nothing else."""
    from obelisk.image import measure
    from obelisk.tpm import eventlog
    from tests.attest import synth

    info = tpm.create_keys(swtpm.tcti)
    ak = akrecord.from_public(info.public, ek_public=info.ek_public, activated=True, source="ak")
    booted = synth.stub_events("console=ttyS0 ima_appraise=off")
    phases = synth.boot_event_list()
    for digest in [e.digest for e in booted] + [e.digest for e in phases]:  # as systemd-stub, then the node
        extend_pcr11(swtpm.tcti, digest)
    firmware_log = tmp_path / "binary_bios_measurements"
    firmware_log.write_bytes(eventlog.serialize(synth.with_stub_events(eventlog.build((), banks=("sha256",)), booted)))
    log = tmp_path / "boot-events"
    prediction = measure.predict(synth.stub_events()).pcr11

    def check(log_bytes: bytes | None):
        nonce = os.urandom(16)
        if log_bytes is not None:
            log.write_bytes(log_bytes)
        ev = evidence.collect(nonce, swtpm.tcti, event_log_path=str(firmware_log), ima_path=None,
                              boot_events_path=str(log) if log_bytes is not None else str(tmp_path / "none"))
        ev = evidence.parse(evidence.serialize(ev))
        opts = verify.Options(nonce=nonce, ak=ak, boot_predictions=(prediction,))
        report, _ = verify.verify(ev, opts)
        return {f.id: f for f in report.findings}

    found = check(bootevents.serialize(phases))
    pcr11 = found["attest.boot.pcr11"]
    assert pcr11.status is Status.FAIL and pcr11.expected == prediction.value.hex()
    assert pcr11.detail.startswith("PCR 11: UKI section .cmdline differs (sha256 ") and len(pcr11.evidence) == 1
    # phases doctored to hide a changed one do not replay to the quote: nothing in the log is believed
    doctored = [*phases[:2], bootevents.LoggedEvent(11, "sysinit", ROOT)]
    found = check(bootevents.serialize(doctored))
    assert "does not replay to the quoted value" in found["attest.boot.pcr11"].detail
    # no phase log at all: the firmware's log alone does not explain PCR 11 either
    found = check(None)
    assert found["attest.boot.pcr11"].status is Status.FAIL
    assert "does not replay to the quoted value" in found["attest.boot.pcr11"].detail
