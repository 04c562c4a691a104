"""The fleet with real swtpm-backed host-side nodes, over real HTTPS on 127.0.0.1, state in SQLite."""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3

import pytest

from obelisk.fleet.client import FleetClientError
from obelisk.tpm.swtpm import SoftwareTPM
from tests.fleet.conftest import IMAGE, make_node, signed_manifest

pytestmark = pytest.mark.swtpm


def _statuses(svc) -> dict[str, str]:
    return {n["id"]: n["status"] for n in svc.fleet.nodes()}


def test_two_nodes_register_wait_for_approval_and_become_trusted(pki, fleet_service, tmp_path, obelisk_cli):
    two_nodes_flow(pki, fleet_service, tmp_path, obelisk_cli)


def _rows(svc, sql: str) -> list[tuple]:
    """A query on the service's database, whatever its engine."""
    from sqlalchemy import text

    with svc.fleet.sessions() as s:
        return [tuple(r) for r in s.execute(text(sql)).all()]


def two_nodes_flow(pki, svc, tmp_path, obelisk_cli) -> None:
    """Two swtpm nodes register, wait in pending, are approved, attest and become trusted; replays refused;
    every round kept once; operator actions audited; silence makes them unreachable."""
    op = svc.operator(pki)
    added = op.add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    assert added["image"] == IMAGE
    with SoftwareTPM.start(tmp_path / "tpm-a") as tpm_a, SoftwareTPM.start(tmp_path / "tpm-b") as tpm_b:
        a = make_node(tpm_a, tmp_path / "a", svc.url, pki)
        b = make_node(tpm_b, tmp_path / "b", svc.url, pki)
        assert a.register("node-a")["status"] == "pending"
        assert b.register("node-b")["status"] == "pending"
        assert a.node != b.node
        # pending: no nonce, so no round
        with pytest.raises(FleetClientError, match="pending") as exc:
            a.nonce()
        assert exc.value.status == 403
        assert _statuses(svc) == {a.node: "pending", b.node: "pending"}

        # the operator approves, through the CLI (mTLS; audited with the certificate's subject)
        env = {"OBELISK_FLEET_URL": svc.url, "OBELISK_FLEET_CA": pki["ca"],
               "OBELISK_FLEET_CERT": str(pki["operator"].cert), "OBELISK_FLEET_KEY": str(pki["operator"].key)}
        for node in (a.node, b.node):
            res = obelisk_cli("fleet", "approve", node, "--format", "json", env=env)
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout) == {"id": node, "status": "approved"}

        # two rounds each: every one verifies against the image manifest
        for _ in range(2):
            for node in (a, b):
                result = node.round()
                assert result["passed"] and result["status"] == "trusted", result["summary"]
        res = obelisk_cli("fleet", "nodes", "--format", "json", env=env)
        assert res.returncode == 0, res.stderr
        nodes = {n["id"]: n for n in json.loads(res.stdout)["nodes"]}
        assert set(nodes) == {a.node, b.node}
        for n in nodes.values():
            assert n["image"] == IMAGE and n["status"] == "trusted" and n["last_attested"].endswith("Z")

        # the round's report is the verifier's: quote, event log, IMA list all checked and passed
        hist = op.history(a.node)
        rounds = [r for r in hist if r["type"] == "attestation"]
        assert len(rounds) == 2 and all(r["passed"] for r in rounds)
        report = op.request("GET", f"/v1/attestations/{rounds[0]['id']}")
        found = {f["id"]: f["status"] for f in report["findings"]}
        for check in ("attest.quote.signature", "attest.quote.nonce", "attest.quote.signer", "attest.quote.pcr-digest",
                      "attest.eventlog.pcr0", "attest.eventlog.pcr7", "ima.pcr.10.sha256", "ima.reference",
                      "attest.reference.signature"):
            assert found[check] == "pass", (check, found.get(check))
        kinds = [r["kind"] for r in hist if r["type"] == "event"]
        assert kinds == ["registered", "ak-activated", "approve", "attested"]

        # replays: the same evidence again, and a registration challenge answered twice
        nonce = a.nonce()
        bundle = a.collect(nonce)
        assert a.push(bundle)["passed"]
        with pytest.raises(FleetClientError, match="already used") as exc:
            a.push(bundle)
        assert exc.value.status == 409

        # history keeps every round exactly once (3 for a: the replay added none), in the database too
        assert len([r for r in op.history(a.node) if r["type"] == "attestation"]) == 3
        per_node = dict(_rows(svc, "SELECT node_id, count(*) FROM attestations GROUP BY node_id"))
        assert per_node == {a.node: 3, b.node: 2}
        assert _rows(svc, "SELECT count(*) FROM attestations GROUP BY nonce HAVING count(*) > 1") == []
        audit = _rows(svc, "SELECT subject, action, target, outcome FROM audit ORDER BY id")
        assert ("CN=alice", "approve", a.node, "ok") in audit and ("CN=alice", "image-add", IMAGE, "ok") in audit

        res = obelisk_cli("fleet", "audit", "--format", "json", env=env)
        assert res.returncode == 0 and [r["action"] for r in json.loads(res.stdout)["audit"]] == \
            ["image-add", "approve", "approve"]

        # the fleet report, through the report renderers: one subject per node, each node's findings targeted
        res = obelisk_cli("fleet", "report", "--format", "json", "--fail-on-findings", env=env)
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        status_findings = {f["target"]: f["status"] for f in doc["findings"] if f["id"] == "fleet.node.status"}
        assert status_findings == {a.node: "pass", b.node: "pass"}
        assert {f["target"].split(":")[0] for f in doc["findings"]} == {a.node, b.node}
        assert any(f["id"] == "attest.quote.signature" and f["target"].startswith(b.node) for f in doc["findings"])
        res = obelisk_cli("fleet", "report", "-o", str(tmp_path / "fleet.html"), env=env)
        assert res.returncode == 0, res.stderr
        html = (tmp_path / "fleet.html").read_text()
        assert f"node {a.node}" in html and f"node {b.node}" in html and "<html" in html
        status, page = op.exchange("GET", "/dashboard")  # the live dashboard: the same page, from the service
        assert status == 200 and b"<html" in page and a.node.encode() in page and b.node.encode() in page
        from obelisk.fleet.client import FleetClient

        assert FleetClient(svc.url, pki["ca"]).exchange("GET", "/dashboard")[0] == 401  # operators only
        csv_res = obelisk_cli("fleet", "report", "--format", "csv", env=env)
        assert csv_res.returncode == 0 and csv_res.stdout.count(f"{a.node}") >= 2

        # silence: three intervals without evidence make a node unreachable (the sweep, with a later clock)
        later = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=3 * svc.fleet.interval + 5)
        svc.fleet.now = lambda: later
        assert sorted(svc.fleet.sweep()) == sorted([a.node, b.node])
        assert set(_statuses(svc).values()) == {"unreachable"}
        svc.fleet.now = lambda: _dt.datetime.now(_dt.UTC)
        assert a.round()["status"] == "trusted"


