"""Incremental verification (`ima_policy.progress`): resuming where the last round stopped gives
exactly the result of a full check, on lists cut at random points."""

import dataclasses
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.core.errors import ParseError
from obelisk.core.findings import Status
from obelisk.ima_policy import checker, progress
from obelisk.ima_policy.measurement_list import make_entry, serialize_ascii, serialize_binary
from obelisk.ima_policy.pcrs import PcrValues
from obelisk.ima_policy.reference import ReferenceManifest
from obelisk.ima_policy.replay import SHA1_PADDED, replay
from obelisk.ima_policy.verify import VerifyOptions, verify_log
from tests.ima_policy.logs import boot_aggregate_entry, file_entry

N = 120


def _entries() -> tuple[list, ReferenceManifest]:
    out = [boot_aggregate_entry(hashlib.sha256(b"pcrs").digest())]
    files = {}
    for i in range(1, N):
        path = f"/usr/bin/f{i}"
        content = b"%d" % i
        e = file_entry(path, content, "ima-sig" if i % 7 == 0 else "ima-ng", number=i + 1)
        if i % 11 == 0:  # a violation
            e = make_entry(e.template_name, e.fields(), number=i + 1, violation=True)
        if i % 13 == 0:  # another PCR
            e = make_entry(e.template_name, e.fields(), number=i + 1, pcr=11)
        out.append(e)
        if i % 5:  # every fifth file is unknown; every ninth differs
            files[path] = f"sha256:{hashlib.sha256(content if i % 9 else b'other').hexdigest()}"
    return out, ReferenceManifest(files)


ENTRIES, MANIFEST = _entries()


def _pcrs(entries, mode="per-bank"):
    values = replay(entries, ("sha1", "sha256"), mode=mode)
    return PcrValues({b: {10: v} for b, v in values.items()})


def _same(a, b):
    assert a.report.findings == b.report.findings
    assert a.report.subject == b.report.subject
    assert (a.entries, a.encoding, a.byte_order, a.replays) == (b.entries, b.encoding, b.byte_order, b.replays)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(1, N), min_size=1, max_size=5).map(sorted),
       encoding=st.sampled_from(["binary", "ascii"]),
       quote_lag=st.integers(0, 3),
       mode=st.sampled_from(["auto", "per-bank", SHA1_PADDED]))
def test_incremental_rounds_equal_a_full_check(cuts, encoding, quote_lag, mode):
    serialize = serialize_binary if encoding == "binary" else serialize_ascii
    saved = None
    for cut in cuts + [N]:
        listed = ENTRIES[:cut]
        quoted = ENTRIES[:max(1, cut - quote_lag)]  # the list is read after the quote: it may run ahead
        opts = VerifyOptions(pcrs=_pcrs(quoted, "per-bank" if mode == "auto" else mode), reference=MANIFEST,
                             mode=mode, workers=1, max_findings=7)
        data = serialize(listed)
        result, state = progress.verify_since(data, "list", opts, boot=3, progress=saved)
        _same(result, verify_log(data, "list", opts))
        saved = progress.parse(progress.serialize(state))  # what a verifier keeps between rounds
        assert saved == state
        assert state.entries == cut and state.offset == len(data)
        assert state.prefix == hashlib.sha256(data).digest()  # the resumed hash of the checked part is exact


def test_resumed_round_walks_only_the_new_entries(monkeypatch):
    data = serialize_binary(ENTRIES)
    head = serialize_binary(ENTRIES[:100])
    opts = VerifyOptions(pcrs=_pcrs(ENTRIES), workers=1)
    _, state = progress.verify_since(head, "list", dataclasses.replace(opts, pcrs=_pcrs(ENTRIES[:100])), 1, None)
    walked = []
    real = checker.check_range

    def spy(start, stop, first_number=1, job=None):
        walked.append((start, stop))
        return real(start, stop, first_number, job)

    monkeypatch.setattr(checker, "check_range", spy)
    result, state2 = progress.verify_since(data, "list", opts, 1, state)
    assert walked == [(len(head), len(data))]
    assert state2.entries == N
    assert all(f.status is not Status.FAIL for f in result.report.findings if f.id.startswith("ima.pcr."))


