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


@pytest.fixture(scope="session")
def customer_ca() -> tuple[Path, Path]:
    """A customer CA made with openssl (kept in the obelisk cache so rebuilds hit the build cache)."""
    from obelisk.core import tools
    from obelisk.kernel_hardening import cache

    d = cache.cache_dir("test-ca")
    ca, key = d / "ca.pem", d / "ca.key"
    if not ca.is_file() or not key.is_file():
        tools.run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", ca,
                              "-days", "3650", "-sha256", "-subj", "/O=Example Bank/CN=Example Bank node CA"])
        key.chmod(0o600)
    return ca, key


def randstruct_seed() -> Path:
    """The test customer's randstruct seed, kept beside its CA (a new one would rebuild the kernel)."""
    from obelisk.kernel_hardening import cache
    from obelisk.signer.keygen import RANDSTRUCT_SEED, issue_randstruct_seed

    d = cache.cache_dir("test-ca")
    return d / RANDSTRUCT_SEED if (d / RANDSTRUCT_SEED).is_file() else issue_randstruct_seed(d)


@pytest.fixture(scope="session")
def built_kernel(kernel_tree, customer_ca, tmp_path_factory):
    """The module-less kernel, configured and built once per session (cached by digest across sessions)."""
    from tests.conftest import run_obelisk

    out = tmp_path_factory.mktemp("kernel")
    seed = randstruct_seed()
    proc = run_obelisk("kernel", "config", "--kernel-source", str(KERNEL_TARBALL), "--profile", "module-less",
                       "--randstruct-seed", str(seed), "-o", str(out / "module-less.config"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    # in-process: a cold build takes minutes, longer than the CLI helper's subprocess timeout
    from obelisk.kernel_hardening.build import build
    from obelisk.kernel_hardening.randstruct import read_seed

    result = build(KERNEL_TARBALL, out / "module-less.config", customer_ca[0], out / "build", jobs=2, quiet=True,
                   randstruct_seed=read_seed(seed))
    print(f"kernel build: {'cached' if result.cached else f'{result.seconds:.0f} s'} ({result.key})")
    return out
