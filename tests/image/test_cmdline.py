"""The kernel command line is fixed by the build (it is measured into PCR 11)."""

from __future__ import annotations

from obelisk.image.cmdline import kernel_cmdline
from obelisk.image.spec import parse_spec


def _spec(**sections):
    return parse_spec({"name": "n1", **sections}, "spec.yaml", ".")


def test_spec_words_first_then_what_the_initramfs_and_ima_need():
    line = kernel_cmdline(_spec(kernel={"cmdline": ["console=ttyS0", "quiet"]}, ima={"policy": "measure-only"}))
    words = line.split()
    assert words[:2] == ["console=ttyS0", "quiet"]
    for word in ("initramfs_async=0", "obelisk.root=/dev/vda", "obelisk.var=/dev/vdb", "obelisk.config=/dev/vdc",
                 "obelisk.image=n1", "ip=dhcp", "ima_template=ima-sig", "ima_hash=sha256", "panic=-1"):
        assert word in words


def test_no_ima_parameters_without_a_policy():
    assert "ima_template=ima-sig" not in kernel_cmdline(_spec(ima={"policy": "none"})).split()


def test_same_spec_same_line():
    a = _spec(kernel={"cmdline": ["console=ttyS0"]}, ima={"policy": "none"})
    assert kernel_cmdline(a) == kernel_cmdline(_spec(kernel={"cmdline": ["console=ttyS0"]}, ima={"policy": "none"}))
