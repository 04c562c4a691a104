"""obelisk's PCR 11 boot event log: format, hostile input, and the verifier's use of it on a real swtpm."""

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


def _expected(cmdline: bytes):
    from obelisk.image import measure

    return tuple((e.pcr, e.name, e.digest, e.description) for e in measure.boot_events(cmdline.decode(), ROOT))


@pytest.mark.swtpm
def test_verifier_names_the_measurement_that_differs(swtpm, tmp_path):
    """A node whose root differs: its log replays to the quote, and the root event is named, not the command line."""
    from obelisk.image import measure

    info = tpm.create_keys(swtpm.tcti)
    ak = akrecord.from_public(info.public, ek_public=info.ek_public, activated=True, source="ak")
    cmdline = b"console=ttyS0 obelisk.root=/dev/vda"
    other_root = hashlib.sha256(b"a changed root").digest()
    logged = [bootevents.LoggedEvent(11, "obelisk.cmdline", hashlib.sha256(cmdline + b"\n").digest()),
              bootevents.LoggedEvent(11, "obelisk.root", other_root),
              bootevents.LoggedEvent(11, "obelisk.boot-complete", measure.BOOT_COMPLETE_DIGEST)]
    for e in logged:
        extend_pcr11(swtpm.tcti, e.digest)
    log = tmp_path / "boot-events"
    log.write_bytes(bootevents.serialize(logged))
    expected = _expected(cmdline)
    prediction = measure.predict(measure.boot_events(cmdline.decode(), ROOT))

    def check(log_bytes: bytes | None):
        nonce = os.urandom(16)
        if log_bytes is not None:
            log.write_bytes(log_bytes)
        ev = evidence.collect(nonce, swtpm.tcti, event_log_path=None, ima_path=None,
                              boot_events_path=str(log) if log_bytes is not None else str(tmp_path / "none"))
        ev = evidence.parse(evidence.serialize(ev))
        opts = verify.Options(nonce=nonce, ak=ak, predicted_pcrs={11: prediction.final}, boot_events=expected,
                              quote_only=True)
        report, _ = verify.verify(ev, opts)
        return {f.id: f for f in report.findings}

    found = check(bootevents.serialize(logged))
    assert found["attest.reference.pcr11"].status is Status.FAIL
    assert found["attest.bootevents.replay"].status is Status.PASS
    assert found["attest.reference.boot-event:obelisk.cmdline"].status is Status.PASS
    root = found["attest.reference.boot-event:obelisk.root"]
    assert root.status is Status.FAIL and root.observed == other_root.hex() and "root device" in root.detail
    # a log doctored to show the built root does not replay to the quote: nothing in it is believed
    doctored = [logged[0], bootevents.LoggedEvent(11, "obelisk.root", ROOT), logged[2]]
    found = check(bootevents.serialize(doctored))
    assert found["attest.bootevents.replay"].status is Status.FAIL
    assert "attest.reference.boot-event:obelisk.root" not in found
    # no log at all: said so
    found = check(None)
    assert found["attest.bootevents.replay"].status is Status.SKIP

