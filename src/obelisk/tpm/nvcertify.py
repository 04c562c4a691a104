"""TPMS_ATTEST of TPM2_NV_Certify (TPM_ST_ATTEST_NV): the TPM's signed statement of an NV index's contents.

    magic u32 | type u16 (0x8014) | qualifiedSigner TPM2B_NAME | extraData TPM2B_DATA | clockInfo
    | firmwareVersion u64 | indexName TPM2B_NAME | offset u16 | nvContents TPM2B_MAX_NV_BUFFER

The node certifies its rollback floor with the AK over the verifier's nonce, so the verifier reads the
floor from the TPM, not from the node's word (attest/rollback_check.py). `parse`/`serialize` round-trip;
errors name the offset (tpm/quote.py's reader, shared).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from obelisk.tpm.quote import MAX_NAME, TPM_GENERATED_VALUE, ClockInfo, _Reader, read_attest_header

TPM_ST_ATTEST_NV = 0x8014
MAX_NV_CONTENTS = 2048  # MAX_NV_BUFFER_SIZE of common TPMs; the floor is 8 bytes


@dataclass(frozen=True)
class NvAttest:
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    index_name: bytes
    offset: int
    contents: bytes


def parse(data: bytes, what: str = "NV certification") -> NvAttest:
    r = _Reader(bytes(data), what)
    h = read_attest_header(r, TPM_ST_ATTEST_NV, "TPM_ST_ATTEST_NV")
    name = r.tpm2b("indexName", MAX_NAME)
    offset = r.u16("offset")
    contents = r.tpm2b("nvContents", MAX_NV_CONTENTS)
    r.end()
    return NvAttest(qualified_signer=h.qualified_signer, extra_data=h.extra_data, clock_info=h.clock_info,
                    firmware_version=h.firmware_version, index_name=name, offset=offset, contents=contents)


def serialize(a: NvAttest) -> bytes:
    def tpm2b(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    c = a.clock_info
    return (struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_NV) + tpm2b(a.qualified_signer)
            + tpm2b(a.extra_data) + struct.pack(">QIIB", c.clock, c.reset_count, c.restart_count, int(c.safe))
            + struct.pack(">Q", a.firmware_version) + tpm2b(a.index_name) + struct.pack(">H", a.offset)
            + tpm2b(a.contents))
