"""The customer's randstruct seed: a secret file, refused when others can read it, written like the kernel's own."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from obelisk.core.errors import InputError
from obelisk.kernel_hardening import randstruct
from obelisk.signer.keygen import issue_randstruct_seed


def test_generated_seed_is_private_and_gives_a_stable_kernel_seed(tmp_path):
    path = issue_randstruct_seed(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    seed = randstruct.read_seed(path)
    assert len(seed) == 64 and int(seed, 16) >= 0 and seed == randstruct.read_seed(path)
    other = issue_randstruct_seed(tmp_path / "other")
    assert randstruct.read_seed(other) != seed


@pytest.mark.parametrize(("mode", "size", "message"), [
    (0o640, 64, "mode 0640 lets others read it"),
    (0o604, 64, "mode 0604 lets others read it"),
    (0o600, 8, "16 to 4096 bytes of secret, not 8"),
    (0o600, 5000, "16 to 4096 bytes of secret, not 4097"),
])
def test_a_seed_others_can_read_or_of_the_wrong_size_is_refused(tmp_path, mode, size, message):
    path = tmp_path / "seed"
    path.write_bytes(b"x" * size)
    path.chmod(mode)
    with pytest.raises(InputError, match=message) as info:
        randstruct.read_seed(path)
    assert str(info.value).startswith(str(path))


def test_a_symlink_is_not_followed(tmp_path):
    real = issue_randstruct_seed(tmp_path)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(InputError, match="cannot open"):
        randstruct.read_seed(tmp_path / "link")


def test_the_generator_writes_what_the_kernels_script_would_for_that_seed(tmp_path):
    """scripts/gen-randstruct-seed.sh's outputs: the seed, and the header with sha256 of it."""
    seed = "ab" * 32
    (tmp_path / "secret").write_text(seed)
    script = tmp_path / "gen.sh"
    script.write_text(randstruct.generator_script(str(tmp_path / "secret")))
    subprocess.run(["sh", str(script), str(tmp_path / "randstruct.seed"), str(tmp_path / "hash.h")], check=True)
    assert (tmp_path / "randstruct.seed").read_text() == seed + "\n"
    assert (tmp_path / "hash.h").read_text() == (
        f'#define RANDSTRUCT_HASHED_SEED "{hashlib.sha256(seed.encode()).hexdigest()}"\n')


def test_a_config_with_randstruct_is_not_built_without_a_seed(tmp_path):
    from obelisk.kernel_hardening.build import build

    config = tmp_path / ".config"
    config.write_text("CONFIG_RANDSTRUCT=y\nCONFIG_RANDSTRUCT_FULL=y\n")
    with pytest.raises(InputError, match="no randstruct seed was given"):
        build("/usr/src/linux-source-6.1.tar.xz", config, "/nonexistent-ca.pem", tmp_path / "out")


def test_keys_from_an_earlier_obelisk_get_what_is_missing_and_keep_the_rest(tmp_path):
    """The demo and the e2e keys: an old key directory keeps its CA (its kernels stay cached) and gains a seed."""
    from obelisk.signer.keygen import RANDSTRUCT_SEED, generate, issue_missing

    generate(tmp_path / "keys", "ecdsa-p256")
    ca = (tmp_path / "keys" / "ca.pem").read_bytes()
    (tmp_path / "keys" / RANDSTRUCT_SEED).unlink()
    assert issue_missing(tmp_path / "keys") == ["a kernel randstruct seed"]
    assert (tmp_path / "keys" / RANDSTRUCT_SEED).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "ca.pem").read_bytes() == ca
    assert issue_missing(tmp_path / "keys") == []
