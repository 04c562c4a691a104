"""The verifier's side of the agent: mTLS requests, and `obelisk attest node` end to end.

A fresh random nonce per attestation; the agent's certificate must chain to the customer CA
and name the host; the evidence is verified by the attest component's verifier against the
image manifest, and the node's own CIS/STIG scan is added to the result.
"""

from __future__ import annotations

import json
import secrets
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obelisk.core import https
from obelisk.core.errors import InputError, ObeliskError
from obelisk.core.inputs import read_bounded

if TYPE_CHECKING:
    from obelisk.core.findings import Finding, Report
    from obelisk.image.manifest import Manifest

MAX_RESPONSE = 256 * 1024 * 1024


class AgentError(ObeliskError):
    """The agent could not be reached or refused the request."""

    exit_code = 1


@dataclass(frozen=True)
class AgentEndpoint:
    url: str
    ca: str  # customer CA: the agent's certificate must chain to it
    cert: str  # the verifier's client certificate
    key: str
    timeout: float = 30.0

    def context(self) -> ssl.SSLContext:
        return https.client_context(self.ca, self.cert, self.key)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            return https.exchange(self.url, self.context(), "GET", path, timeout=self.timeout, default_port=8443,
                                  limit=MAX_RESPONSE, what="agent")
        except https.TransportError as exc:
            raise AgentError(str(exc)) from None

    def get_ok(self, path: str) -> bytes:
        status, body = self.get(path)
        if status != 200:
            try:
                reason = json.loads(body).get("error", "")
            except (ValueError, AttributeError):
                reason = body[:200].decode(errors="replace")
            raise AgentError(f"{self.url}{path.split('?')[0]}: agent answered {status}: {reason}")
        return body

    def evidence(self, nonce: bytes) -> bytes:
        return self.get_ok(f"/v1/evidence?nonce={nonce.hex()}")


def fresh_nonce() -> bytes:
    return secrets.token_bytes(32)


def attest_node(endpoint: AgentEndpoint, *, manifest: str, ak: str, ek: str | None = None,
                state: str | None = None, scan: bool = True) -> Report:
    """Fetch and verify a node's evidence against the image manifest; returns a Report."""
    from dataclasses import replace

    from obelisk.attest import akrecord, ima_check, verifier_state, verify
    from obelisk.attest import evidence as evmod
    from obelisk.core import findings as report_format
    from obelisk.core.findings import Finding, Severity, Status, Subject
    from obelisk.image import manifest as manifestmod

    # The attest component checks the manifest's signature against the customer CA, its IMA
    # reference (every measured file, named by entry and path) and its predicted PCRs; the /var
    # finding and the report's subject read the same parsed bytes.
    refs = ima_check.load_references(manifest, endpoint.ca)
    if refs.manifest is None:
        raise InputError(f"not an obelisk image manifest (schema {manifestmod.SCHEMA})", source=manifest)
    m = refs.manifest
    ak_data = read_bounded(ak, "AK record", 1 << 20)
    record = akrecord.parse(ak_data, ak, ek_public=read_bounded(ek, "EK public", 1 << 16) if ek else None)
    nonce = fresh_nonce()
    bundle = evmod.parse(endpoint.evidence(nonce), source=f"{endpoint.url}/v1/evidence")
    saved = verifier_state.load(state, record)
    opts = verify.Options(nonce=nonce, ak=record, previous=saved.counters if saved else None,
                          source=f"{endpoint.url}/v1/evidence")
    verify.apply_references(opts, refs)
    ima = verifier_state.resume_ima(opts, refs, saved) if state else None  # only what the node measured since
    report, counters = verify.verify(bundle, opts)
    if state and ima is not None and counters is not None and not report.failed:
        verifier_state.save(state, record, verifier_state.after(counters, ima, refs))
    findings = list(report.findings)
    findings.append(var_finding(m, bundle.kernel.get("var_mount")))
    if m.disk.rollback_index is not None:
        findings.append(image_rollback_finding(m, bundle.rollback_floor, nonce, record.public_key))
    if scan:
        status, body = endpoint.get("/v1/scan")
        if status == 200:
            try:
                findings.extend(report_format.parse(body, f"{endpoint.url}/v1/scan").findings)
            except InputError as exc:
                findings.append(Finding(id="attest.node.scan", title="node CIS/STIG scan", status=Status.ERROR,
                                        detail=str(exc), benchmark="attestation"))
        else:
            findings.append(Finding(id="attest.node.scan", title="node CIS/STIG scan", status=Status.ERROR,
                                    severity=Severity.MEDIUM, detail=f"agent answered {status}",
                                    benchmark="attestation"))
    # Named for people (image and where it answered); attribute keys follow the `kind.field` form that
    # report bundles use, so an `image verify` report merged with this one adds nothing twice.
    name = f"{m.image.name} @ {endpoint.url}" if m.image.name else endpoint.url
    subject = Subject("node", name, digest=report.subject.digest,
                      attributes=tuple(sorted({**dict(report.subject.attributes), "url": endpoint.url,
                                               "image": m.image.name,
                                               "image.version": m.image.version}.items())))
    return replace(report, findings=tuple(findings), subject=subject, command="attest node")


def image_rollback_finding(manifest: Manifest, certified: tuple[bytes, bytes] | None, nonce: bytes,
                           ak_public_key: object) -> Finding:
    """attest.rollback for an image built with upgrade.rollback_index (attest/rollback_check.py)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from obelisk.attest.rollback_check import rollback_finding

    assert manifest.disk.rollback_index is not None and manifest.disk.policy_certificate is not None
    policy_key = x509.load_pem_x509_certificate(manifest.disk.policy_certificate.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return rollback_finding(certified, nonce=nonce, ak_public_key=ak_public_key, policy_key=policy_key,
                            rollback_index=manifest.disk.rollback_index)


def var_finding(manifest: Manifest, reported: str | None) -> Finding:
    """Is /var what the image says (an unlocked LUKS2 mapping, or the plain disk), as the node's agent reports?

    The report comes from the agent, whose code the quote and the IMA list vouch for; a node whose
    /var stayed locked runs on a tmpfs and fails here.
    """
    from obelisk.core.findings import Finding, Severity, Status

    wanted = manifest.disk.var
    title = "/var is the node's " + ("encrypted volume, unlocked by the TPM" if wanted == "luks2" else "own disk")
    if not reported:
        return Finding(id="attest.node.var", title=title, status=Status.ERROR, severity=Severity.HIGH,
                       benchmark="attestation", section="node", detail="the node did not report its /var mount")
    source, _, fstype = reported.partition(" ")
    ok = source.startswith("/dev/mapper/") if wanted == "luks2" else fstype == "ext2" and source.startswith("/dev/")
    detail = ""
    if not ok:
        detail = ("/var is a tmpfs: its volume stayed locked (see the node's console and PCR 11)" if fstype == "tmpfs"
                  else "/var is not where the image puts it")
    return Finding(id="attest.node.var", title=title, status=Status.PASS if ok else Status.FAIL,
                   severity=Severity.HIGH, benchmark="attestation", section="node", observed=reported,
                   expected="/dev/mapper/* (dm-crypt)" if wanted == "luks2" else "/dev/* ext2", detail=detail)