def test_replayed_registration_answer_is_refused(pki, fleet_service, tmp_path):
    from obelisk.attest import credential
    from obelisk.tpm import device

    svc = fleet_service
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = make_node(tpm, tmp_path / "n", svc.url, pki)
        info = device.read_ak(tpm.tcti)
        answer = node.client.request("POST", "/v1/node/register", {
            "ek_public": info.ek_public.hex(), "ak_public": info.public.hex(), "image": IMAGE})
        challenge = credential.parse(json.dumps(answer["challenge"]).encode())
        secret = credential.activate(challenge, tpm.tcti, info.handle)
        activation = {"challenge_id": answer["challenge_id"], "secret": secret.hex()}
        assert node.client.request("POST", "/v1/node/activate", activation)["status"] == "pending"
        with pytest.raises(FleetClientError, match="already used") as exc:
            node.client.request("POST", "/v1/node/activate", activation)
        assert exc.value.status == 409
        # a wrong answer (not from the TPM) proves nothing
        answer = node.client.request("POST", "/v1/node/register", {
            "ek_public": info.ek_public.hex(), "ak_public": info.public.hex(), "image": IMAGE})
        with pytest.raises(FleetClientError, match="not in the EK's TPM") as exc:
            node.client.request("POST", "/v1/node/activate",
                                {"challenge_id": answer["challenge_id"], "secret": "00" * 32})
        assert exc.value.status == 403


