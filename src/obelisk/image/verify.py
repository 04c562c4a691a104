"""`obelisk image verify OUT --ca CA`: the manifest's signature, every artifact, every file in the SquashFS.

The files are read back from the SquashFS itself with rdsquashfs (content, mode, owner and
`security.ima`), so what is checked is what the node will mount, not what the build meant.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography import x509

from obelisk.core.errors import InputError, ParseError
from obelisk.core.findings import Evidence, Finding, Reference, Report, Severity, Status, Subject
from obelisk.core.inputs import read_bounded
from obelisk.image import manifest, squashfs

_REFS = (Reference("nist-800-53", "SI-7"), Reference("nist-800-53", "CM-14"))


def _finding(fid: str, title: str, ok: bool, *, target: str = "", observed: str | None = None,
             expected: str | None = None, detail: str = "", evidence: tuple[Evidence, ...] = (),
             section: str = "image") -> Finding:
    return Finding(id=fid, title=title, status=Status.PASS if ok else Status.FAIL, severity=Severity.HIGH,
                   target=target, observed=observed, expected=expected, detail=detail, evidence=evidence,
                   references=_REFS, benchmark="image", section=section)


def verify_image(out: Path, ca_path: Path, *, jobs: int = 4) -> Report:
    from obelisk.signer.keys import load_certificate

    if not out.is_dir():
        raise InputError("not an image directory (a build that did not finish leaves none)", source=str(out))
    ca = load_certificate(ca_path)
    manifest_path = out / manifest.MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"no {manifest.MANIFEST}: not a finished obelisk image", source=str(out))
    data = read_bounded(manifest_path, "image manifest", manifest.MAX_MANIFEST_BYTES)
    m = manifest.parse(data, str(manifest_path))
    subject = Subject("image", m.image.name, digest="sha256:" + hashlib.sha256(data).hexdigest(),
                      attributes=(("path", str(out)), ("version", m.image.version)))
    findings: list[Finding] = []

    # 1. The manifest's signature, by a certificate the customer CA issued.
    sig_path = out / manifest.SIGNATURE
    signing_cert: x509.Certificate | None = None
    if not sig_path.is_file():
        findings.append(_finding("image.manifest.signature", "manifest is signed by the customer key", False,
                                 target=str(sig_path), observed="missing", expected="signature file"))
    else:
        sig = manifest.ManifestSignature.loads(read_bounded(sig_path, "manifest signature", 1 << 20), str(sig_path))
        reason = manifest.chains_to(sig.certificate, ca)
        good = reason is None and manifest.check_signature(data, sig)
        if reason is None and not good:
            reason = "signature does not match manifest.json"
        findings.append(_finding("image.manifest.signature", "manifest is signed by the customer key", good,
                                 target=str(manifest_path), detail=reason or "",
                                 observed=reason or "valid", expected=f"signed by a key issued by "
                                 f"{ca.subject.rfc4514_string()}"))
        if good:
            signing_cert = sig.certificate

    # 2. Every artifact's digest, and nothing extra.
    artifacts = m.artifacts
    present = {p.name for p in out.iterdir() if p.is_file()} - {manifest.MANIFEST, manifest.SIGNATURE}
    for name in sorted(set(artifacts) | present):
        path = out / name
        if name not in artifacts:
            findings.append(_finding(f"image.artifact:{name}", f"artifact {name} is listed in the manifest", False,
                                     target=str(path), observed="present, not in the manifest"))
            continue
        expected = artifacts[name].sha256
        if not path.is_file():
            findings.append(_finding(f"image.artifact:{name}", f"artifact {name} matches the manifest", False,
                                     target=str(path), observed="missing", expected=expected))
            continue
        size = path.stat().st_size
        if size != artifacts[name].size:  # never hash a file larger than the manifest says (a sparse 64 GiB one)
            findings.append(_finding(f"image.artifact:{name}", f"artifact {name} matches the manifest", False,
                                     target=str(path), observed=f"{size} bytes",
                                     expected=f"{artifacts[name].size} bytes, sha256 {expected}"))
            continue
        with open(path, "rb") as handle:
            actual = hashlib.file_digest(handle, "sha256").hexdigest()
        findings.append(_finding(f"image.artifact:{name}", f"artifact {name} matches the manifest",
                                 actual == expected, target=str(path), observed=actual, expected=expected))

    # 3. The boot chain: the UKI's sections and Authenticode digest, and the root it binds.
    if m.boot.uki is not None:
        findings.extend(_verify_boot_chain(out, m))

    # 4. Every file inside the SquashFS: content, mode, owner and IMA signature.
    image = out / "rootfs.squashfs"
    if image.is_file() and "rootfs.squashfs" in artifacts:
        findings.extend(_verify_squashfs(image, m, signing_cert, jobs))
    ok = all(f.status is Status.PASS for f in findings)
    findings.insert(0, _finding("image.verified", "image matches its signed manifest", ok, target=str(out),
                                observed=f"{sum(f.status is Status.PASS for f in findings)} of {len(findings)} "
                                "checks passed"))
    return Report(findings=tuple(findings), subject=subject, command="image verify")


def _verify_boot_chain(out: Path, m: manifest.Manifest) -> list[Finding]:
    """The UKI is the manifest's (each section, the Authenticode digest the firmware measures), its command
    line carries the manifest's dm-verity root hash, and that hash covers every block of the root."""
    from obelisk.image import dmverity, uki
    from obelisk.signer.authenticode import authenticode_digest

    assert m.boot.uki is not None
    path = out / "uki.efi"
    try:
        data = read_bounded(path, "UKI", uki.MAX_PE_SIZE)
        sections = uki.parse(data, str(path))
        digest = authenticode_digest(data, source=str(path)).hex()
    except InputError as exc:
        return [_finding("image.boot.uki", "the UKI is the one the manifest describes", False, target=str(path),
                         observed=str(exc), section="boot")]
    found = {name: hashlib.sha256(content).hexdigest() for name, content in sections.by_name().items()}
    differ = sorted(n for n in set(found) | set(m.boot.uki.sections) if found.get(n) != m.boot.uki.sections.get(n))
    if digest != m.boot.uki.authenticode_sha256:
        differ.append("Authenticode digest")
    out_findings = [_finding("image.boot.uki", "the UKI is the one the manifest describes", not differ,
                             target=str(path), observed=", ".join(differ) + " differ" if differ else "as recorded",
                             expected="sections and Authenticode digest as in boot.uki", section="boot")]
    if m.boot.disk_image is not None and (out / "disk.raw").is_file():
        from obelisk.image.disk_image import verify_disk_image

        try:
            verify_disk_image(out / "disk.raw", m.boot.disk_image)
            problem = ""
        except InputError as exc:
            problem = str(exc)
        out_findings.append(_finding("image.boot.disk", "disk.raw holds the manifest's partitions", not problem,
                                     target="disk.raw", observed=problem or "every partition as recorded",
                                     expected="boot.disk_image", section="boot"))
    verity = m.boot.verity
    if verity is not None:
        problem = ""
        if f" {verity.root_hash} " not in f" {sections.cmdline.decode(errors='replace')} ".replace('"', " "):
            problem = "the UKI's command line does not carry the manifest's root hash"
        else:
            try:
                dmverity.verify_root_hash(out / "rootfs.squashfs", out / "rootfs.verity", verity.root_hash)
            except InputError as exc:
                problem = str(exc)
        out_findings.append(_finding("image.boot.verity", "the root is the one the UKI's dm-verity root hash binds",
                                     not problem, target="rootfs.squashfs", observed=problem or verity.root_hash,
                                     expected=verity.root_hash, section="boot"))
    return out_findings


