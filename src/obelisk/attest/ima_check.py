"""Glue to the IMA and image components: the IMA list replayed to the quoted PCR 10 and checked
against the build's reference values; the build manifest's signature and predicted PCRs.

The list parser, replay, reference format and checks belong to `obelisk.ima_policy`; the signed
manifest to `obelisk.image.manifest`. This module only feeds them the quoted values and turns the
outcome into attestation findings.

`--reference` takes either the image build's signed `manifest.json` (parsed by
`obelisk.image.manifest`: its `ima_reference`, its `pcrs`, and `manifest.json.sig` beside it,
checked against `--cert CA`) or a bare IMA reference manifest / Keylime runtime policy (no
predictions, no signature).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from obelisk.core.errors import InputError
from obelisk.core.findings import Finding, Severity, Status
from obelisk.core.inputs import read_bounded
from obelisk.core.jsonsafe import load_json
from obelisk.tpm.prediction import PcrPrediction

MAX_REFERENCE_BYTES = 1 << 30

if TYPE_CHECKING:
    from obelisk.ima_policy.keyring import Keyring
    from obelisk.ima_policy.progress import ImaProgress
    from obelisk.ima_policy.reference import ReferenceManifest
    from obelisk.image.manifest import Manifest
    from obelisk.tpm.prediction import PcrPrediction


def _f(fid: str, title: str, status: Status, section: str = "ima", **kw: Any) -> Finding:
    return Finding(id=f"attest.{fid}", title=title, status=status, benchmark="attestation", section=section,
                   severity=kw.pop("severity", Severity.HIGH), **kw)


@dataclass
class References:
    ima_reference: ReferenceManifest | None = None
    predicted: dict[int, bytes] = field(default_factory=dict)
    boot_predictions: tuple[PcrPrediction, ...] = ()  # the manifest's pcrs.predictions (PCRs 4, 7, 11)
    keyring: Keyring | None = None
    findings: list[Finding] = field(default_factory=list)
    manifest: Manifest | None = None  # when the reference is the build's manifest
    # sha256 chained over every byte read to make these references (manifest, signature, CA): a verifier's
    # saved IMA position is used only with the references it was checked against
    fingerprint: str = ""

    def read(self, data: bytes) -> bytes:
        """`data`, counted into the fingerprint."""
        self.fingerprint = hashlib.sha256(self.fingerprint.encode() + hashlib.sha256(data).digest()).hexdigest()
        return data


def load_references(path: str | None, ca: str | None) -> References:
    refs = References()
    if not path:
        if ca:
            raise InputError("--cert is the CA of the signed reference manifest: give --reference too")
        return refs
    data = refs.read(read_bounded(path, "reference manifest", MAX_REFERENCE_BYTES))
    doc = load_json(data, path, max_bytes=MAX_REFERENCE_BYTES)
    from obelisk.image import manifest as mf

    if mf.is_manifest(doc):
        _image_manifest(refs, path, data, ca)
    else:
        if ca:
            raise InputError("--cert applies to a signed image manifest (manifest.json with manifest.json.sig); "
                             "this reference file carries no signature", source=path)
        from obelisk.ima_policy import reference
        refs.ima_reference = reference.load(path)
        refs.findings.append(_f("reference.signature", "Reference manifest is signed by the customer CA",
                                Status.SKIP, section="reference", detail="a bare IMA reference has no signature"))
    return refs


def _image_manifest(refs: References, path: str, data: bytes, ca: str | None) -> None:
    from obelisk.image import manifest as mf

    m = mf.parse(data, path)  # the manifest's own parser: strict, names the field it refuses
    refs.manifest = m
    title = "Reference manifest is signed by the customer CA"
    cert = None
    if ca is None:
        refs.findings.append(_f("reference.signature", title, Status.SKIP, section="reference",
                                detail="no --cert CA given: the build manifest's origin is not checked"))
    else:
        from cryptography import x509
        ca_data = refs.read(read_bounded(ca, "CA certificate", 1 << 20))
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_data)
        except ValueError as exc:
            raise InputError(f"not a PEM certificate: {' '.join(str(exc).split())[:200]}", source=ca) from None
        sig_path = path + ".sig" if os.path.exists(path + ".sig") else os.path.join(os.path.dirname(path), mf.SIGNATURE)
        sig: mf.ManifestSignature | None
        try:
            sig = mf.ManifestSignature.loads(refs.read(read_bounded(sig_path, "manifest signature", 1 << 20)),
                                             sig_path)
        except InputError as exc:
            if os.path.exists(sig_path) or "not found" not in str(exc):
                raise
            # missing: a failed check below
            sig = None
        if sig is None:
            refs.findings.append(_f("reference.signature", title, Status.FAIL, section="reference",
                                    detail=f"no signature file {sig_path}"))
        else:
            reason = mf.chains_to(sig.certificate, ca_cert)
            good = reason is None and mf.check_signature(data, sig)
            refs.findings.append(_f("reference.signature", title, Status.PASS if good else Status.FAIL,
                                    section="reference", severity=Severity.CRITICAL,
                                    detail=reason or ("" if good else "signature does not verify over manifest.json")))
            if good:
                cert = sig.certificate
    refs.predicted = dict(m.pcrs.predicted)
    refs.boot_predictions = tuple(m.pcrs.predictions)
    refs.ima_reference = m.ima_reference
    if cert is not None:
        from obelisk.ima_policy.keyring import Keyring
        refs.keyring = Keyring([(sig_path, cert)])


def make_checker(refs: References) -> Callable[..., list[Finding]]:
    """The full check of the list, every round (`attest verify`, `attest node`)."""
    def check(data: bytes, fmt: str, pcrs: dict[int, bytes], boot_banks: dict[str, dict[int, bytes]],
              boot: int = 0) -> list[Finding]:
        return ima_findings(data, pcrs, refs, boot_banks)
    return check


class IncrementalChecker:
    """The check of one node's list that walks only the entries after `progress` (the state its last
    round left, None at first) when the quote's resetCount says the node did not reboot; `state`
    afterwards is what to keep for the next round (None when the list could not be read). The
    findings are a full check's (ima_policy/progress.py proves it); a fleet verifying every node every
    minute re-reads only what each node measured since."""

    def __init__(self, refs: References, progress: ImaProgress | None):
        self.refs = refs
        self.progress = progress
        self.state: ImaProgress | None = None

    def __call__(self, data: bytes, fmt: str, pcrs: dict[int, bytes], boot_banks: dict[str, dict[int, bytes]],
                 boot: int = 0) -> list[Finding]:
        findings, self.state = ima_findings_since(data, pcrs, self.refs, boot_banks, boot=boot,
                                                  progress=self.progress)
        return findings


def ima_findings(data: bytes, pcrs: dict[int, bytes], refs: References,
                 boot_banks: dict[str, dict[int, bytes]] | None = None) -> list[Finding]:
    """The IMA component's verification of the list, against the quoted (trusted) PCR values."""
    return ima_findings_since(data, pcrs, refs, boot_banks)[0]


