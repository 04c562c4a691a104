"""Who may ask the agent for what: clientAuth and the reader/operator roles, from certificate to endpoint."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from obelisk.attest import roles
from obelisk.attest.agent import AgentConfig, Services, make_server
from obelisk.attest.agent_certs import IssuedCert, issue
from obelisk.attest.agent_client import AgentEndpoint, AgentError, fresh_nonce
from obelisk.signer import usage


def _ekus(path) -> set:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def _custom(ca, ca_key_path, out, ekus) -> IssuedCert:
    """A client certificate from the customer CA with exactly these EKUs (None: no EKU extension at all)."""
    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, out.name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if ekus is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True)
    (out / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "c.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return IssuedCert(out / "c.pem", out / "c.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from obelisk.signer.keygen import generate

    root = tmp_path_factory.mktemp("pki-roles")
    keys = generate(root / "customer", "ecdsa-p256")
    ca, ca_key = keys.ca_cert, keys.ca_key
    return {
        "keys": keys,
        "server": issue(ca, ca_key, root / "server", "node-1", server=True),
        "reader": issue(ca, ca_key, root / "reader", "verifier", server=False),
        "operator": issue(ca, ca_key, root / "operator", "upgrader", server=False, roles=("operator",)),
        "both": issue(ca, ca_key, root / "both", "admin", server=False, roles=("reader", "operator")),
        "disk-policy": IssuedCert(keys.policy_cert, keys.policy_key),
        "no-eku": _custom(ca, ca_key, root / "no-eku", None),
        "client-no-role": _custom(ca, ca_key, root / "client-no-role", [usage.CLIENT_AUTH]),
        "reader-no-client-auth": _custom(ca, ca_key, root / "reader-no-client-auth", [usage.EVIDENCE_READER]),
        "server-as-client": issue(ca, ca_key, root / "server-as-client", "node-2", server=True),
    }


@pytest.fixture(scope="module")
def agent(pki):
    log: list[str] = []
    config = AgentConfig(cert=str(pki["server"].cert), key=str(pki["server"].key), client_ca=str(pki["keys"].ca_cert),
                         host="127.0.0.1", port=0)
    services = Services(evidence=lambda n: json.dumps({"nonce": n.hex()}), kernel=lambda: {"release": "t"},
                        scan=None, image="node")
    server = make_server(config, services, log=log.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", log
    server.shutdown()
    server.server_close()


def _as(agent, pki, who) -> AgentEndpoint:
    url, _ = agent
    return AgentEndpoint(url, ca=str(pki["keys"].ca_cert), cert=str(pki[who].cert), key=str(pki[who].key),
                         timeout=10)


def _outcome(endpoint: AgentEndpoint, path: str) -> int | str:
    try:
        return endpoint.get(path)[0]
    except AgentError:
        return "refused"


# --- what each issued certificate is for ---------------------------------------------------------

def test_keys_generate_names_each_purpose(pki):
    keys = pki["keys"]
    assert _ekus(keys.ima_cert) == {usage.CODE_SIGNING}
    assert _ekus(keys.policy_cert) == {usage.DISK_POLICY}  # no clientAuth: it cannot be an agent client
    assert _ekus(pki["server"].cert) == {usage.SERVER_AUTH}
    assert _ekus(pki["reader"].cert) == {usage.CLIENT_AUTH, usage.EVIDENCE_READER}
    assert _ekus(pki["operator"].cert) == {usage.CLIENT_AUTH, usage.OPERATOR}
    assert _ekus(pki["both"].cert) == {usage.CLIENT_AUTH, usage.EVIDENCE_READER, usage.OPERATOR}


def test_roles_of_certificates(pki):
    def der(who):
        return x509.load_pem_x509_certificate(pki[who].cert.read_bytes()).public_bytes(serialization.Encoding.DER)

    assert roles.roles_of(der("reader")) == {"reader"}
    assert roles.roles_of(der("operator")) == {"operator"}  # operator does not imply reader
    assert roles.roles_of(der("both")) == {"reader", "operator"}
    for who in ("no-eku", "client-no-role", "reader-no-client-auth", "server-as-client", "disk-policy"):
        assert roles.roles_of(der(who)) == frozenset(), who


def test_issue_refuses_unknown_roles(pki):
    from obelisk.core.errors import InputError

    keys = pki["keys"]
    with pytest.raises(InputError, match="unknown role 'admin'"):
        issue(keys.ca_cert, keys.ca_key, keys.directory / "x", "x", server=False, roles=("admin",))
    with pytest.raises(InputError, match="at least one role"):
        issue(keys.ca_cert, keys.ca_key, keys.directory / "x", "x", server=False, roles=())


# --- the endpoint table ----------------------------------------------------------------------------

def test_evidence_endpoints_need_the_reader_role_and_upgrades_the_operator_role():
    assert {path for path, role in roles.ENDPOINT_ROLES.items() if role == roles.OPERATOR} == \
        {("GET", "/v1/upgrade"), ("POST", "/v1/upgrade")}
    assert roles.ENDPOINT_ROLES[("GET", "/v1/evidence")] == roles.READER
    assert roles.ENDPOINT_ROLES[("GET", "/v1/workloads")] == roles.READER  # a workload's output is node data


def test_an_operator_endpoint_refuses_a_reader():
    table = {**roles.ENDPOINT_ROLES, ("POST", "/v1/upgrade"): roles.OPERATOR}
    reader = roles.Client("verifier", client_auth=True, roles=frozenset({roles.READER}))
    operator = roles.Client("upgrader", client_auth=True, roles=frozenset({roles.OPERATOR}))
    with pytest.raises(roles.Forbidden, match="POST /v1/upgrade needs the operator role .*holds: reader"):
        roles.authorize(reader, "POST", "/v1/upgrade", table)
    roles.authorize(operator, "POST", "/v1/upgrade", table)
    with pytest.raises(roles.Forbidden, match="needs the reader role"):
        roles.authorize(operator, "GET", "/v1/evidence", table)
    roles.authorize(reader, "GET", "/v1/evidence", table)
    # a path not in the table needs the reader role: nothing is open to a certificate without one
    with pytest.raises(roles.Forbidden, match="reader"):
        roles.authorize(roles.Client("x", True, frozenset()), "GET", "/elsewhere", table)
    # the roles count only on a clientAuth certificate
    with pytest.raises(roles.Forbidden, match="clientAuth"):
        roles.authorize(roles.Client("x", False, frozenset({roles.READER, roles.OPERATOR})), "GET", "/v1/health",
                        table)


# --- over real mutual TLS --------------------------------------------------------------------------

def test_reader_fetches_evidence(agent, pki):
    ep = _as(agent, pki, "reader")
    nonce = fresh_nonce()
    assert json.loads(ep.evidence(nonce)) == {"nonce": nonce.hex()}
    assert _outcome(_as(agent, pki, "both"), "/v1/kernel") == 200


@pytest.mark.parametrize("who, where", [
    ("disk-policy", "tls"),  # `keys generate`'s disk-policy certificate: its EKU excludes TLS clients
    ("server-as-client", "tls"),  # serverAuth only: OpenSSL's purpose check refuses it as a client
    ("no-eku", "agent"),  # no EKU at all passes OpenSSL (any purpose); the agent refuses it
    ("client-no-role", "agent"),
    ("reader-no-client-auth", "tls"),
    ("operator", "agent"),  # a role, but not the one evidence needs
])
def test_certificates_without_a_fitting_eku_are_refused(agent, pki, who, where):
    url, log = agent
    for path in ("/v1/evidence?nonce=" + fresh_nonce().hex(), "/v1/health", "/v1/kernel"):
        outcome = _outcome(_as(agent, pki, who), path)
        assert outcome == ("refused" if where == "tls" else 403), (who, path, outcome)
    if where == "agent":
        status, body = _as(agent, pki, who).get("/v1/evidence?nonce=" + fresh_nonce().hex())
        reason = json.loads(body)["error"]
        assert ("clientAuth" in reason) if who == "no-eku" else ("needs the reader role" in reason), reason
        assert not any("Traceback" in line for line in log)


def test_issue_cert_command_roles(obelisk_cli, pki, tmp_path):
    from obelisk.signer.keys import load_certificate

    keys = pki["keys"]
    base = ("attest", "issue-cert", "--ca", str(keys.ca_cert), "--ca-key", str(keys.ca_key))

    def der(path):
        return load_certificate(path).public_bytes(serialization.Encoding.DER)

    assert obelisk_cli(*base, "--out", str(tmp_path / "r"), "--name", "v").returncode == 0
    assert roles.roles_of(der(tmp_path / "r" / "client.pem")) == {"reader"}  # the default
    assert obelisk_cli(*base, "--out", str(tmp_path / "o"), "--role", "operator").returncode == 0
    assert roles.roles_of(der(tmp_path / "o" / "client.pem")) == {"operator"}
    assert obelisk_cli(*base, "--out", str(tmp_path / "b"), "--role", "operator", "--role", "reader").returncode == 0
    assert roles.roles_of(der(tmp_path / "b" / "client.pem")) == {"operator", "reader"}
    assert obelisk_cli(*base, "--out", str(tmp_path / "s"), "--server").returncode == 0
    assert _ekus(tmp_path / "s" / "agent.pem") == {usage.SERVER_AUTH}
    refused = obelisk_cli(*base, "--out", str(tmp_path / "x"), "--server", "--role", "operator")
    assert refused.returncode == 2 and "--role is for client certificates" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_every_obelisk_oid_arc_fits_the_nodes_asn1_parser():
    """Debian 12's python3-cryptography 38 (the node agent's) parses, in a certificate, OID arcs of at most four
    base-128 bytes: with the full 128-bit UUID arc the agent died at import, with 31 bits every client looked
    role-less (seen by booting the example). Keep every arc below 2^28."""
    from obelisk.signer import usage

    for oid in (usage.EVIDENCE_READER, usage.OPERATOR, usage.DISK_POLICY):
        assert all(int(arc) < 2**28 for arc in oid.dotted_string.split(".")), oid.dotted_string