def _verify_squashfs(image: Path, m: manifest.Manifest, cert: x509.Certificate | None, jobs: int) -> list[Finding]:
    from obelisk.signer.verify import Outcome, TrustedKeys

    expected = {f.path: f for f in m.files}
    trusted = TrustedKeys([("manifest signing certificate", cert)]) if cert is not None else None
    findings: list[Finding] = []
    bad = 0
    checked = 0
    with squashfs.temp_workdir() as work:
        declared = sum(f.size or 0 for f in m.files)
        try:
            back = squashfs.read_back(image, Path(work), jobs=jobs, declared=declared)
        except ParseError as exc:  # too large to unpack: a failed check, and nothing written
            return [_finding("image.files", "every file in the SquashFS is signed and matches the manifest", False,
                             target="rootfs.squashfs", observed=str(exc), expected="files as the manifest declares",
                             section="rootfs")]
        seen = set()
        for entry in back.files:
            if entry.path == "/":
                continue
            seen.add(entry.path)
            rec = expected.get(entry.path)
            problems = []
            if rec is None:
                problems.append("not in the manifest")
            else:
                if rec.type != entry.kind:
                    problems.append(f"type {entry.kind}, manifest says {rec.type}")
                if (entry.uid, entry.gid) != rec.owner:
                    problems.append(f"owner {entry.uid}:{entry.gid}, manifest says {rec.owner[0]}:{rec.owner[1]}")
                if entry.kind in ("file", "dir") and rec.mode != f"{entry.mode:04o}":
                    problems.append(f"mode {entry.mode:04o}, manifest says {rec.mode}")
                if entry.kind == "slink" and rec.target != entry.target:
                    problems.append(f"symlink to {entry.target!r}, manifest says {rec.target!r}")
            if entry.kind == "file":
                checked += 1
                local = back.unpacked / entry.path.lstrip("/")
                with open(local, "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                if rec is not None and digest != rec.sha256:
                    problems.append("content differs from the manifest digest")
                value = back.xattrs.get(entry.path, {}).get("security.ima")
                if value is None:
                    problems.append("no security.ima in the image")
                else:
                    if rec is not None and rec.ima and base64.b64decode(rec.ima) != value:
                        problems.append("security.ima differs from the manifest")
                    if trusted is None:
                        problems.append("signature not checked: the manifest's signing certificate is not trusted")
                    else:
                        outcome, detail, _ = trusted.check(value, str(local))
                        if outcome is not Outcome.VALID:
                            problems.append(f"IMA signature {outcome.value}: {detail}")
            if problems:
                bad += 1
                findings.append(_finding(f"image.file:{entry.path}", "file in the SquashFS matches the manifest",
                                         False, target=entry.path, observed="; ".join(problems),
                                         expected="as recorded and signed", section="rootfs",
                                         evidence=(Evidence("file", f"rootfs.squashfs:{entry.path}",
                                                            "; ".join(problems)),)))
        for path in sorted(set(expected) - seen):
            bad += 1
            findings.append(_finding(f"image.file:{path}", "file in the manifest is in the SquashFS", False,
                                     target=path, observed="missing from the image", section="rootfs"))
    findings.insert(0, _finding("image.files", "every file in the SquashFS is signed and matches the manifest",
                                bad == 0, target="rootfs.squashfs",
                                observed=f"{checked} regular files read back, {bad} problems",
                                expected="0 problems", section="rootfs"))
    return findings