def ima_findings_since(data: bytes, pcrs: dict[int, bytes], refs: References,
                       boot_banks: dict[str, dict[int, bytes]] | None = None, boot: int = 0,
                       progress: ImaProgress | None = None) -> tuple[list[Finding], ImaProgress | None]:
    """`ima_findings`, walking only the entries after `progress` (the node's state from the last
    round, None at first) when it belongs to the same boot (`boot`: the quote's resetCount);
    returns the findings, identical to a full check's, and the state to keep for the next round."""
    from obelisk.core.errors import ParseError
    from obelisk.ima_policy import progress as imaprogress
    from obelisk.ima_policy import verify as imaverify
    from obelisk.ima_policy.pcrs import PcrValues

    quoted10 = pcrs.get(10)
    if quoted10 is None:
        return [_f("ima.pcr10", "IMA measurement list replays to the quoted PCR 10", Status.FAIL,
                   detail="PCR 10 was not quoted")], None
    options = imaverify.VerifyOptions(
        banks=("sha256",), pcrs=PcrValues({"sha256": {10: quoted10}}),
        boot_pcrs={**(boot_banks or {}), "sha256": {i: pcrs[i] for i in range(10) if i in pcrs}},
        reference=refs.ima_reference, keyring=refs.keyring, workers=1)
    try:
        result, state = imaprogress.verify_since(data, "evidence: ima_log", options, boot, progress)
    except ParseError as exc:
        return [_f("ima.pcr10", "IMA measurement list replays to the quoted PCR 10", Status.FAIL,
                   detail=str(exc))], None
    return list(result.report.findings), state
