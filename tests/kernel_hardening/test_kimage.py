from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core.errors import InputError
from obelisk.kernel_hardening import kimage


def fake_bzimage(payload: bytes, declared: int | None = None) -> bytes:
    """A setup header (boot protocol 2.15) followed by `payload` as the compressed kernel."""
    setup = bytearray(2 * 512)
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x1F1] = 1
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    struct.pack_into("<II", setup, 0x248, 0, declared if declared is not None else len(payload))
    return bytes(setup) + payload


def test_truncated_bzimage_names_the_offset():
    data = fake_bzimage(b"\x1f\x8b" + b"\0" * 100, declared=5000)
    with pytest.raises(InputError) as exc:
        kimage.parse(data, "bz")
    assert "truncated bzImage" in str(exc.value) and "offset" in str(exc.value)
    with pytest.raises(InputError, match="truncated bzImage"):
        kimage.parse(data[:0x220], "bz")


def test_corrupt_payload_is_reported():
    with pytest.raises(InputError, match="does not decompress"):
        kimage.parse(fake_bzimage(b"\xfd7zXZ\x00" + b"junk" * 50), "bz")
    with pytest.raises(InputError, match="unknown compression"):
        kimage.parse(fake_bzimage(b"\x00" * 64), "bz")


def test_non_kernel_elf_and_text(tmp_path, obelisk_cli):
    with pytest.raises(InputError, match="not a Linux kernel"):
        kimage.read("/bin/busybox")
    proc = obelisk_cli("kernel", "inspect", "/bin/busybox")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a Linux kernel" in proc.stderr
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\n" * 100)
    proc = obelisk_cli("kernel", "inspect", str(junk))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and str(junk) in proc.stderr


def test_ikconfig_extraction():
    import gzip

    blob = b"xx" + b"IKCFG_ST" + gzip.compress(b"CONFIG_MODULES=n\n") + b"IKCFG_ED" + b"yy"
    assert kimage.extract_ikconfig(blob) == "CONFIG_MODULES=n\n"
    assert kimage.extract_ikconfig(b"nothing here") is None
    with pytest.raises(InputError):
        kimage.extract_ikconfig(b"IKCFG_ST" + b"\x1f\x8bjunk" + b"IKCFG_ED")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_hostile_bytes_only_raise_input_error(data):
    for candidate in (data, fake_bzimage(data), b"\x7fELF" + data):
        try:
            kimage.parse(candidate, "fuzz")
        except InputError:
            pass


@pytest.mark.parametrize("compress, name", [
    (lambda b: __import__("gzip").compress(b), "gzip"),
    (lambda b: __import__("lzma").compress(b, format=__import__("lzma").FORMAT_XZ), "xz"),
    (lambda b: __import__("bz2").compress(b), "bzip2"),
])
def test_bzimage_payload_compressions(compress, name):
    # an x86_64 ELF carrying a Linux banner stands in for a kernel: the container format is what is tested
    elf = open("/bin/busybox", "rb").read() + b"Linux version 6.1.0-test (obelisk@obelisk) #1\n"
    img = kimage.parse(fake_bzimage(compress(elf)), "bz")
    assert img.format == "bzImage" and img.compression == name and img.boot_protocol == "2.15"
    assert img.banner.startswith("Linux version 6.1.0-test") and img.elf == elf
    assert img.section(".text") is not None and img.config_text is None
