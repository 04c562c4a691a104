from __future__ import annotations

import os
from pathlib import Path

import pytest

from obelisk.signer import keygen


@pytest.fixture(scope="session", params=["rsa-2048", "ecdsa-p256"])
def keys(request, tmp_path_factory) -> keygen.GeneratedKeys:
    return keygen.generate(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def rsa_keys(tmp_path_factory) -> keygen.GeneratedKeys:
    return keygen.generate(tmp_path_factory.mktemp("rsa"), "rsa-2048")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory) -> keygen.GeneratedKeys:
    """A second, unrelated customer: its certificate must not verify the first one's signatures."""
    return keygen.generate(tmp_path_factory.mktemp("other"), "rsa-2048")


def make_tree(root: Path, n: int = 12) -> Path:
    """A small rootfs-like tree: nested dirs, an empty file, a large file, a symlink, a fifo."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/kubernetes").mkdir(parents=True)
    for i in range(n):
        (root / "usr/bin" / f"tool{i}").write_bytes(os.urandom(100 + i * 37))
    (root / "etc/kubernetes/kubelet.conf").write_text("kind: KubeletConfiguration\n")
    (root / "etc/empty").write_bytes(b"")
    (root / "usr/bin/large").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (root / "usr/bin/with space").write_bytes(b"spaces in names are escaped in dumps\n")
    (root / "usr/bin/sh").symlink_to("tool0")
    os.mkfifo(root / "etc/fifo")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "rootfs")


def regular_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
