"""Fixtures shared across the suite: real external programs, started by the tests themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the project root: real third-party test inputs, schemas, DISA data."""
    assert SHARED.is_dir(), f"{SHARED} missing: tests need ../shared beside the project"
    return SHARED


@pytest.fixture
def swtpm(tmp_path):
    """A real swtpm on 127.0.0.1, already started up; yields obelisk.tpm.swtpm.SoftwareTPM."""
    from obelisk.tpm.swtpm import SoftwareTPM

    with SoftwareTPM.start(tmp_path / "swtpm-state") as tpm:
        yield tpm


def run_obelisk(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the obelisk CLI as a separate process (as a user would), from this checkout's src/."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT / "src")
    full_env.pop("OBELISK_DEBUG", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "obelisk", *args], input=input.decode() if input else None,
                          capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)


@pytest.fixture
def obelisk_cli():
    return run_obelisk


def extend_pcr11(tcti: str, digest: bytes) -> None:
    """What a node's initramfs does: TPM2_PCR_Extend(11, sha256 digest) from obelisk's command bytes,
    delivered by tpm2-tools' tpm2_send (an independent sender)."""
    from obelisk.image import measure

    subprocess.run(["tpm2_send", "-T", tcti], input=measure.extend_command(measure.PCR, digest), check=True,
                   capture_output=True)
