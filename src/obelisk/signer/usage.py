"""What each obelisk certificate is for: the extended key usage OIDs obelisk issues and checks.

One table. Standard purposes come from RFC 5280 (serverAuth, clientAuth, codeSigning); obelisk's own
live under the registration-free UUID arc `2.25` (ITU-T X.667):

    OBELISK_ARC.1   evidence reader  may read the node agent's evidence, kernel facts, scan, health
    OBELISK_ARC.2   operator         may change a node through the agent (the upgrade API)
    OBELISK_ARC.3   disk policy      signs the TPM PCR policies that open an encrypted /var

The two agent roles are EKUs next to clientAuth, so a TLS stack that knows nothing of obelisk
still sees a client certificate, and one certificate can carry both roles.
"""

from __future__ import annotations

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

# The arc is the top 28 bits of obelisk's UUID 9c15dc38-15fc-4452-9679-c0df06e9a49f (its integer >> 100), not the
# whole 128-bit UUID: the node agent runs Debian 12's python3-cryptography 38, whose ASN.1 parser cannot build an
# OID with a 128-bit arc (the agent died at import) and refuses, in a certificate, any arc of 2^28 or more (more
# than four base-128 bytes: every client then looked role-less). 28 bits keep a collision with another issuer's
# EKUs in the same customer PKI unlikely; tests/attest/test_agent_roles.py holds every arc below 2^28.
OBELISK_ARC = "2.25.163667395"

EVIDENCE_READER = ObjectIdentifier(OBELISK_ARC + ".1")
OPERATOR = ObjectIdentifier(OBELISK_ARC + ".2")
DISK_POLICY = ObjectIdentifier(OBELISK_ARC + ".3")

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING

# agent roles by name (what `issue-cert --role` takes and the agent's endpoint table names)
ROLES: dict[str, ObjectIdentifier] = {"reader": EVIDENCE_READER, "operator": OPERATOR}
