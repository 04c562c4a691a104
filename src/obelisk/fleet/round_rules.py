"""What a fleet round must show beyond the quote and its logs: the node's CIS/STIG scan and its /var.

A regular round (the node's loop, `fleet join`) must carry the node's scan: one that sends none fails
`fleet.node.scan`, so a node cannot stay trusted by leaving its configuration out. It must also report
/var as its image puts it (`attest.node.var`, the same check `attest node` makes): a node whose volume
stayed locked runs on a tmpfs and fails.

The round that asks for /var's key runs in the initramfs, before /var exists and before the node's
settings are applied, so neither fact exists yet: that round is judged on the boot chain alone (quote,
event logs, IMA, the build's predicted PCRs), and says so in a skipped finding. The node's first
regular round, one interval later, carries both; a node that fails it is failed, then quarantined, as
any other.

The scan is the node agent's word, as in `attest node`: what vouches for it is that IMA and the quote
show the agent is the build's. For an image with a rollback index (docs/upgrade.md), a regular round also
checks the node's rollback floor, certified by its TPM over the round's nonce (`attest.rollback`, as
`attest node`): the key-release round comes before the floor exists on a first boot, so it does not.
A node sends the scan's body only when the service does not hold a scan with its digest
(fleet/scan_digest.py); the round is judged with the scan's findings all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from obelisk.core.findings import Finding, Severity, Status

if TYPE_CHECKING:
    from obelisk.image.manifest import Manifest

SCAN_ID = "fleet.node.scan"


def node_findings(has_scan: bool, manifest: Manifest | None, kernel: Mapping[str, str], *,
                  key_round: bool, rollback: Callable[[], Finding] | None = None) -> list[Finding]:
    """The round's findings about the running node, added to the verifier's. When the round has a scan
    (`has_scan`, and not `key_round`), the scan's own findings come first, before these: the service keeps
    them once per scan and puts them there when the round is read."""
    if key_round:
        return [Finding(id=SCAN_ID, title="Node CIS/STIG scan and /var", status=Status.SKIP,
                        severity=Severity.MEDIUM, benchmark="attestation", section="node",
                        detail="the round that releases /var's key runs before /var and the node's settings exist: "
                               "it is judged on the boot chain; the node's next round carries its scan and /var")]
    found: list[Finding] = []
    if not has_scan:
        found.append(Finding(id=SCAN_ID, title="Node CIS/STIG scan", status=Status.FAIL, severity=Severity.MEDIUM,
                             benchmark="attestation", section="node",
                             detail="the node sent no CIS/STIG scan with this round: every round must carry one"))
    if manifest is not None:
        from obelisk.attest.agent_client import var_finding

        found.append(var_finding(manifest, kernel.get("var_mount")))
        if manifest.disk.rollback_index is not None and rollback is not None:
            found.append(rollback())
    return found


__all__ = ["SCAN_ID", "node_findings"]
