"""The rollback floor: the TPM NV index that holds the lowest image rollback index allowed to open /var.

Why it looks like this (docs/upgrade.md has the whole analysis):

* PolicyNV puts the index's Name into the policy digest, and the customer signs one policy per image
  for every node, offline. So the index must have the same Name on every node: a fixed handle
  (`NV_INDEX`), fixed attributes and an authPolicy that depends only on the customer's disk policy
  key (`write_policy`), and the value it compares must be absolute. A TPM_NT_COUNTER starts at a
  per-TPM base, so "counter <= r" could not be signed once for all nodes.
* It is a TPM_NT_BITS index (8 bytes), read as a thermometer code: rollback index r is the lowest r
  bits set (`floor_value`). TPM2_NV_SetBits can only OR bits in, so the TPM itself keeps the floor
  from ever going down: whoever holds the write authorisation can raise it (a denial of service),
  never lower it. Indexes run from 0 to `MAX_ROLLBACK_INDEX` (64): an image's rollback index goes up
  only when a release fixes a hole worth locking older images out for, not with every release.
* Writing (SetBits) needs PolicyAuthorize(customer key, `ADVANCE_REF`) then PolicyCommandCode(SetBits):
  the customer's approval of PCR 11 at leave-initrd of an image built with rollback protection,
  i.e. only that image's initramfs and /var unlock code, before /sbin/obelisk-init extends sysinit.
  Reading needs nothing (AUTHREAD, empty authValue; noDA so reads never count as failed tries).
* The per-image unseal approval is PolicyPCR(11) then PolicyNV(floor <= the image's value), signed
  with `UNSEAL_REF`; a volume sealed with rollback protection requires that policyRef, so approvals
  made before this existed (empty policyRef, PCR 11 only) and the advance approvals cannot open it.

PolicyNV compares the NV contents (operand A) with operandB: TPM_EO_UNSIGNED_LE passes while
floor <= image value, i.e. while the image's rollback index is at least the node's floor.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

NV_INDEX = 0x01800B5E  # owner range of the TCG handle registry; fixed: the handle is part of the Name
NV_SIZE = 8  # a bits index is always 8 bytes
MAX_ROLLBACK_INDEX = 64

# TPMA_NV (TPM 2.0 Part 2, 13.4)
TPMA_NV_POLICYWRITE = 0x00000008
TPM_NT_BITS = 0x2 << 4
TPMA_NV_AUTHREAD = 0x00040000
TPMA_NV_NO_DA = 0x02000000
TPMA_NV_WRITTEN = 0x20000000
ATTRIBUTES = TPMA_NV_POLICYWRITE | TPM_NT_BITS | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA

TPM_ALG_SHA256 = 0x000B
TPM_CC_POLICY_NV = 0x00000149
TPM_CC_POLICY_COMMAND_CODE = 0x0000016C
TPM_CC_NV_SET_BITS = 0x00000135
TPM_EO_UNSIGNED_LE = 0x0009

# policyRefs of the two approvals the build signs for an image with rollback protection
UNSEAL_REF = b"obelisk/rollback-unseal/1"
ADVANCE_REF = b"obelisk/rollback-advance/1"


def floor_value(rollback_index: int) -> int:
    """The bits index's value for rollback index r: its lowest r bits set (monotonic in r)."""
    if not 0 <= rollback_index <= MAX_ROLLBACK_INDEX:
        raise ValueError(f"rollback index {rollback_index}: must be 0..{MAX_ROLLBACK_INDEX}")
    return (1 << rollback_index) - 1


def rollback_index_of(value: int) -> int:
    """The inverse of floor_value; a value that is not r low bits set was not written by obelisk."""
    index = value.bit_length()
    if value != (1 << index) - 1:
        raise ValueError(f"rollback floor 0x{value:016x} is not a run of low bits (not written by obelisk)")
    return index


def operand(rollback_index: int) -> bytes:
    """PolicyNV's operandB for an image of `rollback_index`: 8 bytes, big-endian, as the index holds it."""
    return floor_value(rollback_index).to_bytes(NV_SIZE, "big")


def nv_public(auth_policy: bytes, *, written: bool = True) -> bytes:
    """TPMS_NV_PUBLIC of the floor index, marshalled (what its Name hashes). Writing it sets
    TPMA_NV_WRITTEN, which changes the Name: policies name the written index."""
    attributes = ATTRIBUTES | (TPMA_NV_WRITTEN if written else 0)
    return (struct.pack(">IHIH", NV_INDEX, TPM_ALG_SHA256, attributes, len(auth_policy)) + auth_policy
            + struct.pack(">H", NV_SIZE))


def nv_name(auth_policy: bytes, *, written: bool = True) -> bytes:
    """The index's Name: nameAlg || SHA-256(TPMS_NV_PUBLIC)."""
    return struct.pack(">H", TPM_ALG_SHA256) + hashlib.sha256(nv_public(auth_policy, written=written)).digest()


def policy_nv_digest(name: bytes, operand_b: bytes, previous: bytes, *, offset: int = 0,
                     operation: int = TPM_EO_UNSIGNED_LE) -> bytes:
    """policyDigest' = H(policyDigest || TPM_CC_PolicyNV || H(operandB || offset || operation) || nvIndex.Name)."""
    args = hashlib.sha256(operand_b + struct.pack(">HH", offset, operation)).digest()
    return hashlib.sha256(previous + struct.pack(">I", TPM_CC_POLICY_NV) + args + name).digest()


def policy_command_code_digest(code: int, previous: bytes) -> bytes:
    return hashlib.sha256(previous + struct.pack(">II", TPM_CC_POLICY_COMMAND_CODE, code)).digest()


@dataclass(frozen=True)
class RollbackCheck:
    """The PolicyNV step of an image's unseal approval: the floor index (by handle and written Name)
    must hold at most this image's rollback index."""

    rollback_index: int
    nv_index: int = NV_INDEX
    nv_name: bytes = b""  # the written index's Name, as the policy digest includes it

    def __post_init__(self) -> None:
        floor_value(self.rollback_index)  # raises on an index out of range

    def extend(self, previous: bytes) -> bytes:
        return policy_nv_digest(self.nv_name, operand(self.rollback_index), previous)
