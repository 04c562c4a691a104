from __future__ import annotations

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core.errors import InputError
from obelisk.kernel_hardening import kconfig_file
from obelisk.kernel_hardening.inputs import parse_cmdline, parse_sysctl_conf

SAMPLE = b"""#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.0 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) 12.2.0"
CONFIG_MODULES=y
# CONFIG_DEVMEM is not set
CONFIG_DEFAULT_MMAP_MIN_ADDR=65536
CONFIG_SQUASHFS=m
"""


def test_parse_values_lines_and_version():
    cfg = kconfig_file.parse(SAMPLE, "sample")
    assert cfg.version == "6.1.0"
    assert cfg.get("CONFIG_CC_VERSION_TEXT") == "gcc (Debian 12.2.0-14) 12.2.0"
    assert cfg.get("CONFIG_DEVMEM") == "n" and not cfg.is_set("CONFIG_DEVMEM")
    assert cfg.get("CONFIG_SQUASHFS") == "m" and cfg.lines["CONFIG_SQUASHFS"] == 9
    assert cfg.get("CONFIG_ABSENT") is None


def test_gzip_config_as_proc_config_gz():
    assert kconfig_file.parse(gzip.compress(SAMPLE), "config.gz").values == kconfig_file.parse(SAMPLE).values


def test_serialize_round_trips():
    cfg = kconfig_file.parse(SAMPLE)
    text = kconfig_file.serialize(cfg.values, {"CONFIG_CC_VERSION_TEXT": "string"})
    assert kconfig_file.parse(text.encode()).values == cfg.values


@pytest.mark.parametrize("data, message", [
    (b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 100, "binary"),
    (b"root:x:0:0:root:/root:/bin/bash\n", "line 1: not a kernel configuration line"),
    (b"# only comments\n", "no CONFIG_"),
    (b"\xff\xfe garbage", "UTF-8"),
    (b"\x1f\x8b\x08\x00garbage", "gzip"),
])
def test_not_a_config(data, message):
    with pytest.raises(InputError) as exc:
        kconfig_file.parse(data, "f")
    assert message in str(exc.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_hostile_bytes_only_raise_input_error(data):
    try:
        kconfig_file.parse(data, "fuzz")
    except InputError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_hostile_text_cmdline_and_sysctl(text):
    parse_cmdline(text)
    try:
        parse_sysctl_conf(text)
    except InputError:
        pass


def test_cmdline_parsing():
    c = parse_cmdline('BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet "dyndbg=file x +p" slab-nomerge '
                      'mitigations=auto,nosmt -- init_arg=1\n')
    assert c.get("slab_nomerge") == (True, None)
    assert c.get("mitigations") == (True, "auto,nosmt")
    assert c.get("dyndbg") == (True, "file x +p")
    assert c.get("init_arg") == (False, None)


def test_sysctl_parsing():
    s = parse_sysctl_conf("# c\n; c\nkernel.kptr_restrict = 2\n-kernel/yama/ptrace_scope=1\nnet.x =  a   b\n")
    assert s.values == {"kernel.kptr_restrict": "2", "kernel.yama.ptrace_scope": "1", "net.x": "a b"}
    with pytest.raises(InputError, match="line 1"):
        parse_sysctl_conf("not a setting\n")


def test_not_a_config_on_the_cli_is_one_line(obelisk_cli, tmp_path):
    junk = tmp_path / "passwd"
    junk.write_text("root:x:0:0:root:/root:/bin/bash\n")
    proc = obelisk_cli("kernel", "check", "--config", str(junk))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(junk) in proc.stderr and "not a kernel configuration" in proc.stderr
