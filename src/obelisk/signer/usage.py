"""What each obelisk certificate is for: the extended key usage OIDs obelisk issues and checks.

One table. Standard purposes come from RFC 5280 (serverAuth, clientAuth, codeSigning); obelisk's own
live under a UUID arc (ITU-T X.667, `2.25.<uuid>`), which needs no registration and cannot collide:

    OBELISK_ARC.1   evidence reader  may read the node agent's evidence, kernel facts, scan, health
    OBELISK_ARC.2   operator         may change a node through the agent (the upgrade API)
    OBELISK_ARC.3   disk policy      signs the TPM PCR policies that open an encrypted /var

The two agent roles are EKUs next to clientAuth, so a TLS stack that knows nothing of obelisk
still sees a client certificate, and one certificate can carry both roles.
"""

from __future__ import annotations

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

OBELISK_ARC = "2.25.207473072150170168876677107277693035679"

EVIDENCE_READER = ObjectIdentifier(OBELISK_ARC + ".1")
OPERATOR = ObjectIdentifier(OBELISK_ARC + ".2")
DISK_POLICY = ObjectIdentifier(OBELISK_ARC + ".3")

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING

# agent roles by name (what `issue-cert --role` takes and the agent's endpoint table names)
ROLES: dict[str, ObjectIdentifier] = {"reader": EVIDENCE_READER, "operator": OPERATOR}
