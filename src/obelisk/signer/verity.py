"""fs-verity file digests (Documentation/filesystems/fsverity.rst), for v3 IMA signatures.

The digest is hash(fsverity_descriptor), where the descriptor holds the root of a Merkle
tree over the file's 4096-byte blocks. Computed here so obelisk can check verity
signatures on files that do not have fs-verity enabled (an image being built, say).
"""

from __future__ import annotations

import hashlib
import struct
from typing import BinaryIO

from obelisk.core.errors import InputError

BLOCK_SIZE = 4096
_VERITY_ALGOS = {"sha256": 1, "sha512": 2}


def verity_digest(stream: BinaryIO, algo: str = "sha256", block_size: int = BLOCK_SIZE) -> bytes:
    if algo not in _VERITY_ALGOS:
        raise InputError(f"fs-verity supports sha256 and sha512, not {algo}")
    digest_size = hashlib.new(algo).digest_size
    size = 0
    level: list[bytes] = []
    while True:
        block = stream.read(block_size)
        if not block:
            break
        size += len(block)
        if len(block) < block_size:
            block = block + bytes(block_size - len(block))
        level.append(hashlib.new(algo, block).digest())
    if size == 0:
        root = bytes(digest_size)
    else:
        hashes_per_block = block_size // digest_size
        while len(level) > 1:
            nxt = []
            for i in range(0, len(level), hashes_per_block):
                joined = b"".join(level[i:i + hashes_per_block])
                joined += bytes(block_size - len(joined))
                nxt.append(hashlib.new(algo, joined).digest())
            level = nxt
        # a file of at most one block has no tree: the root is that block's hash
        root = level[0]
    descriptor = struct.pack("<BBBBIQ", 1, _VERITY_ALGOS[algo], block_size.bit_length() - 1, 0, 0, size)
    descriptor += root + bytes(64 - digest_size) + bytes(32) + bytes(144)
    return hashlib.new(algo, descriptor).digest()
