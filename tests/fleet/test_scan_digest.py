"""A node sends its CIS/STIG scan only when it changed: each round names its scan by digest, the service
keeps each distinct scan once per node and joins its findings into the round when the round is read."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from obelisk.core import findings as fmt
from obelisk.core.findings import Finding, Report, Status, Subject
from obelisk.fleet import scan_digest, service
from obelisk.fleet.client import FleetClientError, RoundStart
from obelisk.tpm.swtpm import SoftwareTPM
from tests.fleet.conftest import make_node, signed_manifest


def _failing_scan() -> dict:
    return fmt.Report(findings=(Finding(id="cis-4.2.1", title="anonymous auth off", status=Status.FAIL),
                                Finding(id="cis-4.2.2", title="authorization mode", status=Status.PASS)),
                      subject=Subject("node", "n"), generated_at="2026-12-02T10:00:00Z").to_json()


def test_a_rounds_report_joined_with_its_scan_is_byte_for_byte_the_whole_report():
    verifier = (Finding(id="attest.quote", title="quote", status=Status.PASS),
                Finding(id="attest.ima", title="ima", status=Status.FAIL, detail="é \u2028 \"x\""))
    scan = Report.from_json(_failing_scan())
    node = (Finding(id="attest.node.var", title="var", status=Status.SKIP),)
    whole = Report(findings=verifier + scan.findings + node, subject=Subject("node", "n1"), generated_at="t")
    stored = Report(findings=verifier + node, subject=whole.subject, generated_at="t")
    joined = service.joined_report(fmt.serialize(stored, compact=True), fmt.serialize(scan, compact=True),
                                   len(verifier))
    assert joined == fmt.serialize(whole, compact=True)
    assert json.loads(joined)["summary"] == {"pass": 2, "fail": 2, "error": 0, "skip": 1, "manual": 0, "waived": 0}
    # a round kept without a scan (or before migration 0005) is read as stored
    assert service.joined_report("stored", None, None) == "stored"


def test_the_digest_is_the_same_on_the_node_and_after_the_wire():
    doc = _failing_scan()
    wire = json.loads(json.dumps({"scan": doc}, indent=3))["scan"]
    assert scan_digest.digest(doc) == scan_digest.digest(wire)
    assert scan_digest.digest(doc) != scan_digest.digest({**doc, "command": "other"})
    # a scan made a second later that found the same is the same scan
    assert scan_digest.digest(doc) == scan_digest.digest({**doc, "generated_at": "2030-01-01T00:00:00Z"})


@pytest.mark.swtpm
def test_a_node_sends_its_scan_only_when_it_changed(pki, fleet_service, tmp_path):
    scan_sent_when_changed_flow(pki, fleet_service, tmp_path)


def scan_sent_when_changed_flow(pki, svc, tmp_path) -> None:
    """One swtpm node's rounds: the scan's body only when it changed, stored once, findings as before."""
    op = svc.operator(pki)
    op.add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))

    def rows(sql: str) -> list[tuple]:
        from sqlalchemy import text

        with svc.fleet.sessions() as s:
            return [tuple(r) for r in s.execute(text(sql)).all()]

    def rounds() -> list[dict]:
        return [r for r in op.history(node.node) if r["type"] == "attestation"]

    def findings(round_id: int) -> list[dict]:
        return op.request("GET", f"/v1/attestations/{round_id}")["findings"]

    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = make_node(tpm, tmp_path / "n", svc.url, pki)
        sent: list[dict] = []
        push = node.push

        def recording_push(body: bytes) -> dict:
            sent.append(json.loads(body))
            return push(body)

        node.push = recording_push  # type: ignore[method-assign]
        node.register()
        op.approve(node.node)

        # first round: the service holds no scan for the node, so the body goes with its digest
        assert node.start().held_scan is None
        assert node.round()["passed"]
        first = sent[-1]
        assert first["scan"] is not None and first["scan_sha256"] == scan_digest.digest(first["scan"])
        # the next rounds scan again (seconds later: each scan says when it ran), find the same result, and
        # send only its digest
        for _ in range(3):
            time.sleep(1.1)
            assert node.round()["passed"]
            assert sent[-1]["scan"] is None and sent[-1]["scan_sha256"] == first["scan_sha256"]
        assert node.start().held_scan == first["scan_sha256"]
        kept = rounds()
        assert len(kept) == 4
        whole = findings(kept[0]["id"])
        assert len(whole) > len(first["scan"]["findings"]) > 100  # the scan's findings are in the round's
        scan = [fmt.Finding.from_json(f).to_json() for f in first["scan"]["findings"]]
        assert whole[-1 - len(scan):-1] == scan  # after the verifier's, before attest.node.var: as before
        # every round's findings are the first's, but for what the fresh quote changes (nonce, TPM clock)
        fresh = {"attest.quote.nonce", "attest.quote.clock"}
        for r in kept[1:]:
            assert [f for f in findings(r["id"]) if f["id"] not in fresh] == [f for f in whole if f["id"] not in fresh]
        # storage: one scan row for the four rounds, which refer to it; no round stores the scan's findings
        assert rows("SELECT node_id, sha256 FROM node_scans") == [(node.node, first["scan_sha256"])]
        assert len({r for (r,) in rows("SELECT scan_id FROM attestations")}) == 1
        assert all(len(json.loads(r)["findings"]) == len(whole) - len(first["scan"]["findings"])
                   for (r,) in rows("SELECT report FROM attestations"))
        # the fleet report (and the dashboard) read the joined findings too
        latest = {r["id"]: r for r in op.latest()}[node.node]
        assert json.loads(latest["report"])["findings"] == findings(kept[-1]["id"])

        # a changed scan with a failing check: its body is sent and the round fails on it
        gather = node.gather
        node.gather = lambda nonce: dataclasses.replace(gather(nonce), scan=_failing_scan())  # type: ignore
        result = node.round()
        assert sent[-1]["scan"] == _failing_scan() and not result["passed"]
        assert result["summary"] == "failed: cis-4.2.1"
        # unchanged again: no body, and the same failing check fails this round too (two in a row: quarantined)
        result = node.round()
        assert sent[-1]["scan"] is None and result["summary"] == "failed: cis-4.2.1"
        assert result["status"] == "quarantined"
        assert len(rows("SELECT id FROM node_scans")) == 2
        failed = rounds()[-1]
        assert {f["id"]: f["status"] for f in findings(failed["id"])}["cis-4.2.1"] == "fail"
        op.approve(node.node)

        # a digest the service does not hold, without the body: 412 "send the scan", nothing recorded; the same
        # round with the body is then recorded
        nonce = node.nonce()
        collected = gather(nonce)
        unknown = dict(collected.scan, command="another scan")
        bare = {"schema": "obelisk.fleet-round/1", "evidence": collected.evidence.to_json(),
                "scan_sha256": scan_digest.digest(unknown), "scan": None}
        with pytest.raises(FleetClientError, match="send the scan") as refused:
            node.push(json.dumps(bare).encode())
        assert refused.value.status == 412 and len(rounds()) == 6
        assert node.push(json.dumps({**bare, "scan": unknown}).encode())["passed"]
        assert len(rounds()) == 7
        # the node's loop does that by itself when the service no longer holds the scan it named
        start = node.start
        node.start = lambda: RoundStart(*(lambda s: (s.nonce, scan_digest.digest(_failing_scan() | {"command": "x"}),
                                                     True))(start()))  # type: ignore
        node.gather = lambda nonce: dataclasses.replace(gather(nonce), scan=_failing_scan() | {"command": "x"})  # type: ignore
        before = len(sent)
        result = node.round()
        assert [b["scan"] is None for b in sent[before:]] == [True, False] and result["summary"] == "failed: cis-4.2.1"
        assert len(rounds()) == 8
        # a body whose digest is not the one it names is refused
        nonce = start().nonce
        collected = gather(nonce)
        with pytest.raises(FleetClientError, match="scan_sha256") as wrong:
            node.push(json.dumps({"schema": "obelisk.fleet-round/1", "evidence": collected.evidence.to_json(),
                                  "scan_sha256": "0" * 64, "scan": collected.scan}).encode())
        assert wrong.value.status == 400 and len(rounds()) == 8


