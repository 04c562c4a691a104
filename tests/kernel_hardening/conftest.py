"""Fixtures for the kernel component: Debian's real kernel tree and distribution config."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

KERNEL_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
DEBIAN_CONFIG_XZ = Path("/usr/src/linux-config-6.1/config.amd64_none_amd64.xz")


@pytest.fixture(scope="session")
def kernel_tree() -> Path:
    """Debian's linux-source-6.1, extracted once into the obelisk cache."""
    from obelisk.kernel_hardening.source import source_tree

    return source_tree(KERNEL_TARBALL)


@pytest.fixture(scope="session")
def debian_config(tmp_path_factory) -> Path:
    """Debian's amd64 distribution config (package linux-config-6.1)."""
    path = tmp_path_factory.mktemp("debian") / "config-6.1-amd64"
    path.write_bytes(lzma.decompress(DEBIAN_CONFIG_XZ.read_bytes()))
    return path
