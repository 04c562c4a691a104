from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.core.errors import InputError
from obelisk.kernel_hardening.profile import available_profiles, load_profile, parse_version


def test_builtin_profiles_load_with_sources_and_reasons():
    assert {"kspp", "module-less"} <= set(available_profiles())
    for name in available_profiles():
        profile = load_profile(name)
        assert profile.requirements
        for req in profile.requirements:
            assert req.source in ("kspp", "clipos", "grapheneos", "cis", "kubernetes", "obelisk", "site")
            assert len(req.why) > 10, req.name


def test_module_less_extends_kspp_and_turns_modules_off():
    ml = load_profile("module-less")
    kspp = load_profile("kspp")
    names = {r.name for r in ml.requirements}
    assert {r.name for r in kspp.requirements} <= names
    modules = ml.kconfig_request("CONFIG_MODULES")
    assert modules is not None and modules.value == "n"
    for must in ("CONFIG_IMA_APPRAISE", "CONFIG_SECURITY_LOCKDOWN_LSM", "CONFIG_SQUASHFS_XATTR",
                 "CONFIG_TCG_TIS", "CONFIG_SYSTEM_TRUSTED_KEYRING", "CONFIG_IKCONFIG"):
        assert ml.kconfig_request(must) is not None, must


def test_renamed_options_resolve_per_version():
    req = load_profile("kspp").kconfig_request("CONFIG_RETPOLINE")
    assert req is not None and req.name == "CONFIG_MITIGATION_RETPOLINE"
    assert req.name_for(parse_version("6.1.0")) == "CONFIG_RETPOLINE"
    assert req.name_for(parse_version("6.9")) == "CONFIG_MITIGATION_RETPOLINE"
    assert req.name_for(None) == "CONFIG_MITIGATION_RETPOLINE"
    kmalloc = load_profile("kspp").kconfig_request("CONFIG_RANDOM_KMALLOC_CACHES")
    assert not kmalloc.exists_in(parse_version("6.1")) and kmalloc.exists_in(parse_version("6.6.3"))


def test_versions_stay_text():
    # "5.10" must not become 5.1 when read from YAML
    req = load_profile("kspp").kconfig_request("CONFIG_IOMMU_DEFAULT_DMA_STRICT")
    assert req.since == (5, 13)
    assert parse_version("5.10") == (5, 10)


