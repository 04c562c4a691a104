"""Who may ask the node agent for what: roles read from the client certificate's extended key usage.

A client certificate must chain to the customer CA (checked by OpenSSL during the handshake) and
carry the `clientAuth` EKU; its roles are obelisk's role EKUs next to it (`signer/usage.py`):

    reader    the evidence reader: health, evidence, kernel facts, scan, workloads
    operator  changes a node (issue 13's upgrade API); does NOT imply reader

The roles are independent on purpose: a verifier's key must never upgrade a node, and an upgrade
pipeline's key needs no evidence. A certificate may carry both. Every endpoint names the one role it
needs in `ENDPOINT_ROLES`; a path missing from the table needs `reader` (nothing is open to a
certificate without a role).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from obelisk.signer import usage

READER, OPERATOR = "reader", "operator"

# (method, path) -> the role it needs; paths not listed need READER
ENDPOINT_ROLES: Mapping[tuple[str, str], str] = {
    ("GET", "/v1/health"): READER,
    ("GET", "/v1/evidence"): READER,
    ("GET", "/v1/kernel"): READER,
    ("GET", "/v1/scan"): READER,
    ("GET", "/v1/workloads"): READER,
    ("GET", "/v1/upgrade"): OPERATOR,  # the slots and the last trial (attest/upgrade.py)
    ("POST", "/v1/upgrade"): OPERATOR,  # writes the inactive slot and reboots into it
}


@dataclass(frozen=True)
class Client:
    """What the agent knows about a caller once its certificate chained to the customer CA."""

    name: str  # the certificate's common name, for the log
    client_auth: bool  # the EKU says it is a TLS client certificate
    roles: frozenset[str]


class Forbidden(Exception):
    """The client's certificate does not allow the request; the message says what it lacks."""


def client_of(der: bytes) -> Client:
    """The client described by a DER certificate (as `SSLSocket.getpeercert(binary_form=True)` gives it)."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(names[0].value) if names else "?"
    try:
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        ekus = set()
    roles = frozenset(role for role, oid in usage.ROLES.items() if oid in ekus)
    return Client(name=name, client_auth=usage.CLIENT_AUTH in ekus, roles=roles)


def roles_of(der: bytes) -> frozenset[str]:
    """The agent roles a client certificate grants; none unless it is also a clientAuth certificate."""
    client = client_of(der)
    return client.roles if client.client_auth else frozenset()


def authorize(client: Client, method: str, path: str,
              table: Mapping[tuple[str, str], str] = ENDPOINT_ROLES) -> None:
    """Raise Forbidden unless the client may make this request."""
    if not client.client_auth:
        raise Forbidden("client certificate lacks the clientAuth extended key usage")
    needed = table.get((method, path), READER)
    if needed not in client.roles:
        held = ", ".join(sorted(client.roles)) or "none"
        raise Forbidden(f"{method} {path} needs the {needed} role (certificate holds: {held})")
