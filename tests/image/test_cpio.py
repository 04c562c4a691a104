"""newc cpio: round trip, reproducibility, what the kernel's format and GNU cpio agree on, hostile input."""

from __future__ import annotations

import stat
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core.errors import ParseError
from obelisk.image import cpio


def _sample() -> list[cpio.Entry]:
    return [cpio.Entry.file("init", b"#!/bin/sh\n", 0o755, mtime=5), cpio.Entry.directory("bin", mtime=5),
            cpio.Entry.symlink("bin/sh", "busybox", mtime=5), cpio.Entry.device("dev/console", True, 5, 1),
            cpio.Entry.directory("dev"), cpio.Entry.file("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755)]


def test_round_trip_sorted():
    data = cpio.serialize(_sample())
    back = cpio.parse(data)
    assert [e.name for e in back] == sorted(e.name for e in _sample())
    by = {e.name: e for e in back}
    assert by["bin/busybox"].data.startswith(b"\x7fELF")
    assert stat.S_ISCHR(by["dev/console"].mode) and by["dev/console"].rdev_minor == 1
    assert cpio.serialize(list(back)) == data


def test_order_of_input_does_not_matter():
    assert cpio.serialize(_sample()) == cpio.serialize(list(reversed(_sample())))


def test_gnu_cpio_reads_it(tmp_path):
    data = cpio.serialize(_sample())
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()]
    assert names == sorted(e.name for e in _sample())
    assert "bin/sh -> busybox" in listing


def test_gnu_cpio_archive_parses(tmp_path):
    (tmp_path / "a").write_bytes(b"hello")
    (tmp_path / "d").mkdir()
    data = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"a\nd\n", cwd=tmp_path,
                          capture_output=True, check=True).stdout
    entries = cpio.parse(data)
    assert [(e.name, e.data) for e in entries] == [("a", b"hello"), ("d", b"")]


def test_duplicate_names_refused():
    with pytest.raises(ValueError):
        cpio.serialize([cpio.Entry.file("a", b""), cpio.Entry.file("/a", b"")])


@pytest.mark.parametrize("cut", [0, 5, 50, 111, 200])
def test_truncated_archive_names_offset(cut):
    data = cpio.serialize(_sample())
    with pytest.raises(ParseError) as info:
        cpio.parse(data[:cut])
    assert "offset" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_hostile_bytes_never_crash(data):
    try:
        cpio.parse(cpio.MAGIC + data)
    except ParseError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_absurd_sizes_are_bounded(filesize, namesize):
    header = cpio.MAGIC + b"".join(b"%08X" % v for v in (1, 0o100644, 0, 0, 1, 0, filesize, 0, 0, 0, 0, namesize, 0))
    with pytest.raises(ParseError):
        cpio.parse(header + b"name\0\0" + b"x" * 64)