def test_unknown_ek_cannot_attest(pki, fleet_service, tmp_path):
    svc = fleet_service
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    with SoftwareTPM.start(tmp_path / "known") as known_tpm, SoftwareTPM.start(tmp_path / "unknown") as other_tpm:
        known = make_node(known_tpm, tmp_path / "k", svc.url, pki)
        known.register()
        svc.operator(pki).approve(known.node)
        stranger = make_node(other_tpm, tmp_path / "u", svc.url, pki)
        from obelisk.fleet.service import node_id_of
        from obelisk.tpm import device

        stranger.node = node_id_of(device.read_ak(other_tpm.tcti).ek_public)  # never registered
        with pytest.raises(FleetClientError, match="unknown node") as exc:
            stranger.nonce()
        assert exc.value.status == 404
        # a quote from the unknown TPM over the known node's nonce, pushed as the known node: its AK did not sign
        nonce = known.nonce()
        with pytest.raises(FleetClientError, match="unknown node"):
            stranger.push(stranger.collect(nonce))
        stranger.node = known.node
        result = stranger.push(stranger.collect(nonce))
        assert not result["passed"] and "attest.quote.signature" in result["summary"]
        assert result["status"] == "failed"
        # a second failed round in a row quarantines the node; a good round no longer lifts it
        stranger.node = known.node
        assert stranger.push(stranger.collect(known.nonce()))["status"] == "quarantined"
        assert known.round() == {"node": known.node, "passed": True, "status": "quarantined",
                                 "summary": "all checks passed"}


def test_tampered_node_fails_is_quarantined_and_gets_no_key(pki, fleet_service, tmp_path):
    from obelisk.tpm import device

    svc = fleet_service
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = make_node(tpm, tmp_path / "n", svc.url, pki)
        node.register()
        svc.operator(pki).approve(node.node)
        assert node.round()["status"] == "trusted"
        # a trusted node gets its /var key, the same one each time, after a fresh round each time
        key = node.key()
        assert len(key) == 32 and node.key() == key
        # stored wrapped, never in the clear
        dump = "".join(str(v) for row in _rows(svc, "SELECT * FROM node_keys") for v in row)
        assert key.hex() not in dump and _rows(svc, "SELECT released FROM node_keys") == [(2,)]
        # something measured that the IMA list does not show (as a file run behind the kernel's back would)
        device.extend_pcr(tpm.tcti, 10, b"an unlogged binary")
        # its key request is itself a round: it fails, and no key comes back
        with pytest.raises(FleetClientError, match="key refused: node is failed") as exc:
            node.key()
        assert exc.value.status == 403
        result = {"status": svc.fleet.nodes()[0]["status"],
                  "summary": [r for r in svc.operator(pki).history(node.node) if r["type"] == "attestation"][-1][
                      "summary"]}
        assert result["status"] == "failed" and "ima.pcr.10.sha256" in result["summary"]
        assert "attest.quote.signature" not in result["summary"]  # a genuine quote: what it shows is wrong
        # it stays wrong: the second failed round in a row quarantines the node, and only an operator lifts it
        assert node.round()["status"] == "quarantined"
        events = [(r["kind"], r["new_status"]) for r in svc.operator(pki).history(node.node) if r["type"] == "event"]
        assert events[-3:] == [("attestation-failed", "failed"), ("key-refused", "failed"),
                               ("auto-quarantine", "quarantined")]
        with pytest.raises(FleetClientError, match="key refused: node is quarantined"):
            node.key()
        assert _rows(svc, "SELECT released FROM node_keys") == [(2,)]
        assert svc.operator(pki).approve(node.node)["status"] == "approved"
        assert node.round()["status"] == "failed"
        from obelisk.fleet.report import bundle

        report = bundle(svc.operator(pki).latest(), svc.url).report
        assert report.failed and report.subject.kind == "fleet"
        assert [(f.target, f.observed) for f in report.findings if f.id == "fleet.node.status"] == [
            (node.node, "failed")]


