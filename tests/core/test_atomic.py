import os

import pytest

from obelisk.core import atomic


def test_interrupted_write_leaves_nothing_that_looks_finished(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_output(target) as handle:
            handle.write(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_complete_write_replaces_with_mode(tmp_path):
    target = tmp_path / "key"
    target.write_bytes(b"old")
    atomic.write_bytes(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new" and (os.stat(target).st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_atomic_directory_appears_only_when_complete(tmp_path):
    out = tmp_path / "image"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_directory(out) as work:
            (work / "manifest.json").write_text("{}")
            raise KeyboardInterrupt
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic.atomic_directory(out) as work:
        (work / "manifest.json").write_text("{}")
    assert (out / "manifest.json").read_text() == "{}"
