"""core.cachedir decides the cache root for every cache, in the directories obelisk always used."""

from __future__ import annotations

from pathlib import Path

from obelisk.core.cachedir import cache_root, component_cache
from obelisk.kernel_hardening import cache as kernel_cache


def test_obelisk_cache_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("OBELISK_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "c"
    assert kernel_cache.root() == tmp_path / "c" / "kernel"
    assert not (tmp_path / "c").exists()
    assert kernel_cache.cache_dir("src") == tmp_path / "c" / "kernel" / "src"
    assert (tmp_path / "c" / "kernel" / "src").is_dir()


def test_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("OBELISK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "obelisk"
    assert component_cache("image", "rootfs-base") == tmp_path / "xdg" / "obelisk" / "image" / "rootfs-base"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "obelisk"
    assert kernel_cache.root() == Path(tmp_path / "home" / ".cache" / "obelisk" / "kernel")
