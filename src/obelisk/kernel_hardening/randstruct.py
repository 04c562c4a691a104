"""The customer's structure-layout seed: a secret file turned into the seed the kernel build uses.

CONFIG_RANDSTRUCT shuffles the layout of sensitive kernel structures with a seed. The kernel makes a
random one at build time unless one is given (Documentation/kbuild/reproducible-builds.rst): random
breaks reproducibility, and a seed anyone can know (in the tree, or derived from public inputs) lets
an attacker compute the layout. A customer secret does both jobs: whoever holds it rebuilds the
same kernel byte for byte, nobody else learns the layout. It is handled like a private key: a file
readable by its owner only, never on a command line, never logged; the build keys its cache by the
seed's digest.

The kernel's own generator (scripts/gen-randstruct-seed.sh) writes 64 hex digits; obelisk writes the
SHA-256 of the customer's file in the same form, so any file of 16 bytes to 4 KiB of secret will do
(`obelisk keys generate` makes keys/randstruct.seed).
"""

from __future__ import annotations

import hashlib
import os
import stat

from obelisk.core.errors import InputError

MIN_BYTES = 16
MAX_BYTES = 4096


def read_seed(path: str | os.PathLike[str]) -> str:
    """The build's seed (64 hex digits) from the customer's secret file, refused if others can read it."""
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InputError(f"cannot open the randstruct seed: {exc.strerror}", source=where) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError("the randstruct seed must be a regular file", source=where)
        if info.st_mode & 0o077:
            raise InputError(f"the randstruct seed is a secret: mode {stat.S_IMODE(info.st_mode):04o} lets others "
                             "read it (chmod 600)", source=where)
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if not MIN_BYTES <= len(data) <= MAX_BYTES:
        raise InputError(f"the randstruct seed must hold {MIN_BYTES} to {MAX_BYTES} bytes of secret, "
                         f"not {len(data)}", source=where)
    return hashlib.sha256(b"obelisk randstruct seed\0" + data).hexdigest()


def generator_script(seed_file: str) -> str:
    """A drop-in for scripts/gen-randstruct-seed.sh that writes the customer's seed instead of a random one
    (same outputs: the seed file and include/generated/randstruct_hash.h)."""
    return ("#!/bin/sh\n"
            "# obelisk: the customer's randstruct seed (kernel_hardening/randstruct.py)\n"
            f"SEED=$(cat '{seed_file}')\n"
            'echo "$SEED" > "$1"\n'
            'HASH=$(echo -n "$SEED" | sha256sum | cut -d" " -f1)\n'
            'echo "#define RANDSTRUCT_HASHED_SEED \\"$HASH\\"" > "$2"\n')

