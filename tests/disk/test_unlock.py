"""The node-side unlock of /var (runs on the node from /sbin/obelisk-init); its decisions, on the host."""

from __future__ import annotations

import subprocess

import pytest

from obelisk.cli import node_init as node_init_cli
from obelisk.core.errors import ObeliskError
from obelisk.disk import unlock as node_init


def test_cmdline_value():
    line = "console=ttyS0 obelisk.var=/dev/vdc obelisk.var.extra=x quiet"
    assert node_init.cmdline_value(line, "obelisk.var", "/dev/vdb") == "/dev/vdc"
    assert node_init.cmdline_value("quiet", "obelisk.var", "/dev/vdb") == "/dev/vdb"


def test_ext_superblock_detection(tmp_path):
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * (4 << 20))
    assert not node_init.has_ext_filesystem(str(blank))
    fs = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", str(fs), "4M"], check=True)
    assert node_init.has_ext_filesystem(str(fs))


def test_a_plain_disk_in_place_of_the_encrypted_var_is_refused(tmp_path):
    """Never used, never formatted: someone may have swapped the disk for one with planted data."""
    fs = tmp_path / "var.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", str(fs), "8M"], check=True)
    before = fs.read_bytes()
    with pytest.raises(ObeliskError, match="not a LUKS2 volume"):
        node_init.unlock_var(str(fs), mountpoint=str(tmp_path / "mnt"))
    assert fs.read_bytes() == before


def test_failure_leaves_var_a_tmpfs_and_exit_1(tmp_path, monkeypatch, capsys):
    fs = tmp_path / "var.img"
    fs.write_bytes(b"\0" * (1 << 20))
    mounted = []
    monkeypatch.setattr(node_init, "mount", lambda *a, **k: mounted.append(a))
    assert node_init_cli.main(["unlock-var", "--device", str(fs), "--mount", str(tmp_path)]) == 1
    assert mounted == [("tmpfs", str(tmp_path), "tmpfs")]
    assert "FATAL: /var stays locked" in capsys.readouterr().out