def test_reboot_means_the_whole_list(monkeypatch):
    data = serialize_binary(ENTRIES)
    opts = VerifyOptions(pcrs=_pcrs(ENTRIES), workers=1)
    _, state = progress.verify_since(data, "list", opts, boot=1, progress=None)
    walked = []
    real = checker.check_range
    monkeypatch.setattr(checker, "check_range", lambda a, b, n=1, job=None: walked.append(a) or real(a, b, n, job))
    result, state2 = progress.verify_since(data, "list", opts, boot=2, progress=state)
    assert walked == [0]
    assert state2.boot == 2 and state2.entries == N


def test_old_entry_rewritten_after_its_check_is_caught_through_the_quote():
    """Round 1 reads a list running ahead of its quote, so entries 101-110 are not covered by it; one
    of them was rewritten. Round 2 does not re-read it, but the running PCR carried over no longer
    reaches the new quote, exactly as a full check finds."""
    honest = ENTRIES
    forged = list(ENTRIES)
    forged[104] = file_entry("/usr/bin/f104", b"innocent", "ima-ng", number=105)
    opts1 = VerifyOptions(pcrs=_pcrs(honest[:100]), workers=1)
    first, state = progress.verify_since(serialize_binary(forged[:110]), "list", opts1, 1, None)
    assert {f.id: f.status for f in first.report.findings}["ima.pcr.10.sha256"] is Status.PASS
    opts2 = VerifyOptions(pcrs=_pcrs(honest), workers=1)
    data2 = serialize_binary(forged)
    second, _ = progress.verify_since(data2, "list", opts2, 1, state)
    status = {f.id: f.status for f in second.report.findings}
    assert status["ima.pcr.10.sha256"] is Status.FAIL and status["ima.pcr.10.sha1"] is Status.FAIL
    _same(second, verify_log(data2, "list", opts2))


def test_an_entry_rewritten_after_the_quote_covered_it_is_found_as_a_full_check_finds_it(monkeypatch):
    """Round 1 checks entries 1-100, all quoted. The node then serves a list whose entry 50 was rewritten:
    the running PCR carried over would still reach the new quote, so the checked part of the list is
    compared with what was checked (its sha256) and the list is checked whole."""
    opts1 = VerifyOptions(pcrs=_pcrs(ENTRIES[:100]), workers=1)
    _, state = progress.verify_since(serialize_binary(ENTRIES[:100]), "list", opts1, 1, None)
    forged = list(ENTRIES)
    forged[49] = file_entry("/usr/bin/f49", b"innocent", "ima-ng", number=50)
    data = serialize_binary(forged)
    opts2 = VerifyOptions(pcrs=_pcrs(ENTRIES), workers=1)
    walked = []
    real = checker.check_range
    monkeypatch.setattr(checker, "check_range", lambda a, b, n=1, job=None: walked.append(a) or real(a, b, n, job))
    second, _ = progress.verify_since(data, "list", opts2, 1, state)
    assert walked[0] == 0
    assert {f.id: f.status for f in second.report.findings}["ima.pcr.10.sha256"] is Status.FAIL
    _same(second, verify_log(data, "list", opts2))
    saved_before = progress.serialize(dataclasses.replace(state, prefix=b"")).replace(', "prefix": ""', "")
    assert '"prefix"' not in saved_before
    old = progress.parse(saved_before)
    assert old.prefix == b""  # saved before the prefix was kept: readable, and resumes nothing
    walked.clear()
    progress.verify_since(serialize_binary(ENTRIES), "list", opts2, 1, old)
    assert walked[0] == 0


def test_resume_across_chunks_with_two_workers(monkeypatch):
    monkeypatch.setattr(checker, "CHUNK_TARGET", 2048)
    many = ENTRIES + [file_entry(f"/usr/lib/x{i}", b"x%d" % i, number=N + i + 1) for i in range(3000)]
    data = serialize_binary(many)
    opts = VerifyOptions(pcrs=_pcrs(many), reference=MANIFEST, workers=2, max_findings=50)
    _, state = progress.verify_since(serialize_binary(many[:1234]), "list",
                                     dataclasses.replace(opts, pcrs=_pcrs(many[:1200])), 9, None)
    result, _ = progress.verify_since(data, "list", opts, 9, state)
    _same(result, verify_log(data, "list", opts))


@pytest.mark.parametrize("text", ["", "{}", '{"schema": "obelisk.ima-progress/1"}', "[1]",
                                  '{"schema": "obelisk.ima-progress/1", "boot": -1}'])
def test_parse_rejects_bad_state(text):
    with pytest.raises(ParseError):
        progress.parse(text)
