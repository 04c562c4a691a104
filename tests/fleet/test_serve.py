"""`obelisk fleet serve` as separate processes sharing one database: migrations at start, and a round
started on one process (nonce issued) finished on another after the first was killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from obelisk.fleet.client import FleetClient, FleetClientError
from obelisk.tpm.swtpm import SoftwareTPM
from tests.fleet.conftest import make_node, signed_manifest, start_serve


def _operator(pki, url: str) -> FleetClient:
    return FleetClient(url, pki["ca"], str(pki["operator"].cert), str(pki["operator"].key), timeout=30)


@pytest.mark.swtpm
def test_two_serve_processes_share_the_database_and_survive_sigkill(pki, tmp_path, db_url):
    two_processes_flow(pki, tmp_path, db_url)


def two_processes_flow(pki, tmp_path, db: str) -> None:
    from sqlalchemy import create_engine, text

    from obelisk.fleet.db import database_url

    one = start_serve(pki, db, tmp_path / "one.log")
    two = start_serve(pki, db, tmp_path / "two.log")
    extra: list = []
    try:
        engine = create_engine(database_url(db))
        with engine.connect() as conn:  # migrated by `serve`, once
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [("0005",)]
        engine.dispose()
        _operator(pki, one.url).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
        with SoftwareTPM.start(tmp_path / "tpm") as tpm:
            node = make_node(tpm, tmp_path / "n", one.url, pki)
            node.register()
            _operator(pki, two.url).approve(node.node)  # approved on the other process
            assert node.round()["status"] == "trusted"
            # round 2 starts on process one (its nonce), which dies; process two finishes it
            nonce = node.nonce()
            bundle = node.collect(nonce)
            one.process.send_signal(signal.SIGKILL)
            one.process.wait(timeout=30)
            with pytest.raises(FleetClientError):
                node.push(bundle)
            node.client = FleetClient(two.url, pki["ca"], timeout=30)
            assert node.push(bundle)["status"] == "trusted"
            with pytest.raises(FleetClientError, match="already used"):
                node.push(bundle)
            assert node.round()["passed"]
            rounds = [r for r in _operator(pki, two.url).history(node.node) if r["type"] == "attestation"]
            assert len(rounds) == 3 and len({r["nonce"] for r in rounds}) == 3 and nonce.hex() in \
                {r["nonce"] for r in rounds}

            # SIGKILL while a third process is verifying the evidence: whether it died before or after its
            # commit, the node's retry on process two ends with the round recorded exactly once
            three = start_serve(pki, db, tmp_path / "three.log")
            extra.append(three)
            node.client = FleetClient(three.url, pki["ca"], timeout=30)
            nonce = node.nonce()
            bundle = node.collect(nonce)
            outcome: list[object] = []
            sender = threading.Thread(target=lambda: outcome.append(_attempt(node, bundle)))
            sender.start()
            time.sleep(0.05)
            three.process.send_signal(signal.SIGKILL)
            three.process.wait(timeout=30)
            sender.join(timeout=60)
            node.client = FleetClient(two.url, pki["ca"], timeout=30)
            retry = _attempt(node, bundle)
            assert retry == "already used" or (isinstance(retry, dict) and retry["passed"]), (outcome, retry)
            rounds = [r for r in _operator(pki, two.url).history(node.node) if r["type"] == "attestation"]
            assert [r["nonce"] for r in rounds].count(nonce.hex()) == 1 and len(rounds) == 4
        nodes = _operator(pki, two.url).nodes()
        assert [(n["id"], n["status"]) for n in nodes] == [(node.node, "trusted")]
        assert json.loads(json.dumps(_operator(pki, two.url).audit()))[0]["subject"] == "CN=alice"
    finally:
        for p in (one, two, *extra):
            if p.process.poll() is None:
                p.process.terminate()
                p.process.wait(timeout=30)
    assert "listening on 127.0.0.1" in (tmp_path / "two.log").read_text()


def _attempt(node, bundle: bytes) -> object:
    """The service's answer to pushing `bundle`, or "already used", or the transport error's text."""
    try:
        return node.push(bundle)
    except FleetClientError as exc:
        return "already used" if "already used" in str(exc) else str(exc)
