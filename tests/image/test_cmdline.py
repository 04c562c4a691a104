"""The kernel command line is fixed by the build (it is measured into PCR 11)."""

from __future__ import annotations

from obelisk.image.cmdline import kernel_cmdline
from obelisk.image.spec import parse_spec


def _spec(**sections):
    return parse_spec({"name": "n1", **sections}, "spec.yaml", ".")


def test_defaults_then_spec_words_then_what_ima_needs():
    line = kernel_cmdline(_spec(kernel={"cmdline": ["console=ttyS0", "quiet"]}, ima={"policy": "measure-only"}))
    words = line.split()
    assert words[-4:] == ["console=ttyS0", "quiet", "ima_hash=sha256", "ima_template=ima-sig"]
    for word in ("initramfs_async=0", "obelisk.root=/dev/dm-0", "obelisk.var=PARTLABEL=var",
                 "obelisk.config=/dev/vdb", "obelisk.image=n1", "ip=dhcp", "ima_template=ima-sig", "ima_hash=sha256",
                 "panic=-1"):
        assert word in words


def test_the_verity_root_words_come_before_the_root_device():
    """dm-mod.create= makes /dev/dm-0, which obelisk.root= names; the spec's words still come later."""
    root = ('dm-mod.create="root,,,ro,0 8 verity 1 PARTUUID=a PARTUUID=b 4096 4096 1 1 sha256 00 11"',)
    words = kernel_cmdline(_spec(kernel={"cmdline": ["quiet"]}, ima={"policy": "none"}), root).split(" ")
    assert words.index(root[0].split(" ")[0]) < words.index("obelisk.root=/dev/dm-0") < words.index("quiet")
    assert " ".join(words).count("dm-mod.create=") == 1


def test_no_ima_parameters_without_a_policy():
    assert "ima_template=ima-sig" not in kernel_cmdline(_spec(ima={"policy": "none"})).split()


def test_same_spec_same_line():
    a = _spec(kernel={"cmdline": ["console=ttyS0"]}, ima={"policy": "none"})
    assert kernel_cmdline(a) == kernel_cmdline(_spec(kernel={"cmdline": ["console=ttyS0"]}, ima={"policy": "none"}))


def test_spec_can_name_other_disks():
    """The initramfs takes the last obelisk.root=: a spec for real hardware overrides the QEMU defaults."""
    words = kernel_cmdline(_spec(kernel={"cmdline": ["obelisk.root=/dev/nvme0n1p2"]}, ima={"policy": "none"})).split()
    roots = [w for w in words if w.startswith("obelisk.root=")]
    assert roots[-1] == "obelisk.root=/dev/nvme0n1p2"