def test_operator_certificate_of_another_ca_is_refused(pki, fleet_service, tmp_path):
    svc = fleet_service
    with pytest.raises(FleetClientError, match="TLS|Connection|EOF|reset"):
        svc.operator(pki, "rogue").nodes()
    # no certificate at all: the node endpoints answer, the operator's do not
    from obelisk.fleet.client import FleetClient

    with pytest.raises(FleetClientError, match="client certificate") as exc:
        FleetClient(svc.url, pki["ca"]).nodes()
    assert exc.value.status == 401
    assert svc.operator(pki).nodes() == []
    # refused actions are audited too, with who tried
    with pytest.raises(FleetClientError, match="no node") as exc:
        svc.operator(pki).approve("n0000")
    assert exc.value.status == 404
    assert [(r["subject"], r["action"], r["target"], r["outcome"]) for r in svc.operator(pki).audit()] == \
        [("CN=alice", "approve", "n0000", "refused")]


def test_manifest_signed_by_another_ca_is_refused(pki, fleet_service, tmp_path, obelisk_cli):
    svc = fleet_service
    rogue = signed_manifest(tmp_path / "rogue", pki["other"])
    env = {"OBELISK_FLEET_URL": svc.url, "OBELISK_FLEET_CA": pki["ca"],
           "OBELISK_FLEET_CERT": str(pki["operator"].cert), "OBELISK_FLEET_KEY": str(pki["operator"].key)}
    res = obelisk_cli("fleet", "image", "add", str(rogue), env=env)
    assert res.returncode == 1 and "does not chain to the customer CA" in res.stderr, res.stderr
    # a manifest changed after signing
    good = signed_manifest(tmp_path / "good", pki["keys"])
    good.write_bytes(good.read_bytes().replace(b'"n1"', b'"n2"', 1))
    res = obelisk_cli("fleet", "image", "add", str(good), env=env)
    assert res.returncode == 1 and "does not verify" in res.stderr, res.stderr
    assert [(r["action"], r["outcome"]) for r in svc.operator(pki).audit()] == [("image-add", "refused")] * 2
    with sqlite3.connect(svc.db) as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone() == (0,)


def test_registration_changes_nothing_before_the_tpm_answers(pki, fleet_service, tmp_path):
    """Someone with the node's EK public (not its TPM) registers it with their own AK and another image:
    the node keeps its AK and image; the node itself re-registering for the new image moves it."""
    from obelisk.tpm import device

    svc = fleet_service
    op = svc.operator(pki)
    op.add_image(str(signed_manifest(tmp_path / "v1", pki["keys"], "1")))
    op.add_image(str(signed_manifest(tmp_path / "v2", pki["keys"], "2")))
    with SoftwareTPM.start(tmp_path / "victim") as victim_tpm, SoftwareTPM.start(tmp_path / "thief") as thief_tpm:
        node = make_node(victim_tpm, tmp_path / "n", svc.url, pki)
        node.register()
        op.approve(node.node)
        assert node.round()["status"] == "trusted"
        victim = device.read_ak(victim_tpm.tcti)
        thief = device.create_keys(thief_tpm.tcti)
        answer = node.client.request("POST", "/v1/node/register", {
            "ek_public": victim.ek_public.hex(), "ak_public": thief.public.hex(), "image": "n1:2"})
        assert answer["node"] == node.node
        with pytest.raises(FleetClientError, match="not in the EK's TPM"):
            node.client.request("POST", "/v1/node/activate", {"challenge_id": answer["challenge_id"],
                                                              "secret": "11" * 32})
        assert [(n["image"], n["status"]) for n in op.nodes()] == [("n1:1", "trusted")]
        assert node.round()["passed"]  # still its own AK
        node.image = "n1:2"
        node.register()
        assert [n["image"] for n in op.nodes()] == ["n1:2"]
        kinds = [r["kind"] for r in op.history(node.node) if r["type"] == "event"]
        assert kinds[-1] == "image-changed" and "ak-changed" not in kinds
        # images: one a node runs, or that rounds were checked against, stays; an unused one can go
        with pytest.raises(FleetClientError, match="run by 1 node") as exc:
            op.remove_image("n1:2")
        assert exc.value.status == 409
        with pytest.raises(FleetClientError, match="attestation history"):
            op.remove_image("n1:1")
        op.add_image(str(signed_manifest(tmp_path / "v3", pki["keys"], "3")))
        assert op.remove_image("n1:3") == {"image": "n1:3", "removed": True}
        with pytest.raises(FleetClientError, match="no image") as exc:
            op.remove_image("n1:3")
        assert exc.value.status == 404
        assert [(r["action"], r["target"], r["outcome"]) for r in op.audit() if r["action"] == "image-remove"] == [
            ("image-remove", "n1:2", "refused"), ("image-remove", "n1:1", "refused"),
            ("image-remove", "n1:3", "ok"), ("image-remove", "n1:3", "refused")]