@pytest.mark.parametrize("body, message", [
    ("kconfig:\n  - {name: CONFIG_X, value: y, source: kspp, why: because it is, colour: red}\n",
     "unknown field 'colour'"),
    ("kconfig:\n  - {name: X, value: y, source: kspp, why: because it is}\n", "CONFIG_NAME"),
    ("kconfig:\n  - {name: CONFIG_X, value: y, source: blog, why: because it is}\n", "source"),
    ("kconfig:\n  - {name: CONFIG_X, source: kspp, why: because it is}\n", "exactly one of"),
    ("kconfig:\n  - {name: CONFIG_X, value: y, source: kspp, why: because, since: soon}\n", "not a kernel version"),
    ("kernel:\n  - x\n", "unknown top-level field"),
    ("- just a list\n", "mapping"),
])
def test_bad_profiles_name_the_field(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(InputError) as exc:
        load_profile(str(path))
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_site_profile_extends_builtin_and_overrides_naming_the_tradeoff(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("name: site\nextends: [module-less]\nkconfig:\n"
                    "  - {name: CONFIG_RETPOLINE, value: n, source: site, why: measured on our fleet,"
                    " tradeoff: Spectre v2 in kernel code is left to the CPU's own mitigation}\n")
    profile = load_profile(str(path))
    reqs = [r for r in profile.requirements if "CONFIG_RETPOLINE" in r.names]
    assert len(reqs) == 1 and reqs[0].value == "n" and reqs[0].source == "site"
    assert reqs[0].explained == "measured on our fleet Trade-off: Spectre v2 in kernel code is left to the CPU's own " \
                                "mitigation"


def test_overriding_a_parents_recommendation_without_a_tradeoff_is_refused(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("name: site\nextends: [kspp]\nkconfig:\n"
                    "  - {name: CONFIG_KEXEC, value: y, source: site, why: live patching}\n")
    with pytest.raises(InputError, match=r"kconfig\[0\] \(CONFIG_KEXEC\): overrides profile kspp's CONFIG_KEXEC "
                                         r"\(expected n\) with y: say what that gives up in `tradeoff`"):
        load_profile(str(path))
    # restating the parent's condition (a new reason, a moot_if) is not a trade-off
    path.write_text("name: site\nextends: [kspp]\nkconfig:\n"
                    "  - {name: CONFIG_KEXEC, value: n, source: site, why: no kexec on our nodes}\n")
    assert load_profile(str(path)).kconfig_request("CONFIG_KEXEC").why == "no kexec on our nodes"


def test_kubernetes_node_profile_names_its_tradeoffs_and_keeps_module_less():
    profile = load_profile("kubernetes-node")
    by_name = {r.name: r for r in profile.requirements}
    assert by_name["CONFIG_MODULES"].value == "n" and by_name["CONFIG_IMA_APPRAISE"].value == "y"
    for name in ("CONFIG_CGROUPS", "CONFIG_MEMCG", "CONFIG_CGROUP_BPF", "CONFIG_SECCOMP_FILTER", "CONFIG_NET_NS",
                 "CONFIG_VETH", "CONFIG_BRIDGE", "CONFIG_OVERLAY_FS", "CONFIG_NF_TABLES", "CONFIG_NFT_COMPAT",
                 "CONFIG_DM_CRYPT", "CONFIG_DM_VERITY", "CONFIG_SECURITY_APPARMOR"):
        assert by_name[name].value == "y", name
    assert "apparmor" in by_name["CONFIG_LSM"].value.split(",")
    assert {r.name for r in profile.requirements if r.tradeoff} == {"CONFIG_USER_NS", "CONFIG_BPF_SYSCALL",
                                                                    "net.ipv4.ip_forward"}
    assert "BPF_JIT depends on MODULES" in by_name["CONFIG_BPF_SYSCALL"].explained
    assert by_name["lsm"].absent and by_name["cgroup_no_v1"].value == "all"


def test_unknown_profile_is_one_line_exit_2(obelisk_cli, tmp_path):
    cfg = tmp_path / "c"
    cfg.write_text("CONFIG_X=y\n")
    proc = obelisk_cli("kernel", "check", "--config", str(cfg), "--profile", "no-such-profile")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown profile 'no-such-profile'" in proc.stderr
    bad = tmp_path / "p.yaml"
    bad.write_text("kconfig:\n  - {name: CONFIG_X, value: y, source: kspp, why: because it is, optoin: 1}\n")
    proc = obelisk_cli("kernel", "check", "--config", str(cfg), "--profile", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "optoin" in proc.stderr


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                     st.sampled_from(["y", "n", "kspp", "CONFIG_X", "6.1", "high"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.sampled_from(
                                                              ["name", "value", "source", "why", "since", "one_of",
                                                               "renamed_from", "moot_if", "until", "x"]), inner,
                                                              max_size=5)), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["name", "extends", "kconfig", "cmdline", "sysctl", "other"]), _values,
                       max_size=4))
def test_hostile_profiles_only_raise_input_error(tmp_path, data):
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_profile(str(path))
    except InputError:
        pass


@pytest.mark.parametrize("body, message", [
    ("nmae: site\n", "unknown top-level field 'nmae'"),
    ("extend: [kspp]\n", "unknown top-level field 'extend'"),
    ("kconfig:\n  - {name: CONFIG_X, value: y, source: kspp, why: because it is, sevirity: high}\n",
     "kconfig[0] (CONFIG_X): unknown field 'sevirity' in a kconfig entry"),
    ("kconfig:\n  - {name: CONFIG_X, vaule: y, source: kspp, why: because it is}\n",
     "kconfig[0] (CONFIG_X): unknown field 'vaule' in a kconfig entry"),
    ("sysctl:\n  - {name: kernel.kptr_restrict, at_least: 1, source: kspp, why: because it is, snice: '5.1'}\n",
     "sysctl[0] (kernel.kptr_restrict): unknown field 'snice' in a sysctl entry"),
    ("cmdline:\n  - {name: slab_nomerge, present: true, source: kspp, why: because it is, satisfied_by: {}}\n",
     "cmdline[0] (slab_nomerge): unknown field 'satisfied_by' in a cmdline entry"),
    # keys of one kind are refused in another
    ("kconfig:\n  - {name: CONFIG_X, present: true, source: kspp, why: because it is}\n",
     "kconfig[0] (CONFIG_X): unknown field 'present' in a kconfig entry"),
    ("sysctl:\n  - {name: kernel.x, value: '1', source: kspp, why: because it is, "
     "satisfied_by_kconfig: {CONFIG_X: y}}\n",
     "sysctl[0] (kernel.x): unknown field 'satisfied_by_kconfig' in a sysctl entry"),
    # aliases and the CONFIG_X mappings
    (("kconfig:\n  - {name: CONFIG_X, value: y, source: kspp, why: because it is, "
      "renamed_from: [{name: CONFIG_OLD_X, untill: '5.1'}]}\n"),
     "kconfig[0] (CONFIG_X): renamed_from[0] (CONFIG_OLD_X): unknown field 'untill'"),
    ("kconfig:\n  - {name: CONFIG_X, value: y, source: kspp, why: because it is, moot_if: {MODULES: n}}\n",
     "kconfig[0] (CONFIG_X): moot_if: 'MODULES' is not a Kconfig option"),
    # types
    ("cmdline:\n  - {name: slab_nomerge, present: false, source: kspp, why: because it is}\n",
     "cmdline[0] (slab_nomerge): present: expected true"),
    ("sysctl:\n  - {name: kernel.x, value: [1], source: kspp, why: because it is}\n",
     "sysctl[0] (kernel.x): value: expected"),
    ("kconfig:\n  - {name: CONFIG_X, at_least: true, source: kspp, why: because it is}\n",
     "kconfig[0] (CONFIG_X): at_least: expected an integer"),
    ("extends: [[kspp]]\n", "extends: expected a list of profile names"),
])
def test_misspelt_profile_keys_are_refused_naming_file_option_and_key(tmp_path, body, message):
    path = tmp_path / "site.yaml"
    path.write_text(body)
    with pytest.raises(InputError) as exc:
        load_profile(str(path))
    assert "\n" not in str(exc.value) and str(exc.value).startswith(f"{path}: "), str(exc.value)
    assert message in str(exc.value), str(exc.value)
