"""The kernel command line is fixed by the build (it is measured into PCR 11)."""

from __future__ import annotations

import pytest

from obelisk.image.cmdline import kernel_cmdline
from obelisk.image.spec import SpecError, parse_spec


def _spec(**sections):
    return parse_spec({"name": "n1", **sections}, "spec.yaml", ".")


def test_defaults_then_spec_words_then_what_ima_needs():
    line = kernel_cmdline(_spec(kernel={"cmdline": ["console=ttyS0", "quiet"]}, ima={"policy": "measure-only"}))
    words = line.split()
    assert words[-4:] == ["console=ttyS0", "quiet", "ima_hash=sha256", "ima_template=ima-sig"]
    for word in ("initramfs_async=0", "obelisk.root=slot", "obelisk.var=PARTLABEL=var",
                 "obelisk.config=/dev/vdb", "obelisk.image=n1", "ip=dhcp", "ima_template=ima-sig", "ima_hash=sha256",
                 "panic=-1"):
        assert word in words


def test_the_verity_root_words_come_before_the_root_device():
    """dm-mod.create= makes /dev/dm-0, which obelisk.root= names; the spec's words still come later."""
    root = ('dm-mod.create="root,,,ro,0 8 verity 1 PARTUUID=a PARTUUID=b 4096 4096 1 1 sha256 00 11"',)
    words = kernel_cmdline(_spec(kernel={"cmdline": ["quiet"]}, ima={"policy": "none"}), root).split(" ")
    assert words.index(root[0].split(" ")[0]) < words.index("obelisk.root=slot") < words.index("quiet")
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


def test_the_profiles_words_come_before_the_spec_words():
    words = kernel_cmdline(_spec(kernel={"cmdline": ["console=ttyS0"]}, ima={"policy": "none"})).split()
    assert words.index("obelisk.image=n1") < words.index("pti=on") < words.index("console=ttyS0")
    for word in ("slab_nomerge", "page_alloc.shuffle=1", "iommu.passthrough=0"):
        assert word in words


def _waivers(tmp_path, expires="2999-12-31"):
    path = tmp_path / "waivers.yaml"
    path.write_text(f"waivers:\n  - {{id: kernel.cmdline.pti, reason: 'vendor firmware bug', approver: sec-team, "
                    f"expires: '{expires}'}}\n")
    return str(path)


def test_a_spec_that_lowers_the_profile_is_refused_in_one_line_naming_each_check():
    from obelisk.image import cmdline

    spec = _spec(kernel={"profile": "kubernetes-node", "cmdline": ["pti=off", "lsm=landlock"]}, ima={"policy": "none"})
    with pytest.raises(SpecError) as info:
        cmdline.refuse_failing(spec, cmdline.profile_findings(spec, kernel_cmdline(spec)))
    message = str(info.value)
    assert message.startswith("spec.yaml: kernel.cmdline: the command line fails the kubernetes-node profile")
    assert "kernel.cmdline.pti (pti=off, expected pti=on)" in message and "kernel.cmdline.lsm" in message
    assert "\n" not in message


def test_a_waiver_lets_the_build_go_on_and_says_so(tmp_path):
    from obelisk.core.findings import Status
    from obelisk.image import cmdline

    spec = _spec(kernel={"cmdline": ["pti=off"], "waivers": _waivers(tmp_path)}, ima={"policy": "none"})
    findings = cmdline.profile_findings(spec, kernel_cmdline(spec))
    cmdline.refuse_failing(spec, findings)  # nothing left failing
    waived = [f for f in findings if f.status is Status.WAIVED]
    assert [(f.id, f.observed, f.waiver.approver) for f in waived] == [("kernel.cmdline.pti", "pti=off", "sec-team")]


def test_an_expired_waiver_waives_nothing(tmp_path):
    from obelisk.image import cmdline

    spec = _spec(kernel={"cmdline": ["pti=off"], "waivers": _waivers(tmp_path, "2020-01-01")}, ima={"policy": "none"})
    with pytest.raises(SpecError, match=r"kernel.cmdline.pti \(pti=off, expected pti=on, waiver expired 2020-01-01\)"):
        cmdline.refuse_failing(spec, cmdline.profile_findings(spec, kernel_cmdline(spec)))


def test_preflight_refuses_before_any_work_and_records_the_waivers(tmp_path):
    from obelisk.image import build
    from obelisk.image import manifest as mf

    with pytest.raises(SpecError, match="kernel.cmdline: "):
        build.preflight(_spec(kernel={"cmdline": ["pti=off"]}, ima={"policy": "none"}))
    waived = _spec(kernel={"cmdline": ["pti=off"], "waivers": _waivers(tmp_path)}, ima={"policy": "none"})
    plan = build.preflight(waived)
    assert plan.cmdline_waived == (mf.CmdlineWaiver(id="kernel.cmdline.pti", observed="pti=off", expected="pti=on",
                                                    reason="vendor firmware bug", approver="sec-team",
                                                    expires="2999-12-31"),)


def test_a_line_over_the_kernels_limit_is_refused_naming_the_field():
    from obelisk.image.cmdline import MAX_CMDLINE, check_length
    from obelisk.image.spec import SpecError

    spec = _spec(kernel={"cmdline": ["quiet"]}, ima={"policy": "none"})
    check_length(spec, "x" * MAX_CMDLINE)
    with pytest.raises(SpecError, match=r"kernel.cmdline: the command line is 2048 bytes, over the kernel's 2047"):
        check_length(spec, "x" * (MAX_CMDLINE + 1))
