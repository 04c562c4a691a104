"""The fleet service's callers: operators (mTLS, client certificate of the customer CA) and nodes (TPM).

`FleetClient` speaks HTTPS to `fleet serve`; the service's certificate must chain to the customer CA.
`NodeAgent` is the node's side: registration (present EK, EK certificate and AK; answer the credential
challenge with TPM2_ActivateCredential) and rounds (ask for a nonce, quote over it, push the evidence
with the node's CIS/STIG scan: scanned every round, its body sent only when the service does not hold a
scan with its digest). The node only ever connects out: nodes behind NAT with outbound HTTPS work.
"""

from __future__ import annotations

import base64
import functools
import json
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from obelisk.core import https
from obelisk.core.errors import InputError, ObeliskError
from obelisk.core.inputs import read_bounded
from obelisk.fleet import scan_digest

if TYPE_CHECKING:
    from obelisk.attest.evidence import Evidence

MAX_RESPONSE = 64 * 1024 * 1024
ROUND_SCHEMA = "obelisk.fleet-round/1"
SCAN_NEEDED = 412  # the service holds no scan with the digest a round named: send the round again with it


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


@dataclass(frozen=True)
class RoundStart:
    """The service's answer to a node that starts a round."""

    nonce: bytes
    held_scan: str | None  # sha256 of the scan the service holds for this node; None: none
    named_scans: bool  # the service takes a scan named by its digest (an older one answers no scan_sha256)


@dataclass(frozen=True)
class Collected:
    """What a node collected for one round: its evidence over the nonce and its scan (obelisk.report/1)."""

    evidence: Evidence
    scan: dict[str, Any] | None

    def body(self, held_scan: str | None = None, named_scans: bool = False) -> bytes:
        """The round's body: the scan's body unless `held_scan` is its digest (then its digest alone)."""
        from obelisk.attest import evidence

        if self.scan is None:
            return evidence.serialize(self.evidence).encode()
        if not named_scans:
            return json.dumps({"schema": ROUND_SCHEMA, "evidence": self.evidence.to_json(), "scan": self.scan}).encode()
        digest = scan_digest.digest(self.scan)
        return json.dumps({"schema": ROUND_SCHEMA, "evidence": self.evidence.to_json(), "scan_sha256": digest,
                           "scan": None if digest == held_scan else self.scan}).encode()


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

    def start(self) -> RoundStart:
        """A fresh nonce, and the digest of the scan the service holds for this node."""
        if self.node is None:
            raise InputError("register first")
        answer = self.client.request("POST", "/v1/node/nonce", {"node": self.node})
        held = answer.get("scan_sha256")
        return RoundStart(bytes.fromhex(answer["nonce"]), held if isinstance(held, str) else None,
                          "scan_sha256" in answer)

    def nonce(self) -> bytes:
        return self.start().nonce

    def gather(self, nonce: bytes) -> Collected:
        """The evidence over `nonce` and, with `scan_root`, a scan made now (every round scans anew)."""
        from obelisk.attest import evidence

        ev = evidence.collect(nonce, self.tcti, event_log_path=self.event_log, ima_path=self.ima_log)
        if self.scan_root is None:
            return Collected(ev, None)
        from obelisk.cis_checks.scan import scan

        return Collected(ev, scan(self.scan_root).to_json())

    def collect(self, nonce: bytes) -> bytes:
        """A round's body with the whole scan (the key round's, and any service's)."""
        return self.gather(nonce).body()

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
        """One attestation round: a fresh nonce from the service, a quote over it and a scan made now, the
        verdict. The scan's body goes only when the service holds no scan with its digest; if the service
        no longer holds the one it named (SCAN_NEEDED: nothing was recorded), the same round goes once more
        with the body."""
        start = self.start()
        collected = self.gather(start.nonce)
        try:
            return self.push(collected.body(start.held_scan, start.named_scans))
        except FleetClientError as exc:
            if exc.status != SCAN_NEEDED or collected.scan is None:
                raise
            return self.push(collected.body(None, start.named_scans))