def test_an_allowlisted_ek_with_the_join_token_needs_no_approval(pki, tmp_path):
    import threading
    from pathlib import Path

    from obelisk.fleet import service
    from obelisk.fleet.server import make_server
    from obelisk.tpm import device

    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        device.create_keys(tpm.tcti)
        allowed = service.node_id_of(device.read_ak(tpm.tcti).ek_public)
        fleet = service.open_fleet(str(tmp_path / "f.db"), Path(pki["ca"]).read_bytes(),
                                   ek_allowlist=frozenset({allowed}), join_tokens=frozenset({"s3cret"}))
        server = make_server(fleet, "127.0.0.1", 0, cert=str(pki["server"].cert), key=str(pki["server"].key),
                             client_ca=pki["ca"], log=lambda _: None)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"https://127.0.0.1:{server.server_address[1]}"
            from obelisk.fleet.client import FleetClient

            FleetClient(url, pki["ca"], str(pki["operator"].cert), str(pki["operator"].key)).add_image(
                str(signed_manifest(tmp_path / "out", pki["keys"])))
            node = make_node(tpm, tmp_path / "n", url, pki)
            with pytest.raises(FleetClientError, match="no valid join token") as exc:
                node.register()
            assert exc.value.status == 403
            node.token = "s3cret-but-longer"
            with pytest.raises(FleetClientError, match="no valid join token"):
                node.register()
            node.token = "s3cret"
            assert node.register() == {"node": allowed, "status": "approved"}
            assert node.round()["status"] == "trusted"
            with pytest.raises(FleetClientError, match="not enabled"):  # this service has no --kek
                node.key()
        finally:
            server.shutdown()
            server.server_close()


def test_state_changes_are_posted_to_webhooks(pki, tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from pathlib import Path

    from obelisk.fleet import service
    from obelisk.fleet.server import make_server

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hooks = service.Webhooks([f"http://127.0.0.1:{hook.server_address[1]}/events"])
    fleet = service.open_fleet(str(tmp_path / "f.db"), Path(pki["ca"]).read_bytes(), webhooks=hooks)
    server = make_server(fleet, "127.0.0.1", 0, cert=str(pki["server"].cert), key=str(pki["server"].key),
                         client_ca=pki["ca"], log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        from obelisk.fleet.client import FleetClient

        op = FleetClient(url, pki["ca"], str(pki["operator"].cert), str(pki["operator"].key))
        op.add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
        with SoftwareTPM.start(tmp_path / "tpm") as tpm:
            node = make_node(tpm, tmp_path / "n", url, pki)
            node.register()
            op.approve(node.node)
            node.round()
            with pytest.raises(FleetClientError):
                op.approve(node.node)  # refused (trusted): no state change, no event
        hooks.close()
        assert [(e["node"], e["kind"], e["new_status"]) for e in received] == [
            (node.node, "registered", "pending"), (node.node, "ak-activated", "pending"),
            (node.node, "approve", "approved"), (node.node, "attested", "trusted")]
        assert {e["schema"] for e in received} == {"obelisk.fleet-event/1"}
    finally:
        server.shutdown()
        server.server_close()
        hook.shutdown()


def test_every_round_must_carry_the_nodes_scan_and_its_var(pki, fleet_service, tmp_path, monkeypatch):
    from obelisk.attest import evidence
    from obelisk.core import findings as fmt
    from obelisk.core.findings import Finding, Report, Status, Subject

    svc = fleet_service
    op = svc.operator(pki)
    op.add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))

    def last_findings(node) -> dict[str, str]:
        rounds = [r for r in op.history(node.node) if r["type"] == "attestation"]
        return {f["id"]: f["status"] for f in op.request("GET", f"/v1/attestations/{rounds[-1]['id']}")["findings"]}

    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = make_node(tpm, tmp_path / "n", svc.url, pki)
        node.register()
        op.approve(node.node)
        # with the node's scan (of an empty root: nothing to fail) its findings join the round's
        assert node.round()["passed"]
        found = last_findings(node)
        assert found["attest.node.var"] == "pass" and "fleet.node.scan" not in found
        # a round without a scan fails, naming it
        node.scan_root = None
        result = node.round()
        assert not result["passed"] and result["summary"] == "failed: fleet.node.scan"
        # a scan that fails a check fails the round
        failing = Report(findings=(Finding(id="cis-4.2.1", title="anonymous auth off", status=Status.FAIL),),
                         subject=Subject("node", "n"))
        nonce = node.nonce()
        ev = json.loads(node.collect(nonce))
        body = json.dumps({"schema": "obelisk.fleet-round/1", "evidence": ev,
                           "scan": json.loads(fmt.serialize(failing))}).encode()
        result = node.push(body)
        assert not result["passed"] and result["summary"] == "failed: cis-4.2.1"
        # /var on a tmpfs (its volume stayed locked) fails the round, whatever the scan says
        op.approve(node.node)  # two failed rounds quarantined it
        node.scan_root = str(tmp_path / "n" / "scan-root")
        monkeypatch.setattr(evidence, "kernel_facts", lambda: {"release": "6.1", "var_mount": "tmpfs tmpfs"})
        result = node.round()
        assert not result["passed"] and result["summary"] == "failed: attest.node.var"
        assert last_findings(node)["attest.node.var"] == "fail"


