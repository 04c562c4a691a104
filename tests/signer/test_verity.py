import io
import os
import subprocess

import pytest

from obelisk.core import tools
from obelisk.signer.verity import verity_digest


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, 300 * 4096 + 17])
def test_verity_digest_matches_fsverity_utils(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    out = subprocess.run([tools.which("fsverity"), "digest", "--compact", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert verity_digest(io.BytesIO(data)).hex() == out
