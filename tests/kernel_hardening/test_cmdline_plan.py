"""The command line a profile asks for: every built-in profile's words pass its own checks."""

from __future__ import annotations

import pytest

from obelisk.core.findings import Status
from obelisk.kernel_hardening import cmdline_plan
from obelisk.kernel_hardening.profile import available_profiles, load_profile


@pytest.mark.parametrize("name", available_profiles())
def test_the_profiles_own_words_pass_its_command_line_checks(name):
    profile = load_profile(name)
    findings = cmdline_plan.cmdline_findings(profile, " ".join(cmdline_plan.profile_words(profile)), "line")
    assert [f.id for f in findings if f.status is Status.FAIL] == []
    assert len(findings) == len(profile.of_kind("cmdline"))


def test_module_less_words_include_what_the_config_defaults_to_and_skip_the_moot():
    words = cmdline_plan.profile_words(load_profile("module-less"))
    for word in ("slab_nomerge", "page_alloc.shuffle=1", "pti=on", "iommu.passthrough=0", "init_on_alloc=1"):
        assert word in words
    assert not any(w.startswith("module.sig_enforce") for w in words)  # CONFIG_MODULES=n: moot
    assert not any(w.startswith(("nokaslr", "mitigations", "lockdown", "ima_appraise")) for w in words)


def test_kubernetes_node_adds_cgroup_v2_only():
    assert "cgroup_no_v1=all" in cmdline_plan.profile_words(load_profile("kubernetes-node"))
    assert "cgroup_no_v1=all" not in cmdline_plan.profile_words(load_profile("module-less"))


def test_a_word_that_lowers_the_profile_fails_it():
    profile = load_profile("kubernetes-node")
    line = " ".join([*cmdline_plan.profile_words(profile), "lsm=landlock,yama", "pti=off"])
    failed = {f.id for f in cmdline_plan.cmdline_findings(profile, line, "line") if f.status is Status.FAIL}
    assert failed == {"kernel.cmdline.lsm", "kernel.cmdline.pti"}
