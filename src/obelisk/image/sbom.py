"""SBOM of the rootfs as SPDX 2.3 JSON: packages (dpkg status, or busybox) and every file.

Deterministic: the creation time is SOURCE_DATE_EPOCH and the document namespace is
derived from the content, so two builds of the same inputs give the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from obelisk import __version__

if TYPE_CHECKING:
    from obelisk.image.manifest import FileRecord


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    supplier: str = "Organization: Debian"
    license: str = "NOASSERTION"

    @property
    def purl(self) -> str:
        return f"pkg:deb/debian/{self.name}@{self.version}?arch=amd64"


def dpkg_packages(root: Path) -> list[Package]:
    """Installed packages from a Debian rootfs's var/lib/dpkg/status."""
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return []
    out = []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if fields.get("Package") and "installed" in fields.get("Status", ""):
            out.append(Package(fields["Package"], fields.get("Version", "NOASSERTION")))
    return sorted(out, key=lambda p: p.name)


def _spdx_id(text: str) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", text)


def render(name: str, version: str, packages: list[Package], files: list[FileRecord], epoch: int) -> bytes:
    """SPDX 2.3 JSON. `files` are the manifest's records of regular files (path, sha256)."""
    created = _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    content = hashlib.sha256(json.dumps([[p.name, p.version] for p in packages] +
                                        [[f.path, f.sha256] for f in files]).encode()).hexdigest()
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name}-{version}",
        "documentNamespace": f"https://obelisk.invalid/spdx/{name}/{version}/{content}",
        "creationInfo": {"created": created, "creators": [f"Tool: obelisk-{__version__}"]},
        "packages": [{
            "SPDXID": _spdx_id(f"Package-{p.name}"), "name": p.name, "versionInfo": p.version,
            "supplier": p.supplier, "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "licenseConcluded": p.license, "licenseDeclared": p.license, "copyrightText": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": p.purl}],
        } for p in packages],
        "files": [{
            "SPDXID": _spdx_id(f"File-{i}"), "fileName": "." + f.path,
            "checksums": [{"algorithm": "SHA256", "checksumValue": f.sha256}],
            "licenseConcluded": "NOASSERTION", "copyrightText": "NOASSERTION",
        } for i, f in enumerate(files)],
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": _spdx_id(f"Package-{p.name}")} for p in packages],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
