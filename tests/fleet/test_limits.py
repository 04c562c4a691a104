"""What keeps the unauthenticated node side cheap and bounded: rate limits (429 + Retry-After), nonces
that cost nothing to issue but are single use and expire, kept-alive connections with an idle limit, and
the clean-up of stale challenges and registrations that never finished."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import http.client
import json
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from obelisk.attest import akrecord
from obelisk.attest import evidence as evmod
from obelisk.fleet import db, nonce, server, service
from obelisk.fleet.client import FleetClient, FleetClientError
from obelisk.fleet.ratelimit import Limit, RateLimiter
from obelisk.tpm import quote as q
from tests.attest import synth
from tests.fleet.conftest import signed_manifest

# ---- rate limits ---------------------------------------------------------------------------------------

def test_a_bucket_refuses_past_its_burst_and_refills_at_its_rate():
    now = [100.0]
    limiter = RateLimiter(Limit(rate=2, burst=3), Limit(rate=100, burst=4), clock=lambda: now[0])
    assert [limiter.admit("10.0.0.1") for _ in range(3)] == [None, None, None]
    wait = limiter.admit("10.0.0.1")
    assert wait == pytest.approx(0.5)  # one token back after 1/rate seconds
    assert limiter.admit("10.0.0.2") is None  # another source has its own bucket...
    assert limiter.admit("10.0.0.3") is not None  # ...but the global one (burst 4) is empty now
    now[0] += 0.5
    assert limiter.admit("10.0.0.1") is None
    assert limiter.admit("10.0.0.1") is not None


def test_limits_parse_from_the_command_line():
    assert Limit.parse("20", "--node-rate") == Limit(20, 40)
    assert Limit.parse("5,7", "--node-rate") == Limit(5, 7)
    assert Limit.parse("0", "--node-rate") is None and Limit.parse("off", "--node-rate") is None
    from obelisk.core.errors import InputError

    for bad in ("fast", "-1", "1,0", "nan"):
        with pytest.raises(InputError, match="--node-rate"):
            Limit.parse(bad, "--node-rate")


@pytest.fixture
def limited_service(pki, tmp_path):
    fleet = service.open_fleet(str(tmp_path / "fleet.db"), Path(pki["ca"]).read_bytes())
    # refills one request every 5 s: a slow machine answering 12 requests cannot refill the burst meanwhile
    limiter = RateLimiter(Limit(rate=0.2, burst=5), None)
    srv = server.make_server(fleet, "127.0.0.1", 0, cert=str(pki["server"].cert), key=str(pki["server"].key),
                             client_ca=pki["ca"], log=lambda _line: None, limiter=limiter)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _post(port: int, ca: str, path: str, body: dict) -> http.client.HTTPResponse:
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_a_flood_of_node_requests_gets_429_with_retry_after(pki, limited_service):
    port = limited_service.server_address[1]
    answers = [_post(port, pki["ca"], "/v1/node/nonce", {"node": "nobody"}) for _ in range(12)]
    codes = [a.status for a in answers]
    assert codes[:5] == [404] * 5  # the burst goes through (and is told the node is unknown)
    assert 429 in codes[5:]
    refused = next(a for a in answers if a.status == 429)
    assert int(refused.getheader("Retry-After")) >= 1
    # operators are not limited by it (their certificate is checked at the handshake)
    operator = FleetClient(f"https://127.0.0.1:{port}", pki["ca"], str(pki["operator"].cert),
                           str(pki["operator"].key), timeout=30)
    assert operator.nodes() == []
    with pytest.raises(FleetClientError) as exc:
        FleetClient(f"https://127.0.0.1:{port}", pki["ca"], timeout=30).request("POST", "/v1/node/register", {})
    assert exc.value.status == 429


# ---- keep-alive ----------------------------------------------------------------------------------------

def test_a_client_reuses_its_connection_and_survives_the_servers_idle_close(pki, fleet_service, monkeypatch):
    client = fleet_service.operator(pki)
    client.nodes()
    (address, first, _), = client.pool._conns
    client.nodes()
    (_, second, _), = client.pool._conns
    assert second is first and second.sock is not None  # one TLS connection for both requests
    # the server closes a connection idle longer than its limit; the client's next request opens a new one
    monkeypatch.setattr(server, "KEEPALIVE_IDLE", 0.2)
    client.nodes()  # this connection now waits 0.2 s at most
    client.pool.idle = 60.0  # the client would reuse it: it must notice the close and send again
    time.sleep(1.0)
    assert client.nodes() == []


def test_a_new_connection_resumes_the_tls_session_and_the_operator_stays_known(pki, fleet_service):
    client = fleet_service.operator(pki)
    client.nodes()
    (_, first, _), = client.pool._conns
    assert not first.tls.session_reused  # the first connection: a full handshake
    client.pool.close()  # the connection goes; its session stays for the next one
    assert client.nodes() == []  # 200, not 401: the resumed session carries the operator's certificate
    (_, second, _), = client.pool._conns
    assert second is not first and second.tls.session_reused
    with pytest.raises(FleetClientError):  # audited with the subject of the certificate the session carries
        client.approve("nobody")
    subject = x509.load_pem_x509_certificate(Path(pki["operator"].cert).read_bytes()).subject.rfc4514_string()
    assert fleet_service.fleet.audit()[-1]["subject"] == subject


# ---- nonces --------------------------------------------------------------------------------------------

def test_a_nonce_names_its_node_and_time_and_cannot_be_forged():
    key = bytes(32)
    at = _dt.datetime(2026, 12, 2, 10, 0, tzinfo=_dt.UTC)
    value = nonce.issue(key, "n1", at)
    assert len(value) == nonce.SIZE and nonce.issued_at(key, "n1", value) == at
    assert nonce.issue(key, "n1", at) != value  # random part
    assert nonce.issued_at(key, "n2", value) is None  # another node's
    assert nonce.issued_at(bytes([1]) * 32, "n1", value) is None  # another database's key
    for i in (0, 13, 31):
        flipped = bytearray(value)
        flipped[i] ^= 1
        assert nonce.issued_at(key, "n1", bytes(flipped)) is None
    assert nonce.issued_at(key, "n1", value[:-1]) is None


@pytest.fixture
def synthetic(pki, tmp_path):
    """A fleet on SQLite with one image and one approved node whose AK is in software (no HTTP)."""
    fleet = service.open_fleet(str(tmp_path / "fleet.db"), Path(pki["ca"]).read_bytes())
    manifest = signed_manifest(tmp_path / "out", pki["keys"])
    fleet.add_image(manifest.read_bytes(), (manifest.parent / "manifest.json.sig").read_bytes(), "CN=test")
    ak = synth.make_ak("ecc", label="limits")
    with fleet.sessions.begin() as s:
        image = s.query(db.Image).one()
        for node_id in ("n-soft", "n-other"):
            s.add(db.Node(id=node_id, ek_public=node_id + (ak.record.ek_public or b"").hex(),
                          ak_record=akrecord.serialize(dataclasses.replace(ak.record, activated=True)),
                          image_id=image.id, status="approved", hostname=node_id, registered_at=db.utcnow()))
    return fleet, ak


def _bundle(ak, value: bytes, minute: int = 0) -> bytes:
    clock = q.ClockInfo(clock=1_000_000 + 60_000 * minute, reset_count=1, restart_count=0, safe=True)
    boot = synth.boot()
    return evmod.serialize(synth.evidence(ak, boot, quote=synth.attest(ak, boot.pcrs, nonce=value, clock=clock),
                                          nonce=value)).encode()


def test_round_nonces_are_single_use_per_node_and_expire(synthetic):
    fleet, ak = synthetic
    value = fleet.issue_nonce("n-soft")
    with fleet.sessions() as s:  # issuing stored nothing
        assert s.query(db.Nonce).count() == 0
    with pytest.raises(service.Forbidden, match="not over a nonce this service issued to this node"):
        fleet.submit("n-other", _bundle(ak, value))
    fleet.submit("n-soft", _bundle(ak, value))
    with pytest.raises(service.Conflict, match="already used"):
        fleet.submit("n-soft", _bundle(ak, value, minute=1))
    history = [r for r in fleet.history("n-soft") if r["type"] == "attestation"]
    assert [r["nonce"] for r in history] == [value.hex()]
    stale = fleet.issue_nonce("n-soft")
    later = fleet.now() + service.NONCE_TTL + _dt.timedelta(seconds=2)
    fleet.now = lambda: later
    with pytest.raises(service.Forbidden, match="expired"):
        fleet.submit("n-soft", _bundle(ak, stale, minute=2))
    # a nonce issued by an older `serve` (a stored row, before migration 0004) is still honoured, once
    legacy = bytes(range(32))
    with fleet.sessions.begin() as s:
        s.add(db.Nonce(value=legacy.hex(), node_id="n-soft", purpose=service.ROUND, issued_at=later,
                       expires_at=later + service.NONCE_TTL))
    fleet.submit("n-soft", _bundle(ak, legacy, minute=3))
    with pytest.raises(service.Conflict, match="already used"):
        fleet.submit("n-soft", _bundle(ak, legacy, minute=4))
    assert len([r for r in fleet.history("n-soft") if r["type"] == "attestation"]) == 2


# ---- clean-up ------------------------------------------------------------------------------------------

def test_clean_up_removes_only_stale_challenges_and_unanswered_registrations(synthetic):
    fleet, ak = synthetic
    fleet.registration_timeout = 3600
    start = fleet.now()
    # a registration whose TPM never answers, and a round over a stored (legacy) nonce that is kept
    abandoned = fleet.register(synth.ek_public(), ak.record.public or b"", "n1:1")["node"]
    legacy = bytes(range(32))
    with fleet.sessions.begin() as s:
        s.add(db.Nonce(value=legacy.hex(), node_id="n-soft", purpose=service.ROUND, issued_at=start,
                       expires_at=start + service.NONCE_TTL))
        s.add(db.Nonce(value="ab" * 32, node_id="n-soft", purpose=service.ROUND, issued_at=start,
                       expires_at=start + service.NONCE_TTL))  # issued, never used
    fleet.submit("n-soft", _bundle(ak, legacy))

    # nothing is stale yet
    assert fleet.clean_up() == {"nonces": 0, "registrations": 0}
    # past the nonces' lifetime: the unused challenge and nonce go, the one a round used stays
    fleet.now = lambda: start + service.NONCE_TTL + _dt.timedelta(seconds=1)
    assert fleet.clean_up() == {"nonces": 2, "registrations": 0}
    # a fresh registration made now is kept when the old one's time is up
    fresh_ek = synth._tpm2b_public(synth._private_key("rsa", "fresh-ek").public_key(), synth.EK_ATTRIBUTES,
                                   symmetric="aes128cfb")
    fresh = fleet.register(fresh_ek, ak.record.public or b"", "n1:1")["node"]
    fleet.now = lambda: start + _dt.timedelta(seconds=3601)
    # the old registration goes with its challenge; the fresh one stays, its expired challenge does not
    assert fleet.clean_up() == {"nonces": 1, "registrations": 1}
    ids = {n["id"] for n in fleet.nodes()}
    assert abandoned not in ids and {"n-soft", "n-other", fresh} <= ids
    with fleet.sessions() as s:
        assert [n.value for n in s.query(db.Nonce)] == [legacy.hex()]
        assert s.query(db.Attestation).count() == 1
        assert [e.kind for e in s.query(db.Event).filter_by(node_id=abandoned)] == ["registered",
                                                                                   "registration-expired"]
