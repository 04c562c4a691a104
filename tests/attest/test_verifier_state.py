"""The verifier's state file (`attest verify --state`): the IMA position it keeps makes the next
verification of the node walk only the new entries, with exactly the findings of a full check."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.attest import akrecord, verifier_state, verify
from obelisk.attest import evidence as evmod
from obelisk.core.errors import InputError
from obelisk.core.findings import Status
from obelisk.ima_policy import checker
from tests.attest import synth
from tests.attest.synth import CLOCK, NONCE

N = 60
FILES = {f"/usr/bin/tool{i}": b"content %d" % i for i in range(1, N)}  # entries 2..N after the boot_aggregate
AK = synth.make_ak("ecc")
BASE = synth.boot(files=FILES)
REFS = synth.references(files=FILES)


def node_reading(listed: int, quoted: int, files: dict[str, bytes] = FILES, reset_count: int = CLOCK.reset_count,
                 tick: int = 1) -> evmod.Evidence:
    """The node's bundle when its list has `listed` entries and the quote covers the first `quoted`:
    a list is read after its quote and may run ahead of it."""
    names = list(files)
    listed_log, _ = synth.ima_list(BASE.pcrs, {n: files[n] for n in names[:listed - 1]})
    _, pcr10 = synth.ima_list(BASE.pcrs, {n: FILES[n] for n in names[:quoted - 1]})  # the TPM saw the truth
    pcrs = {**BASE.pcrs, 10: pcr10}
    clock = replace(CLOCK, clock=CLOCK.clock + 1000 * tick, reset_count=reset_count)
    return synth.evidence(AK, replace(BASE, ima_log=listed_log, pcrs=pcrs),
                          quote=synth.attest(AK, pcrs, clock=clock))


def round_with_state(path: str, ev: evmod.Evidence, refs=REFS):
    """What `attest verify --state PATH` does; returns (report, the full check's report)."""
    saved = verifier_state.load(path, AK.record)
    previous = saved.counters if saved else None
    opts = synth.options(AK, refs, previous=previous)
    ima = verifier_state.resume_ima(opts, refs, saved)
    report, counters, _ = synth.run(ev, opts)
    if counters is not None and not report.failed:
        verifier_state.save(path, AK.record, verifier_state.after(counters, ima, refs))
    full, _, _ = synth.run(ev, synth.options(AK, refs, previous=previous))
    return report, full


@pytest.fixture
def walked(monkeypatch):
    """The byte offset where each walk of an IMA list started."""
    starts: list[int] = []
    real = checker.check_range
    monkeypatch.setattr(checker, "check_range", lambda a, b, n=1, job=None: starts.append(a) or real(a, b, n, job))
    return starts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(2, N), min_size=1, max_size=4).map(sorted), quote_lag=st.integers(0, 3))
def test_rounds_with_the_state_file_equal_full_checks(cuts, quote_lag):
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "state.json")
        for tick, cut in enumerate([*cuts, N], start=1):
            report, full = round_with_state(path, node_reading(cut, max(1, cut - quote_lag), tick=tick))
            assert report.findings == full.findings
            assert not report.failed, [f for f in report.findings if f.status is not Status.PASS]
            saved = verifier_state.load(path, AK.record)
            assert saved is not None and saved.ima is not None and saved.ima.entries == cut


def test_the_next_round_walks_only_the_new_entries_and_a_reboot_the_whole_list(tmp_path, walked):
    path = str(tmp_path / "state.json")
    round_with_state(path, node_reading(40, 40, tick=1))
    offset = verifier_state.load(path, AK.record).ima.offset
    walked.clear()
    report, full = round_with_state(path, node_reading(N, N, tick=2))
    assert walked[0] == offset and walked[1] == 0  # ours resumed; the full check (for comparison) did not
    assert report.findings == full.findings and not report.failed

    walked.clear()  # the node rebooted: resetCount moved on, and its list starts again
    report, full = round_with_state(path, node_reading(N, N, reset_count=CLOCK.reset_count + 1, tick=3))
    assert walked == [0, 0] and report.findings == full.findings and not report.failed
    assert verifier_state.load(path, AK.record).ima.boot == CLOCK.reset_count + 1

    walked.clear()  # other references: the position checked against the old ones is not used
    report, full = round_with_state(path, node_reading(N, N, reset_count=CLOCK.reset_count + 1, tick=4),
                                    refs=replace(REFS, fingerprint="another manifest"))
    assert walked == [0, 0] and report.findings == full.findings


