"""The digest that names a node's CIS/STIG scan in a fleet round (obelisk.fleet-round/1 `scan_sha256`).

A node scans every interval but sends the scan's body only when the service does not already hold a scan
with the same digest for it: the digest is SHA-256 over the scan's canonical bytes, the obelisk.report/1
document without its `generated_at`, as JSON with sorted keys and no spaces (ASCII escapes). The time a
scan ran is left out because it is not part of what the scan found: every round's scan runs anew and
would otherwise never match the last one (the round's own time is the round's). Both sides compute it
from the decoded document, never from the bytes on the wire, so it does not depend on how either side's
JSON encoder lays the document out. Imported by the node (standard library only).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(scan: dict[str, Any]) -> bytes:
    """The scan document's canonical bytes (what the digest is over): all of it but when it ran."""
    found = {key: value for key, value in scan.items() if key != "generated_at"}
    return json.dumps(found, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(scan: dict[str, Any]) -> str:
    """sha256 (hex) of the scan document's canonical bytes."""
    return hashlib.sha256(canonical(scan)).hexdigest()


__all__ = ["canonical", "digest"]