def test_fleet_join_registers_and_attests_from_the_command_line(pki, fleet_service, tmp_path, obelisk_cli):
    from obelisk.tpm import device
    from tests.fleet.conftest import boot_node

    svc = fleet_service
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        device.create_keys(tpm.tcti)
        event_log, ima = boot_node(tpm, tmp_path / "n", pki["keys"])
        (tmp_path / "empty").mkdir()
        args = ("fleet", "join", "--url", svc.url, "--ca", pki["ca"], "--image", IMAGE, "--tcti", tpm.tcti,
                "--eventlog", str(event_log), "--ima", str(ima), "--rounds", "1", "--format", "json",
                "--scan-root", str(tmp_path / "empty"))
        res = obelisk_cli(*args)
        assert res.returncode == 1 and "pending" in res.stderr, res.stderr  # registered, waiting for approval
        node = json.loads(res.stdout)["node"]
        svc.operator(pki).approve(node)
        # a host is not a booted image: its /var is not the image's, and that is the only thing it fails
        res = obelisk_cli(*args)
        assert res.returncode == 1, res.stderr
        assert [(r["status"], r["summary"]) for r in json.loads(res.stdout)["rounds"]] == \
            [("failed", "failed: attest.node.var")]


def test_serve_with_an_unusable_database_fails_with_one_line(pki, tmp_path, obelisk_cli):
    res = obelisk_cli("fleet", "serve", "--db", str(tmp_path / "no-such-dir" / "fleet.db"), "--listen",
                      "127.0.0.1:0", "--ca", pki["ca"], "--cert", str(pki["server"].cert), "--key",
                      str(pki["server"].key))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "fleet database" in res.stderr, res.stderr


def test_rounds_walk_only_the_ima_entries_measured_since_the_last_trusted_round(pki, fleet_service, tmp_path):
    """Issue 17's incremental check in the fleet: a passing round keeps where the node's list was read to
    (its running PCR 10); the next round of the same boot reads only what follows, and still passes on
    the same grounds, while something measured but not logged still fails it."""
    import hashlib

    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA

    from obelisk.ima_policy import measurement_list as ml
    from obelisk.ima_policy import progress as imaprogress
    from obelisk.tpm import device
    from tests.fleet.conftest import AGENT_DIGEST, ima_signature

    svc = fleet_service
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = make_node(tpm, tmp_path / "n", svc.url, pki)
        node.register()
        svc.operator(pki).approve(node.node)
        assert node.round()["status"] == "trusted"
        first = imaprogress.parse(_rows(svc, "SELECT ima_progress FROM nodes")[0][0])
        assert first.entries == 2 and first.offset == len((tmp_path / "n" / "ima.bin").read_bytes())

        # the node runs the agent again (a new inode): one more entry, measured and logged
        ima = tmp_path / "n" / "ima.bin"
        entry = ml.make_entry("ima-sig", [ml.digest_field("sha256", AGENT_DIGEST), ml.name_field("/usr/bin/agent"),
                                          ima_signature(pki["keys"], AGENT_DIGEST)], number=3)
        with device.open_tpm(tpm.tcti) as esapi:
            d = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
            d.digest.sha256 = hashlib.sha256(entry.template_data).digest()
            esapi.pcr_extend(ESYS_TR.PCR10, TPML_DIGEST_VALUES([d]))
        ima.write_bytes(ima.read_bytes() + ml.serialize_binary([entry]))
        assert node.round()["status"] == "trusted"
        second = imaprogress.parse(_rows(svc, "SELECT ima_progress FROM nodes")[0][0])
        assert second.entries == 3 and second.offset == len(ima.read_bytes()) and second.offset > first.offset

        # measured but not logged: the new part of the list no longer replays to the quote
        device.extend_pcr(tpm.tcti, 10, b"an unlogged binary")
        assert node.round()["status"] == "failed"
        assert _rows(svc, "SELECT ima_progress FROM nodes") == [(None,)]  # a failed round keeps no position


