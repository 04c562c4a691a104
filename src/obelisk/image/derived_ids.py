"""Identifiers derived from the build's seed (the spec digest), so a rebuild is byte-identical.

Tools that would otherwise pick random values (GPT disk and partition GUIDs, the dm-verity salt
and UUID, the FAT volume id) get these instead. Each value is a hash of the seed and a purpose
string, so two purposes never share a value and nothing about one reveals another.
"""

from __future__ import annotations

import hashlib
import uuid

# uuid5 namespace for every obelisk-derived UUID (itself uuid5(NAMESPACE_URL, "https://obelisk/derived-ids"))
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://obelisk/derived-ids")


def derived_uuid(seed: str, purpose: str) -> uuid.UUID:
    """A version-5 UUID for `purpose` (e.g. "gpt-partition:root-x86-64") under `seed`."""
    if not seed:
        raise ValueError("an empty seed would make every image share its identifiers")
    return uuid.uuid5(NAMESPACE, f"{seed}\0{purpose}")


def derived_bytes(seed: str, purpose: str, length: int) -> bytes:
    """`length` (at most 64) pseudo-random bytes for `purpose` under `seed` (SHA-512 of both)."""
    if not seed:
        raise ValueError("an empty seed would make every image share its identifiers")
    if not 0 < length <= 64:
        raise ValueError(f"derived_bytes gives 1 to 64 bytes, not {length}")
    return hashlib.sha512(f"obelisk derived bytes\0{seed}\0{purpose}".encode()).digest()[:length]
