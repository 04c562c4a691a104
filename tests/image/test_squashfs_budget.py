"""A small SquashFS holding a large sparse file is refused before anything is unpacked (issue 18: 8 KiB holding
64 GiB; 1 GiB here, which gensquashfs packs in about a second)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from obelisk.core.errors import ParseError
from obelisk.image import squashfs

pytestmark = pytest.mark.skipif(shutil.which("gensquashfs") is None, reason="squashfs-tools-ng missing")


def _image(tmp_path: Path, size: int) -> Path:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    with open(tree / "d" / "big", "wb") as handle:
        handle.truncate(size)
    (tree / "small").write_bytes(b"hi\n")
    out = tmp_path / "img.sqfs"
    subprocess.run(["gensquashfs", "--pack-dir", str(tree), "--quiet", str(out)], check=True)
    return out


def test_sparse_file_beyond_the_budget_is_not_unpacked(tmp_path):
    image = _image(tmp_path, 1 << 30)
    assert image.stat().st_size < 1 << 20
    with squashfs.temp_workdir() as work:
        with pytest.raises(ParseError, match="not unpacked") as exc:
            squashfs.read_back(image, Path(work), declared=3)
        assert "\n" not in str(exc.value) and str(image) in str(exc.value)
        assert not any(Path(work).rglob("*"))
    assert not Path(work).exists()


def test_within_budget_is_unpacked(tmp_path):
    image = _image(tmp_path, 5000)
    sizes = squashfs.file_sizes(image, squashfs.describe(image))
    assert sizes["/small"] == 3 and 0 <= sizes["/d/big"] <= 5000
    with squashfs.temp_workdir() as work:
        back = squashfs.read_back(image, Path(work), declared=5003)
        assert (back.unpacked / "d" / "big").stat().st_size == 5000


def test_workdir_removed_on_sigterm(tmp_path):
    code = ("import os, signal, sys; from obelisk.image import squashfs\n"
            "with squashfs.temp_workdir() as w:\n"
            "    print(w, flush=True); os.kill(os.getpid(), signal.SIGTERM); signal.pause()\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=20)
    work = proc.stdout.strip()
    assert work and proc.returncode == 143 and not Path(work).exists()
