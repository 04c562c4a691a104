"""Glue to the IMA and image components: the IMA list replayed to the quoted PCR 10 and checked
against the build's reference values; the build manifest's signature and predicted PCRs.

The list parser, replay, reference format and checks belong to `obelisk.ima_policy`; the signed
manifest to `obelisk.image.manifest`. This module only feeds them the quoted values and turns the
outcome into attestation findings.

`--reference` takes either the image build's signed `manifest.json` (`obelisk.image-manifest/1`:
its `ima_reference`, its `pcrs.predicted`, and `manifest.json.sig` beside it, checked against
`--cert CA`) or a bare IMA reference manifest / Keylime runtime policy (no predictions, no signature).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from obelisk.core.errors import InputError
from obelisk.core.findings import Finding, Severity, Status

IMAGE_SCHEMA = "obelisk.image-manifest/1"


def _f(fid: str, title: str, status: Status, section: str = "ima", **kw) -> Finding:
    return Finding(id=f"attest.{fid}", title=title, status=status, benchmark="attestation", section=section,
                   severity=kw.pop("severity", Severity.HIGH), **kw)


@dataclass
class References:
    ima_reference: object | None = None  # obelisk.ima_policy.reference.ReferenceManifest
    predicted: dict[int, bytes] = field(default_factory=dict)
    boot_events: tuple = ()  # (pcr, name, digest bytes, description) from the manifest's pcrs.events
    keyring: object | None = None  # obelisk.ima_policy.keyring.Keyring
    findings: list[Finding] = field(default_factory=list)


def load_references(path: str | None, ca: str | None) -> References:
    refs = References()
    if not path:
        if ca:
            raise InputError("--cert is the CA of the signed reference manifest: give --reference too")
        return refs
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 30)
        doc = json.loads(data)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", source=path) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"not JSON: {str(exc).splitlines()[0]}", source=path) from None
    if isinstance(doc, dict) and doc.get("schema") == IMAGE_SCHEMA:
        _image_manifest(refs, path, data, doc, ca)
    else:
        if ca:
            raise InputError("--cert applies to a signed image manifest (manifest.json with manifest.json.sig); "
                             "this reference file carries no signature", source=path)
        from obelisk.ima_policy import reference
        refs.ima_reference = reference.load(path)
        refs.findings.append(_f("reference.signature", "Reference manifest is signed by the customer CA",
                                Status.SKIP, section="reference", detail="a bare IMA reference has no signature"))
    return refs


def _image_manifest(refs: References, path: str, data: bytes, doc: dict, ca: str | None) -> None:
    from obelisk.image import manifest as mf

    title = "Reference manifest is signed by the customer CA"
    cert = None
    if ca is None:
        refs.findings.append(_f("reference.signature", title, Status.SKIP, section="reference",
                                detail="no --cert CA given: the build manifest's origin is not checked"))
    else:
        from cryptography import x509
        try:
            with open(ca, "rb") as handle:
                ca_cert = x509.load_pem_x509_certificate(handle.read(1 << 20))
        except (OSError, ValueError) as exc:
            raise InputError(f"not a PEM certificate: {exc}", source=ca) from None
        sig_path = path + ".sig" if os.path.exists(path + ".sig") else os.path.join(os.path.dirname(path), mf.SIGNATURE)
        try:
            with open(sig_path, "rb") as handle:
                sig = mf.ManifestSignature.loads(handle.read(1 << 20), sig_path)
        except OSError:
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
    pcrs = doc.get("pcrs") or {}
    predicted = pcrs.get("predicted") or {}
    if pcrs.get("bank", "sha256") != "sha256" or not isinstance(predicted, dict):
        raise InputError("pcrs: expected bank sha256 and predicted {index: hex}", source=path)
    try:
        refs.predicted = {int(k): bytes.fromhex(v) for k, v in predicted.items()}
    except (ValueError, TypeError):
        raise InputError("pcrs.predicted: expected {index: hex}", source=path) from None
    try:
        refs.boot_events = tuple((int(e["pcr"]), str(e["name"]), bytes.fromhex(e["digest"]),
                                  str(e.get("description", ""))) for e in pcrs.get("events") or ())
    except (KeyError, ValueError, TypeError, AttributeError):
        raise InputError("pcrs.events: expected [{pcr, name, digest}]", source=path) from None
    refs.ima_reference = _ima_reference(doc.get("ima_reference"), path)
    if cert is not None:
        from obelisk.ima_policy.keyring import Keyring
        refs.keyring = Keyring([(sig_path, cert)])


def _ima_reference(section: object, path: str):
    """The manifest's IMA reference: the IMA component's format, or the image build's early form."""
    from obelisk.ima_policy import reference

    if section is None:
        return None
    if isinstance(section, dict) and section.get("schema") == reference.SCHEMA:
        return reference.from_json(section, f"{path}: ima_reference")
    if isinstance(section, dict) and isinstance(section.get("digests"), dict):
        algo = section.get("hash", "sha256")
        files = {p: tuple(f"{algo}:{d}" for d in ds) for p, ds in section["digests"].items()}
        rules = tuple(reference.Rule(g, "glob", reference.ANY_DIGEST, "allowed to vary by the image build")
                      for g in section.get("allow_vary", []))
        return reference.from_json(reference.ReferenceManifest(files, rules).to_json(), f"{path}: ima_reference")
    raise InputError("ima_reference: not a reference obelisk knows", source=path)


def make_checker(refs: References) -> Callable[..., list[Finding]]:
    def check(data: bytes, fmt: str, pcrs: dict[int, bytes], boot_banks: dict[str, dict[int, bytes]]) -> list[Finding]:
        return ima_findings(data, pcrs, refs, boot_banks)
    return check


def ima_findings(data: bytes, pcrs: dict[int, bytes], refs: References,
                 boot_banks: dict[str, dict[int, bytes]] | None = None) -> list[Finding]:
    """The IMA component's verification of the list, against the quoted (trusted) PCR values."""
    from obelisk.core.errors import ParseError
    from obelisk.ima_policy import verify as imaverify
    from obelisk.ima_policy.pcrs import PcrValues

    quoted10 = pcrs.get(10)
    if quoted10 is None:
        return [_f("ima.pcr10", "IMA measurement list replays to the quoted PCR 10", Status.FAIL,
                   detail="PCR 10 was not quoted")]
    options = imaverify.VerifyOptions(
        banks=("sha256",), pcrs=PcrValues({"sha256": {10: quoted10}}),
        boot_pcrs={**(boot_banks or {}), "sha256": {i: pcrs[i] for i in range(10) if i in pcrs}},
        reference=refs.ima_reference, keyring=refs.keyring, workers=1)
    try:
        result = imaverify.verify_log(data, "evidence: ima_log", options)
    except ParseError as exc:
        return [_f("ima.pcr10", "IMA measurement list replays to the quoted PCR 10", Status.FAIL,
                   detail=str(exc))]
    return list(result.report.findings)
