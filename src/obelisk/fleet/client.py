"""The fleet service's callers: operators (mTLS, client certificate of the customer CA) and nodes (TPM).

`FleetClient` speaks HTTPS to `fleet serve`; the service's certificate must chain to the customer CA.
`NodeAgent` is the node's side: registration (present EK, EK certificate and AK; answer the credential
challenge with TPM2_ActivateCredential) and rounds (ask for a nonce, quote over it, push the evidence).
The node only ever connects out: nodes behind NAT with outbound HTTPS work.
"""

from __future__ import annotations

import base64
import functools
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from obelisk.core import https
from obelisk.core.errors import InputError, ObeliskError
from obelisk.core.inputs import read_bounded

MAX_RESPONSE = 64 * 1024 * 1024


class FleetClientError(ObeliskError):
    """The service could not be reached, or refused the request (its reason is in the message)."""

    exit_code = 1

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FleetClient:
    url: str  # https://HOST:PORT
    ca: str  # the customer CA: the service's certificate must chain to it
    cert: str | None = None  # operator: client certificate (nodes have none)
    key: str | None = None
    timeout: float = 60.0
    # kept-alive connections: a round's nonce and evidence go over one TLS handshake
    pool: https.ConnectionPool = field(default_factory=https.ConnectionPool, compare=False, repr=False)

    def context(self) -> ssl.SSLContext:
        return self._context

    @functools.cached_property
    def _context(self) -> ssl.SSLContext:
        return https.client_context(self.ca, self.cert, self.key)

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer; FleetClientError with the service's reason on anything but 200."""
        status, raw = self.exchange(method, path, body)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise FleetClientError(f"{self.url}{path}: answered {status} without JSON", status) from None
        if status != 200:
            reason = doc.get("error", "") if isinstance(doc, dict) else ""
            raise FleetClientError(f"fleet refused {method} {path.split('?')[0]} ({status}): {reason}", status)
        return doc

    def exchange(self, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> tuple[int, bytes]:
        """(HTTP status, body) of one request."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        try:
            return https.exchange(self.url, self.context(), method, path, body=data,
                                  headers={"Content-Type": "application/json"}, timeout=self.timeout,
                                  default_port=443, limit=MAX_RESPONSE, what="fleet", pool=self.pool)
        except https.TransportError as exc:
            raise FleetClientError(str(exc)) from None

    # ---- operators ----
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/nodes"))

    def history(self, node: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/v1/nodes/{quote(node, safe='')}/history"))

    def remove_image(self, image: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/images/{quote(image, safe='')}/remove", {}))

    def approve(self, node: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/nodes/{quote(node, safe='')}/approve", {}))

    def quarantine(self, node: str, reason: str = "") -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/nodes/{quote(node, safe='')}/quarantine", {"reason": reason}))

    def latest(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/report"))

    def audit(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/audit"))

    def add_image(self, manifest: str, signature: str | None = None) -> dict[str, Any]:
        """Send OUT/manifest.json and its signature (manifest.json.sig beside it) for registration."""
        import os

        from obelisk.image import manifest as mf

        if signature is None:
            signature = manifest + ".sig"
            if not os.path.exists(signature):
                signature = os.path.join(os.path.dirname(manifest), mf.SIGNATURE)
        data = read_bounded(manifest, "image manifest", 1 << 30)
        try:
            sig = read_bounded(signature, "manifest signature", 1 << 20)
        except InputError:
            raise InputError("no manifest signature beside it (manifest.json.sig): only signed manifests are "
                             "accepted", source=manifest) from None
        return dict(self.request("POST", "/v1/images", {"manifest": base64.b64encode(data).decode(),
                                                        "signature": base64.b64encode(sig).decode()}))


@dataclass
class NodeAgent:
    """A node's fleet client: its TPM (EK and AK at their persistent handles) and what it collects."""

    client: FleetClient
    image: str  # NAME:VERSION of the image the node runs
    tcti: str | None = None
    event_log: str | None = "/sys/kernel/security/tpm0/binary_bios_measurements"
    ima_log: str | None = None  # None: the kernel's list under securityfs
    scan_root: str | None = None  # CIS/STIG scan of this root sent with each round; None: no scan
    token: str = ""  # the join token, when the service asks for one
    node: str | None = None  # set by register

    def register(self, hostname: str = "") -> dict[str, Any]:
        """Present EK (+certificate) and AK; answer the credential challenge; returns {"node", "status"}."""
        from obelisk.attest import credential
        from obelisk.tpm import device as tpm

        info = tpm.read_ak(self.tcti)
        answer = self.client.request("POST", "/v1/node/register", {
            "ek_public": info.ek_public.hex(), "ak_public": info.public.hex(), "image": self.image,
            "ek_certificate": info.ek_certificate.hex() if info.ek_certificate else None, "hostname": hostname,
            "token": self.token})
        challenge = credential.parse(json.dumps(answer["challenge"]).encode(), "fleet registration challenge")
        secret = credential.activate(challenge, self.tcti, info.handle)
        result = self.client.request("POST", "/v1/node/activate",
                                     {"challenge_id": answer["challenge_id"], "secret": secret.hex()})
        self.node = str(result["node"])
        return dict(result)

    def nonce(self) -> bytes:
        if self.node is None:
            raise InputError("register first")
        return bytes.fromhex(self.client.request("POST", "/v1/node/nonce", {"node": self.node})["nonce"])

    def collect(self, nonce: bytes) -> bytes:
        from obelisk.attest import evidence

        ev = evidence.collect(nonce, self.tcti, event_log_path=self.event_log, ima_path=self.ima_log)
        if self.scan_root is None:
            return evidence.serialize(ev).encode()
        from obelisk.cis_checks.scan import scan

        return json.dumps({"schema": "obelisk.fleet-round/1", "evidence": ev.to_json(),
                           "scan": scan(self.scan_root).to_json()}).encode()

    def push(self, bundle: bytes) -> dict[str, Any]:
        if self.node is None:
            raise InputError("register first")
        return dict(self.client.request("POST", f"/v1/node/evidence?node={quote(self.node, safe='')}", bundle))

    def key(self) -> bytes:
        """The node's /var key: a round over a fresh nonce that the service verifies before releasing it."""
        if self.node is None:
            raise InputError("register first")
        bundle = self.collect(self.nonce())
        answer = self.client.request("POST", f"/v1/node/key?node={quote(self.node, safe='')}", bundle)
        return bytes.fromhex(answer["key"])

    def round(self) -> dict[str, Any]:
        """One attestation round: a fresh nonce from the service, a quote over it, the verdict."""
        return self.push(self.collect(self.nonce()))
