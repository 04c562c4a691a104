"""The node agent over real mutual TLS on 127.0.0.1: who gets in, what it serves, replays refused."""

from __future__ import annotations

import json
import threading

import pytest

from obelisk.attest import agent as agentmod
from obelisk.attest.agent import AgentConfig, Services, make_server, parse_nonce
from obelisk.attest.agent_certs import issue
from obelisk.attest.agent_client import AgentEndpoint, AgentError, fresh_nonce


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from obelisk.signer.keygen import generate

    root = tmp_path_factory.mktemp("pki")
    customer = generate(root / "customer", "ecdsa-p256")
    other = generate(root / "other", "ecdsa-p256")
    server = issue(customer.ca_cert, customer.ca_key, root / "server", "node-1", server=True)
    client = issue(customer.ca_cert, customer.ca_key, root / "client", "verifier", server=False)
    rogue = issue(other.ca_cert, other.ca_key, root / "rogue", "verifier", server=False)
    rogue_server = issue(other.ca_cert, other.ca_key, root / "rogue-server", "node-1", server=True)
    return {"ca": customer.ca_cert, "other_ca": other.ca_cert, "server": server, "client": client, "rogue": rogue,
            "rogue_server": rogue_server}


def _evidence(nonce: bytes) -> str:
    return json.dumps({"format": "test", "nonce": nonce.hex()})


@pytest.fixture
def agent(pki):
    log: list[str] = []
    config = AgentConfig(cert=str(pki["server"].cert), key=str(pki["server"].key), client_ca=str(pki["ca"]),
                         host="127.0.0.1", port=0, image="test-node")
    services = Services(evidence=_evidence, kernel=lambda: {"release": "test"}, scan=None, image="test-node",
                        workloads=lambda: {"schema": "obelisk.workloads-report/1", "workloads": [{"name": "web"}]})
    server = make_server(config, services, log=log.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", log
    server.shutdown()
    server.server_close()


def _logged(log, text, timeout=10.0):
    """The server logs from its worker thread, possibly just after the client saw the outcome."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in log):
            return True
        time.sleep(0.05)
    return False


def _endpoint(url, pki, who="client", ca="ca"):
    return AgentEndpoint(url, ca=str(pki[ca]), cert=str(pki[who].cert), key=str(pki[who].key), timeout=10)


def test_client_of_the_customer_ca_is_served(agent, pki):
    url, log = agent
    ep = _endpoint(url, pki)
    assert json.loads(ep.get_ok("/v1/health")) == {"image": "test-node", "status": "ok"}
    assert json.loads(ep.get_ok("/v1/kernel")) == {"release": "test"}
    assert json.loads(ep.get_ok("/v1/workloads"))["workloads"] == [{"name": "web"}]
    assert _logged(log, "[verifier]")


def test_client_cert_from_another_ca_is_refused(agent, pki):
    url, log = agent
    with pytest.raises(AgentError):
        _endpoint(url, pki, who="rogue").get("/v1/health")
    assert _logged(log, "refused: TLS handshake failed")


def test_client_without_certificate_is_refused(agent, pki):
    import http.client
    import ssl

    url, log = agent
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        conn.request("GET", "/v1/health")
        conn.getresponse().read()
    assert _logged(log, "refused")


def test_verifier_refuses_an_agent_from_another_ca(pki):
    config = AgentConfig(cert=str(pki["rogue_server"].cert), key=str(pki["rogue_server"].key),
                         client_ca=str(pki["ca"]), host="127.0.0.1", port=0)
    server = make_server(config, Services(_evidence, dict, None), log=lambda _: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(AgentError, match="TLS refused"):
            _endpoint(f"https://127.0.0.1:{server.server_address[1]}", pki).get("/v1/health")
    finally:
        server.shutdown()
        server.server_close()


def test_replayed_nonce_is_rejected(agent, pki):
    url, _ = agent
    ep = _endpoint(url, pki)
    nonce = fresh_nonce()
    assert json.loads(ep.evidence(nonce))["nonce"] == nonce.hex()
    with pytest.raises(AgentError, match="409.*nonce already used"):
        ep.evidence(nonce)
    assert json.loads(ep.evidence(fresh_nonce()))["format"] == "test"


@pytest.mark.parametrize("query, words", [("", "nonce missing"), ("?nonce=zz", "not hex"),
                                           ("?nonce=0011", "shorter"), ("?nonce=" + "00" * 65, "longer")])
def test_bad_nonces(agent, pki, query, words):
    url, _ = agent
    status, body = _endpoint(url, pki).get("/v1/evidence" + query)
    assert status == 400 and words in json.loads(body)["error"]


def test_read_only(agent, pki):
    import http.client
    import ssl

    url, _ = agent
    ep = _endpoint(url, pki)
    port = int(url.rsplit(":", 1)[1])
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ep.context(), timeout=10)
        conn.request(method, "/v1/evidence", body=b"x")
        resp = conn.getresponse()
        assert resp.status == 405, method
        conn.close()
    assert ep.get("/etc/passwd")[0] == 404
    assert ep.get("/v1/scan")[0] == 404  # no scanner configured
    assert isinstance(ssl.OPENSSL_VERSION, str)


def test_nonce_ledger_is_bounded():
    ledger = agentmod.NonceLedger(capacity=3)
    nonces = [bytes([i]) * 16 for i in range(5)]
    assert all(ledger.claim(n) for n in nonces)
    assert not ledger.claim(nonces[4])
    assert ledger.claim(nonces[0])  # forgotten: the verifier's own nonce check still catches it


def test_parse_nonce():
    assert parse_nonce("ab" * 32) == b"\xab" * 32
    with pytest.raises(ValueError):
        parse_nonce("ab" * 8 + "g")


def test_config_file(tmp_path, pki):
    (tmp_path / "agent.json").write_text(json.dumps({"cert": str(pki["server"].cert), "key": str(pki["server"].key),
                                                     "client_ca": str(pki["ca"]), "port": 9443}))
    assert AgentConfig.load(tmp_path / "agent.json").port == 9443
    (tmp_path / "bad.json").write_text(json.dumps({"cert": "a", "key": "b", "client_ca": "c", "shell": True}))
    with pytest.raises(Exception, match="shell: unknown key"):
        AgentConfig.load(tmp_path / "bad.json")


def test_var_mount_and_its_finding():
    from obelisk.attest.agent_client import var_finding
    from obelisk.attest.evidence import var_mount
    from obelisk.core.findings import Status

    mounts = ("/dev/vda / squashfs ro 0 0\n/dev/mapper/obelisk-var /var ext2 rw,nosuid,nodev 0 0\n"
              "tmpfs /run tmpfs rw 0 0\n")
    assert var_mount(mounts) == "/dev/mapper/obelisk-var ext2"
    assert var_mount("tmpfs /var tmpfs rw 0 0\n") == "tmpfs tmpfs"
    assert var_mount("/dev/vda / squashfs ro 0 0\n") == ""
    from dataclasses import replace

    from tests.image.manifests import sample_manifest

    plain = sample_manifest()
    luks = replace(plain, disk=replace(plain.disk, var="luks2"))
    assert var_finding(luks, "/dev/mapper/obelisk-var ext2").status is Status.PASS
    locked = var_finding(luks, "tmpfs tmpfs")
    assert locked.status is Status.FAIL and "stayed locked" in locked.detail
    assert var_finding(luks, None).status is Status.ERROR
    assert var_finding(plain, "/dev/vdb ext2").status is Status.PASS
    assert var_finding(plain, "/dev/mapper/x ext2").status is Status.PASS
    assert var_finding(plain, "tmpfs tmpfs").status is Status.FAIL
