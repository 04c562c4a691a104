"""core.inputs.read_bounded: the one reader of user-named files (regular files only, bounded)."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from obelisk.core.errors import InputError
from obelisk.core.inputs import read_bounded


@pytest.fixture
def no_hang():
    """Fail instead of hanging if a read blocks (an open FIFO with no writer blocks without O_NONBLOCK)."""
    def expired(signum, frame):
        raise AssertionError("read_bounded blocked")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_reads_a_regular_file_up_to_the_limit(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert read_bounded(f, "thing", 100) == b"x" * 100
    assert read_bounded(str(f), "thing", 1 << 30) == b"x" * 100  # a large limit, a small read
    (tmp_path / "empty").write_bytes(b"")
    assert read_bounded(tmp_path / "empty", "thing", 0) == b""


def test_a_file_over_the_limit_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 101)
    with pytest.raises(InputError, match="thing larger than 100 bytes") as info:
        read_bounded(f, "thing", 100)
    assert str(f) in str(info.value)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * (1 << 20)))  # more than one read chunk
    with pytest.raises(InputError, match="larger than"):
        read_bounded(big, "thing", (1 << 21) + 7)


def test_a_fifo_is_refused_by_name_without_blocking(tmp_path, no_hang):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="cannot read AK record: it is a FIFO, not a regular file") as info:
        read_bounded(fifo, "AK record", 1 << 20)
    assert str(fifo) in str(info.value)


def test_devices_sockets_and_directories_are_refused(tmp_path, no_hang):
    with pytest.raises(InputError, match="a character device, not a regular file"):
        read_bounded("/dev/zero", "key", 1 << 16)  # would otherwise read up to the limit
    with pytest.raises(InputError, match="cannot read key: it is a directory"):
        read_bounded(tmp_path, "key", 1 << 16)
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        with pytest.raises(InputError, match="cannot read key: "):  # ENXIO from open(2), or fstat: a socket
            read_bounded(path, "key", 1 << 16)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(InputError, match="cannot read event log: not found"):
        read_bounded(tmp_path / "nope", "event log", 10)
    if os.geteuid() != 0:
        f = tmp_path / "secret"
        f.write_bytes(b"x")
        f.chmod(0)
        with pytest.raises(InputError, match="cannot read event log: Permission denied"):
            read_bounded(f, "event log", 10)