@pytest.mark.parametrize(("content", "mode", "message"), [
    (bytes(range(32)), 0o644, "readable by others (mode 0644): chmod 600"),
    (b"short", 0o600, "5 bytes; 32 raw bytes or 64 hex digits expected"),
])
def test_serve_refuses_a_kek_others_can_read_or_of_the_wrong_size(pki, tmp_path, obelisk_cli, content, mode,
                                                                   message):
    kek = tmp_path / "kek"
    kek.write_bytes(content)
    kek.chmod(mode)
    res = obelisk_cli("fleet", "serve", "--db", str(tmp_path / "fleet.db"), "--listen", "127.0.0.1:0", "--ca",
                      pki["ca"], "--cert", str(pki["server"].cert), "--key", str(pki["server"].key),
                      "--kek", str(kek))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "fleet.db").exists()  # refused before the database is touched


def test_a_round_checks_the_rollback_floor_the_nodes_tpm_certifies(pki, fleet_service, tmp_path):
    """Issue 16 in the fleet: for an image with a rollback index, every regular round carries the node's
    rollback floor certified by its TPM over the round's nonce; a node without one, or whose floor is above
    the image's index, fails `attest.rollback`."""
    from dataclasses import replace

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from obelisk.image import manifest as mf
    from obelisk.signer.keys import load_certificate, load_signing_key
    from obelisk.tpm import rollback
    from tests.image.manifests import sample_manifest
    from tests.tpm.test_rollback import boot_image, image_approvals, public_der

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "disk policy")])
    now = _dt.datetime.now(_dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + _dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    sample = sample_manifest(image=mf.Image(name="n1", version="1"))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    data = mf.serialize(replace(sample, disk=replace(sample.disk, rollback_index=1, policy_certificate=pem)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(data)
    sig = mf.sign(data, load_signing_key(str(pki["keys"].ima_key)), load_certificate(pki["keys"].ima_cert))
    (out / "manifest.json.sig").write_bytes(mf.dumps(sig.to_json()))
    op = fleet_service.operator(pki)
    op.add_image(str(out / "manifest.json"))

    def rollback_of_last_round(node) -> dict:
        rounds = [r for r in op.history(node.node) if r["type"] == "attestation"]
        found = op.request("GET", f"/v1/attestations/{rounds[-1]['id']}")["findings"]
        return next(f for f in found if f["id"] == "attest.rollback")

    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = make_node(tpm, tmp_path / "n", fleet_service.url, pki)
        node.register()
        op.approve(node.node)
        result = node.round()  # no floor in this TPM: nothing certifies the image may open /var
        assert not result["passed"] and result["summary"] == "failed: attest.rollback"
        assert rollback_of_last_round(node)["status"] in ("fail", "error")
        op.approve(node.node)
        rollback.provision(public_der(key), tpm.tcti)
        rollback.advance(1, public_der(key), image_approvals(key, boot_image(tpm.tcti, b"1.0.0"), 1), tpm.tcti)
        assert node.round()["passed"]
        assert rollback_of_last_round(node)["status"] == "pass"
        # an upgrade raised the floor to 2: this image (index 1) is named below it
        rollback.advance(2, public_der(key), image_approvals(key, boot_image(tpm.tcti, b"1.0.1"), 2), tpm.tcti)
        result = node.round()
        assert not result["passed"] and result["summary"] == "failed: attest.rollback"
        assert "is 2, above this image's rollback index 1" in rollback_of_last_round(node)["detail"]