@pytest.mark.parametrize("quoted_before", [30, 40])
def test_a_rewritten_old_entry_is_still_caught(tmp_path, quoted_before):
    """Round 1 checked 40 entries, the quote covering `quoted_before` of them. The node then serves its list with
    entry 35 rewritten: not yet quoted at round 1 (30), the running PCR carried over no longer reaches the new
    quote; already quoted (40), the checked part of the list is no longer the one checked. Either way the
    round fails exactly as a full check does."""
    path = str(tmp_path / "state.json")
    report, _ = round_with_state(path, node_reading(40, quoted_before, tick=1))
    assert not report.failed
    forged = {**FILES, "/usr/bin/tool34": b"innocent"}  # the 35th entry
    report, full = round_with_state(path, node_reading(N, N, files=forged, tick=2))
    status = {f.id: f.status for f in report.findings}
    assert status["ima.pcr.10.sha256"] is Status.FAIL and report.failed
    assert report.findings == full.findings
    assert verifier_state.load(path, AK.record).counters.clock == CLOCK.clock + 1000  # a failed round saves nothing


def test_version_1_files_are_read_and_rewritten_as_version_2(tmp_path):
    path = tmp_path / "state.json"
    key = verifier_state.key_of(AK.record)
    path.write_text(json.dumps({key: {"clock": 5, "reset_count": 7, "restart_count": 2},
                                "00ff": {"clock": 1, "reset_count": 0, "restart_count": 0}}))
    saved = verifier_state.load(str(path), AK.record)
    assert saved == verifier_state.NodeState(verify.Counters(5, 7, 2)) and saved.ima is None
    assert verify.load_state(str(path), AK.record) == verify.Counters(5, 7, 2)
    report, _ = round_with_state(str(path), node_reading(N, N, tick=1))
    assert not report.failed
    doc = json.loads(path.read_text())
    assert doc["schema"] == verifier_state.SCHEMA and set(doc["aks"]) == {key, "00ff"}
    assert doc["aks"][key]["ima"]["progress"]["entries"] == N and "ima" not in doc["aks"]["00ff"]


@pytest.mark.parametrize("doc, needle", [
    ({"schema": "obelisk.verifier-state/9", "aks": {}}, "is not obelisk.verifier-state/2"),
    ({"schema": verifier_state.SCHEMA}, "field aks"),
    ({"schema": verifier_state.SCHEMA, "aks": {"00aa": {"clock": 1}}}, "'00aa' malformed"),
    ({"schema": verifier_state.SCHEMA, "aks": {"00aa": {"clock": 1, "reset_count": 1, "restart_count": 1,
                                                         "ima": {"references": ""}}}}, "'00aa': ima"),
    ({"schema": verifier_state.SCHEMA, "aks": {"00aa": {"clock": 1, "reset_count": 1, "restart_count": 1,
                                                         "ima": {"references": "", "progress": {"boot": 1}}}}},
     "ima.progress"),
])
def test_bad_state_files_are_one_line_naming_the_entry(doc, needle):
    with pytest.raises(InputError) as exc:
        verifier_state.parse(json.dumps(doc), "state.json")
    assert needle in str(exc.value) and str(exc.value).startswith("state.json") and "\n" not in str(exc.value)


def test_attest_verify_state_keeps_the_ima_position(tmp_path, obelisk_cli):
    """The command line: a second `attest verify --state` of a node whose list grew resumes and still passes."""
    ak_file = tmp_path / "ak.json"
    ak_file.write_text(akrecord.serialize(AK.record))
    state = tmp_path / "state.json"
    for tick, listed in ((1, 30), (2, N)):
        bundle = tmp_path / f"evidence{tick}.json"
        bundle.write_text(evmod.serialize(node_reading(listed, listed, tick=tick)))
        res = obelisk_cli("attest", "verify", str(bundle), "--nonce", NONCE.hex(), "--ak", str(ak_file),
                          "--state", str(state), "--format", "json")
        found = {f["id"]: f["status"] for f in json.loads(res.stdout)["findings"]}
        assert found["ima.pcr.10.sha256"] == "pass" and found["attest.quote.clock"] == "pass", res.stderr
        doc = json.loads(state.read_text())
        assert doc["aks"][verifier_state.key_of(AK.record)]["ima"]["progress"]["entries"] == listed
