from __future__ import annotations

import datetime as dt
import json

from obelisk.core.findings import Status
from obelisk.kernel_hardening import kconfig_file
from obelisk.kernel_hardening.check import Inputs, check
from obelisk.kernel_hardening.inputs import parse_cmdline, parse_sysctl_conf
from obelisk.kernel_hardening.profile import load_profile


def _by_id(findings):
    return {f.id: f for f in findings}


def _cfg(text: str, version: str = "6.1.0"):
    return kconfig_file.parse(f"# Linux/x86 {version} Kernel Configuration\n{text}".encode(), "test.config")


def test_kconfig_statuses_without_a_tree():
    cfg = _cfg("CONFIG_MODULES=y\nCONFIG_DEVMEM=y\n# CONFIG_KEXEC is not set\nCONFIG_RETPOLINE=y\n"
               "CONFIG_DEFAULT_MMAP_MIN_ADDR=4096\n")
    f = _by_id(check(load_profile("module-less"), Inputs(config=cfg)))
    assert f["kernel.kconfig.CONFIG_MODULES"].status is Status.FAIL
    assert f["kernel.kconfig.CONFIG_DEVMEM"].status is Status.FAIL
    assert f["kernel.kconfig.CONFIG_DEVMEM"].evidence[0].location == "line 3"
    assert f["kernel.kconfig.CONFIG_KEXEC"].status is Status.PASS
    # renamed in 6.9: the 6.1 name satisfies it
    assert f["kernel.kconfig.CONFIG_MITIGATION_RETPOLINE"].status is Status.PASS
    assert f["kernel.kconfig.CONFIG_DEFAULT_MMAP_MIN_ADDR"].status is Status.FAIL
    # only exists from 6.6 on: not a failure for a 6.1 config
    kmalloc = f["kernel.kconfig.CONFIG_RANDOM_KMALLOC_CACHES"]
    assert kmalloc.status is Status.SKIP and "6.1" in kmalloc.detail
    # the same config claiming 6.8 must fail it
    f68 = _by_id(check(load_profile("module-less"), Inputs(config=_cfg("CONFIG_MODULES=y\n", "6.8.0"))))
    assert f68["kernel.kconfig.CONFIG_RANDOM_KMALLOC_CACHES"].status is Status.FAIL


def test_module_signing_is_moot_without_modules():
    f = _by_id(check(load_profile("module-less"), Inputs(config=_cfg("# CONFIG_MODULES is not set\n"))))
    sig = f["kernel.kconfig.CONFIG_MODULE_SIG_FORCE"]
    assert sig.status is Status.SKIP and "moot" in sig.detail and "CONFIG_MODULES=n" in sig.detail
    f = _by_id(check(load_profile("module-less"), Inputs(config=_cfg("CONFIG_MODULES=y\n"))))
    assert f["kernel.kconfig.CONFIG_MODULE_SIG_FORCE"].status is Status.FAIL


def test_cmdline_and_sysctl():
    cfg = _cfg("# CONFIG_MODULES is not set\nCONFIG_INIT_ON_ALLOC_DEFAULT_ON=y\n")
    cmd = parse_cmdline("console=ttyS0 mitigations=off nokaslr slab_nomerge module.sig_enforce=0", "cmdline")
    f = _by_id(check(load_profile("module-less"), Inputs(config=cfg, cmdline=cmd)))
    assert f["kernel.cmdline.mitigations"].status is Status.FAIL
    assert f["kernel.cmdline.nokaslr"].status is Status.FAIL
    assert f["kernel.cmdline.slab_nomerge"].status is Status.PASS
    assert f["kernel.cmdline.init_on_alloc"].status is Status.PASS  # satisfied by the config default
    assert f["kernel.cmdline.init_on_free"].status is Status.FAIL
    assert f["kernel.cmdline.module.sig_enforce"].status is Status.SKIP  # no modules
    sysctls = parse_sysctl_conf("kernel.kptr_restrict = 1\nkernel.yama.ptrace_scope = 3\n", "s.conf")
    f = _by_id(check(load_profile("kspp"), Inputs(sysctls=sysctls)))
    assert f["kernel.sysctl.kernel.kptr_restrict"].status is Status.FAIL
    assert f["kernel.sysctl.kernel.yama.ptrace_scope"].status is Status.PASS  # at_least 1
    assert f["kernel.sysctl.kernel.dmesg_restrict"].status is Status.FAIL


def test_debian_config_against_the_real_tree(kernel_tree, debian_config):
    from obelisk.kernel_hardening.tree_index import load_index

    tree = load_index(kernel_tree)
    assert tree.version.startswith("6.1.")
    cfg = kconfig_file.read(debian_config)
    findings = check(load_profile("module-less"), Inputs(config=cfg, tree=tree))
    f = _by_id(findings)
    # no option missing from 6.1 is reported as a plain failure
    for finding in findings:
        if finding.status is Status.FAIL and finding.section != "cmdline":
            req = load_profile("module-less").kconfig_request(finding.id.removeprefix("kernel.kconfig."))
            assert any(tree.defines(n) for n in req.names), finding.id
    for missing in ("CONFIG_RANDOM_KMALLOC_CACHES", "CONFIG_LIST_HARDENED"):
        assert f[f"kernel.kconfig.{missing}"].status is Status.SKIP, missing
        assert "does not exist in the 6.1" in f[f"kernel.kconfig.{missing}"].detail
    # blocked by an unmet dependency: named, with file and line
    stackleak = f["kernel.kconfig.CONFIG_GCC_PLUGIN_STACKLEAK"]
    assert stackleak.status is Status.FAIL and "GCC_PLUGINS at scripts/gcc-plugins/Kconfig:" in stackleak.detail
    assert "security/Kconfig.hardening:" in stackleak.detail
    # Debian has modules, so module signing is checked, not moot
    assert f["kernel.kconfig.CONFIG_MODULES"].status is Status.FAIL
    assert f["kernel.kconfig.CONFIG_MODULE_SIG"].status is Status.PASS


def test_waivers_and_expired_waivers(obelisk_cli, tmp_path, debian_config):
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text(
        "waivers:\n"
        "  - {id: kernel.kconfig.CONFIG_MODULES, reason: distribution kernel, approver: sec-team, "
        f"expires: '{tomorrow}'}}\n"
        "  - {id: kernel.kconfig.CONFIG_DEVMEM, reason: legacy tool, approver: sec-team, expires: '2020-01-01'}\n")
    proc = obelisk_cli("kernel", "check", "--config", str(debian_config), "--waivers", str(waivers), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    f = {x["id"]: x for x in report["findings"]}
    assert f["kernel.kconfig.CONFIG_MODULES"]["status"] == "waived"
    assert f["kernel.kconfig.CONFIG_DEVMEM"]["status"] == "fail"
    assert "expired" in f["kernel.kconfig.CONFIG_DEVMEM"]["detail"]


def test_running_machine(obelisk_cli, debian_config):
    # the test machine has no /proc/config.gz; --config stands in for it, /proc/cmdline and /proc/sys are real
    proc = obelisk_cli("kernel", "check", "--running", "--config", str(debian_config), "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    ids = {x["id"]: x for x in report["findings"]}
    assert report["subject"]["name"] == "running kernel"
    kptr = ids["kernel.sysctl.kernel.kptr_restrict"]
    assert kptr["observed"] == open("/proc/sys/kernel/kptr_restrict").read().strip()
    assert any(i.startswith("kernel.cmdline.") for i in ids)
