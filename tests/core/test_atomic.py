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


def test_a_character_device_target_is_written_in_place_not_replaced(tmp_path):
    """`-o /dev/null` as root: a rename over the target would turn the device node into a regular file."""
    import stat

    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    atomic.write_text(null, "discarded\n")
    assert stat.S_ISCHR(os.stat(null).st_mode)
    assert os.stat(null).st_rdev == os.makedev(1, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["null"]  # no temporary left beside it


def test_a_fifo_target_is_written_in_place(tmp_path):
    import stat
    import threading

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic.write_bytes(fifo, b"report\n")
    reader.join(10)
    assert got == [b"report\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_directory_target_is_refused_by_name(tmp_path):
    from obelisk.core.errors import InputError

    with pytest.raises(InputError, match="not a regular file"):
        atomic.write_text(tmp_path, "x")


def test_atomic_file_is_renamed_only_when_the_tool_finished(tmp_path):
    """Tools that write by name (sfdisk, mkfs.vfat) get a temporary path; a failure leaves no target."""
    target = tmp_path / "disk.raw"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_file(target) as work:
            work.write_bytes(b"half a disk")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_file(target, mode=0o600) as work:
        assert work.parent == tmp_path and work.name.startswith(".disk.raw.")
        work.write_bytes(b"disk")
    assert target.read_bytes() == b"disk" and (os.stat(target).st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["disk.raw"]
