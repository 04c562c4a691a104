"""`kernel config` against Debian's real 6.1 tree, proven equal to `make olddefconfig`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from obelisk.core import tools
from obelisk.kernel_hardening.kconfig_tree import load_kconfig, rewrite_kconfig_text


def make_config(tree: Path, workdir: Path, target: str, input_text: str | None = None) -> str:
    """Run the kernel's own C Kconfig tool (`make O=... <target>`) and return the .config it writes."""
    workdir.mkdir(parents=True, exist_ok=True)
    if input_text is not None:
        (workdir / ".config").write_text(input_text)
    tools.run("nice", ["-n", "10", tools.which("make"), "-s", "-C", str(tree), f"O={workdir}", target], timeout=600)
    return (workdir / ".config").read_text()


@pytest.fixture(scope="module")
def module_less(obelisk_cli_module, kernel_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("config")
    proc = obelisk_cli_module("kernel", "config", "--kernel-source", str(kernel_tree), "--profile", "module-less",
                              "-o", str(out / "module-less.config"), "--input-out", str(out / "input.config"),
                              "--report", str(out / "report.json"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def obelisk_cli_module():
    from tests.conftest import run_obelisk

    return run_obelisk


def test_tinyconfig_base_equals_make_tinyconfig(kernel_tree, tmp_path):
    from obelisk.kernel_hardening.kconfig_tree import config_header, kernel_version
    from obelisk.kernel_hardening.resolve import base_config

    kconf = load_kconfig(kernel_tree)
    ours = base_config(kconf, kernel_tree, "tinyconfig", config_header(kernel_version(kernel_tree)))
    assert ours == make_config(kernel_tree, tmp_path / "make", "tinyconfig")


def test_module_less_equals_make_olddefconfig(module_less, kernel_tree, tmp_path):
    out, report = module_less
    resolved = (out / "module-less.config").read_text()
    # the same input through the kernel's own C tool gives the same bytes
    assert make_config(kernel_tree, tmp_path / "a", "olddefconfig", (out / "input.config").read_text()) == resolved
    # and the result is a fixed point of olddefconfig
    assert make_config(kernel_tree, tmp_path / "b", "olddefconfig", resolved) == resolved
    assert "# CONFIG_MODULES is not set" in resolved and "CONFIG_IMA_APPRAISE=y" in resolved
    assert 'CONFIG_SYSTEM_TRUSTED_KEYS="obelisk-ca.pem"' in resolved


def test_every_request_is_explained(module_less):
    out, report = module_less
    f = {x["id"]: x for x in report["findings"]}
    assert json.loads((out / "report.json").read_text())["findings"] == report["findings"]
    assert f["kernel.kconfig.CONFIG_GCC_PLUGIN_STACKLEAK"]["status"] == "pass"  # gcc-12-plugin-dev is installed
    # no --randstruct-seed: RANDSTRUCT is left out on purpose, and the report says why
    randstruct = f["kernel.kconfig.CONFIG_RANDSTRUCT_FULL"]
    assert randstruct["status"] == "fail" and "left out: no randstruct seed given" in randstruct["detail"]
    assert "CONFIG_RANDSTRUCT_FULL=y" not in (out / "module-less.config").read_text()
    assert f["kernel.kconfig.CONFIG_MODULE_SIG_FORCE"]["status"] == "skip"
    assert "moot" in f["kernel.kconfig.CONFIG_MODULE_SIG_FORCE"]["detail"]
    assert f["kernel.kconfig.CONFIG_RANDOM_KMALLOC_CACHES"]["status"] == "skip"
    # requests that need other options get them through the dependency closure
    assert f["kernel.kconfig.CONFIG_IMA_DEFAULT_HASH_SHA256"]["status"] == "pass"
    assert f["kernel.kconfig.CONFIG_SECURITY_LOCKDOWN_LSM"]["status"] == "pass"
    for finding in report["findings"]:
        if finding["status"] == "fail":
            assert finding["detail"].startswith(("dropped", "left out")), finding
    # renamed options use the 6.1 name
    assert f["kernel.kconfig.CONFIG_MITIGATION_RETPOLINE"]["title"].startswith("CONFIG_RETPOLINE")


def test_debian_base_equals_make_olddefconfig(obelisk_cli_module, kernel_tree, debian_config, tmp_path):
    proc = obelisk_cli_module("kernel", "config", "--kernel-source", str(kernel_tree), "--base", str(debian_config),
                              "-o", str(tmp_path / "out.config"), "--input-out", str(tmp_path / "in.config"),
                              "--format", "text")
    assert proc.returncode == 0, proc.stderr
    assert "forced on: selected by" in proc.stdout  # olddefconfig would keep these silently
    resolved = (tmp_path / "out.config").read_text()
    assert make_config(kernel_tree, tmp_path / "m", "olddefconfig", (tmp_path / "in.config").read_text()) == resolved


def test_strict_and_fragment(obelisk_cli_module, kernel_tree, tmp_path):
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_OVERLAY_FS=y\nCONFIG_NO_SUCH_OPTION_EVER=y\n")
    proc = obelisk_cli_module("kernel", "config", "--kernel-source", str(kernel_tree), "--fragment", str(frag),
                              "-o", str(tmp_path / "out.config"), "--strict", "--format", "json")
    assert proc.returncode == 1  # GCC plugins are dropped on this machine: --strict fails
    f = {x["id"]: x for x in json.loads(proc.stdout)["findings"]}
    assert f["kernel.kconfig.CONFIG_OVERLAY_FS"]["status"] == "pass"
    assert f["kernel.kconfig.CONFIG_NO_SUCH_OPTION_EVER"]["status"] == "skip"
    assert "CONFIG_OVERLAY_FS=y" in (tmp_path / "out.config").read_text()


MINI_KCONFIG = """\
mainmenu "mini"

config MODULES
\tbool "Enable loadable module support"
\tmodules
\tdefault y

config OLD_FEATURE
\tbool
\ttransitional

config NEW_FEATURE
\tbool "new feature"
\tdefault OLD_FEATURE

config DRIVER
\ttristate "a driver"
\tdepends on NEW_FEATURE
"""


def test_new_keywords_parse_without_touching_the_tree(tmp_path):
    tree = tmp_path / "linux"
    (tree / "arch" / "x86").mkdir(parents=True)
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 18\nSUBLEVEL = 0\n")
    (tree / "Kconfig").write_text(MINI_KCONFIG)
    before = hashlib.sha256((tree / "Kconfig").read_bytes()).hexdigest()
    kconf = load_kconfig(tree)
    assert kconf.transitional == {"OLD_FEATURE"}
    assert kconf.modules.name == "MODULES"
    # an old config's value for the transitional symbol carries over to the new one ...
    old = tmp_path / "old.config"
    old.write_text("CONFIG_MODULES=y\nCONFIG_OLD_FEATURE=y\nCONFIG_DRIVER=m\n")
    kconf.load_config(str(old))
    out = tmp_path / "new.config"
    kconf.write_config(str(out))
    text = out.read_text()
    assert "CONFIG_NEW_FEATURE=y" in text and "CONFIG_DRIVER=m" in text
    # ... and the transitional symbol itself is never written
    assert "OLD_FEATURE" not in text
    assert hashlib.sha256((tree / "Kconfig").read_bytes()).hexdigest() == before


def test_rewrite_keeps_line_numbers():
    text, trans = rewrite_kconfig_text(MINI_KCONFIG)
    assert text.count("\n") == MINI_KCONFIG.count("\n")
    assert "\toption modules\n" in text and "\ttransitional\n" not in text and trans == {"OLD_FEATURE"}


def test_kubernetes_node_resolves_against_the_6_1_tree_dropping_nothing(obelisk_cli_module, kernel_tree, tmp_path):
    """Every option the runtime needs survives the tree's dependencies in a module-less kernel, and with the
    GCC plugin headers installed and the customer's randstruct seed nothing the profile asks is dropped."""
    seed = tmp_path / "randstruct.seed"
    seed.write_text("5eed" * 16)
    seed.chmod(0o600)
    proc = obelisk_cli_module("kernel", "config", "--kernel-source", str(kernel_tree), "--profile", "kubernetes-node",
                              "--randstruct-seed", str(seed), "-o", str(tmp_path / "k8s.config"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    failed = {f["id"].removeprefix("kernel.kconfig."): f["detail"] for f in report["findings"] if f["status"] == "fail"}
    assert failed == {}, failed
    resolved = (tmp_path / "k8s.config").read_text()
    for line in ("# CONFIG_MODULES is not set", "CONFIG_RANDSTRUCT_FULL=y", "CONFIG_GCC_PLUGIN_STACKLEAK=y",
                 "CONFIG_CGROUP_BPF=y", "CONFIG_MEMCG=y", "CONFIG_OVERLAY_FS=y",
                 "CONFIG_VETH=y", "CONFIG_BRIDGE_NETFILTER=y", "CONFIG_NFT_COMPAT=y", "CONFIG_SECCOMP_FILTER=y",
                 'CONFIG_LSM="landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,bpf"'):
        assert line in resolved.splitlines(), line


def test_an_option_with_unmet_dependencies_is_dropped_and_named_with_file_and_line(obelisk_cli_module, kernel_tree,
                                                                                    tmp_path):
    (tmp_path / "no-plugins.yaml").write_text(
        "name: no-plugins\ndescription: STACKLEAK asked for, its GCC_PLUGINS dependency refused\n"
        "kconfig:\n"
        "  - {name: CONFIG_GCC_PLUGINS, value: n, source: obelisk, why: test}\n"
        "  - {name: CONFIG_GCC_PLUGIN_STACKLEAK, value: y, source: kspp, why: test}\n")
    proc = obelisk_cli_module("kernel", "config", "--kernel-source", str(kernel_tree), "--profile",
                              str(tmp_path / "no-plugins.yaml"), "-o", str(tmp_path / "out.config"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    stackleak = {x["id"]: x for x in json.loads(proc.stdout)["findings"]}["kernel.kconfig.CONFIG_GCC_PLUGIN_STACKLEAK"]
    assert stackleak["status"] == "fail"
    assert "unmet dependencies: GCC_PLUGINS (GCC_PLUGINS at scripts/gcc-plugins/Kconfig:" in stackleak["detail"]
