"""core.digest: the build caches are keyed on these values, so they are pinned.

The expected values were computed by the helpers core.digest replaced (image/cache.py
`file_digest`/`tree_digest`, kernel_hardening/source.py `file_digest`/`tree_digest`,
signer/filedigest.py `file_digest`) on the tree below: a change here would invalidate every
step-cache and kernel-build-cache entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from obelisk.core import digest

FILE_SHA256 = "7d471e4af16db5a30ce10aebbc29f5178b2edbad6c7dc2e8ff8ee6e4848a726f"
FILE_SHA512 = ("657ef9e3b434692d4e06a8bcae9b644bdc5a2070f31799751493d4109b0c2213"
               "5de3a8d1a6dfb6a9c02de8b7fceed45c015609bac21457d51dbe1e2619243261")
TREE_CONTENT = "61c761c11db93df71c8fd3a29e89d4b01bb32f76020312a7311ed618ce2cefa9"  # was image.cache.tree_digest
# was kernel_hardening.source.tree_digest
TREE_STAT = "e247c58b490ceac39df0facc1f67f496cfd278a881e64f9f9f832b0c605a39ba"
TIME_NS = 1_700_000_000_123_456_789


def make_tree(root: Path) -> Path:
    """Nested dirs, a 1.28 MB file (more than the 1 MiB buffer), an empty file, a symlink; fixed modes and times."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "a" / "one").write_bytes(b"one\n")
    (root / "a" / "b" / "two").write_bytes(bytes(range(256)) * 5000)
    (root / "c" / "empty").write_bytes(b"")
    (root / "top").write_bytes(b"top level file\n")
    (root / "link").symlink_to("a/one")
    for d in (root / "a", root / "a" / "b", root / "c"):
        d.chmod(0o755)
    for f in (root / "a" / "one", root / "a" / "b" / "two", root / "c" / "empty", root / "top"):
        f.chmod(0o644)
        os.utime(f, ns=(TIME_NS, TIME_NS))
    os.utime(root / "link", ns=(1_700_000_000_000_000_000,) * 2, follow_symlinks=False)
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "t")


def test_file_digests_are_the_ones_the_caches_were_keyed_on(tree):
    big = tree / "a" / "b" / "two"
    assert digest.file_hexdigest(big) == FILE_SHA256
    assert digest.file_hexdigest(big, "sha512") == FILE_SHA512
    assert digest.file_digest(big) == bytes.fromhex(FILE_SHA256)
    assert digest.file_digest(big, "sha256", follow_symlinks=False) == bytes.fromhex(FILE_SHA256)
    assert digest.file_hexdigest(tree / "c" / "empty") == hashlib.sha256(b"").hexdigest()


def test_tree_digests_are_the_ones_the_caches_were_keyed_on(tree):
    assert digest.tree_content_digest(tree) == TREE_CONTENT
    assert digest.tree_stat_digest(tree) == TREE_STAT
    assert digest.tree_content_digest(os.fsencode(tree)) == TREE_CONTENT


def test_the_two_tree_digests_notice_different_changes(tree):
    os.utime(tree / "top", ns=(TIME_NS + 1, TIME_NS + 1))  # touched, same bytes
    assert digest.tree_content_digest(tree) == TREE_CONTENT
    assert digest.tree_stat_digest(tree) != TREE_STAT
    (tree / "a" / "one").chmod(0o600)  # same bytes, size and time, another mode
    os.utime(tree / "a" / "one", ns=(TIME_NS, TIME_NS))
    assert digest.tree_content_digest(tree) != TREE_CONTENT


def test_a_symlink_is_followed_only_when_asked(tree):
    assert digest.file_digest(tree / "link") == hashlib.sha256(b"one\n").digest()
    with pytest.raises(OSError):
        digest.file_digest(tree / "link", follow_symlinks=False)


def test_digest_fd_hashes_from_the_current_position(tree):
    fd = digest.open_for_digest(tree / "top")
    try:
        os.lseek(fd, 4, os.SEEK_SET)
        assert digest.digest_fd(fd, "sha384") == hashlib.sha384(b"level file\n").digest()
    finally:
        os.close(fd)
