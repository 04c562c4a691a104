"""The verifier keeps each firmware event log's analysis (attest/verify.py LogAnalyses): a kept analysis
gives the findings a fresh one gives, the quote is still compared with it, and each finding names the
bundle it came from."""

from __future__ import annotations

import dataclasses

import pytest

from obelisk.attest import verify
from obelisk.core.errors import ParseError
from obelisk.core.findings import Status
from tests.attest import synth
from tests.attest.synth import run


@pytest.fixture
def analyses(monkeypatch) -> verify.LogAnalyses:
    kept = verify.LogAnalyses(kept=2)
    monkeypatch.setattr(verify, "LOG_ANALYSES", kept)
    return kept


def _without_time(report) -> dict:
    doc = report.to_json()
    doc.pop("generated_at")
    return doc


def test_a_kept_analysis_gives_the_findings_of_a_fresh_one(analyses, monkeypatch):
    ak = synth.make_ak("ecc")
    first, _, _ = run(synth.evidence(ak), synth.options(ak))
    assert len(analyses._done) == 1
    again, _, _ = run(synth.evidence(ak), synth.options(ak))  # from the kept analysis
    monkeypatch.setattr(verify, "LOG_ANALYSES", verify.LogAnalyses(kept=0))  # nothing kept: analysed afresh
    fresh, _, _ = run(synth.evidence(ak), synth.options(ak))
    assert _without_time(again) == _without_time(first) == _without_time(fresh)


def test_the_quote_is_compared_with_a_kept_analysis_every_time(analyses):
    ak = synth.make_ak("ecc")
    node = synth.boot()
    report, _, _ = run(synth.evidence(ak, node), synth.options(ak))
    assert report.exit_code() == 0
    # the same log with a quote of another PCR 0 (signed, and the reported values are the quoted ones)
    pcrs = {**node.pcrs, 0: bytes(32)}
    other = dataclasses.replace(node, pcrs=pcrs)
    found = synth.failing(synth.evidence(ak, other), synth.options(ak), "attest.eventlog.pcr0")
    assert found["attest.quote.pcr-digest"].status is Status.PASS  # the quote itself is good
    assert len(analyses._done) == 1  # one log, analysed once


def test_each_finding_names_its_own_bundle(analyses):
    ak = synth.make_ak("ecc")
    _, _, first = run(synth.evidence(ak), synth.options(ak, source="node-a"))
    _, _, second = run(synth.evidence(ak), synth.options(ak, source="node-b"))
    sources = lambda found: {e.source for e in found["attest.eventlog.data"].evidence}  # noqa: E731
    assert sources(first) == {"node-a: event_log"} and sources(second) == {"node-b: event_log"}


def test_a_log_that_does_not_parse_is_refused_each_time_and_not_kept(analyses):
    with pytest.raises(ParseError, match="node-a"):
        analyses.analyse(b"\x00" * 40, "node-a")
    with pytest.raises(ParseError, match="node-b"):
        analyses.analyse(b"\x00" * 40, "node-b")
    assert not analyses._done


def test_only_the_most_recently_used_analyses_are_kept(analyses):
    logs = [synth.boot(firmware=[*synth.FIRMWARE, (0, 0x80000008, f"extra {i}".encode())]).event_log
            for i in range(3)]
    first = analyses.analyse(logs[0], "a")
    analyses.analyse(logs[1], "b")
    assert analyses.analyse(logs[0], "a") is first  # kept, and now the most recent
    analyses.analyse(logs[2], "c")  # pushes out logs[1], the least recently used
    assert len(analyses._done) == 2
    assert analyses.analyse(logs[0], "a") is first
    assert analyses.analyse(logs[1], "b") is not None and len(analyses._done) == 2
