"""Hostile files into every command that parses one: exit 2 (or 1), exactly one stderr line, bounded
time (20 s) and memory (2 GiB of address space), never `internal error`, a hang or an out-of-memory.

The inputs and commands are those of bench/fuzz_commands.py (issue 18's classes); this runs a
matrix small enough for CI, plus the specific findings of the issue as fixed cases.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_commands", ROOT / "bench" / "fuzz_commands.py")
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

TIMEOUT = 20
ADDRESS_SPACE = 2 << 30

# Every command meets the classes that stress the reader itself; the format-specific ones go where they apply.
COMMON = ("random", "fifo", "dev-zero", "sparse-4g", "deep-json", "big-int-json")
EXTRA = {
    "ima policy lint": ("lint-amplify", "lint-amplify-320k"),
    "image verify": ("infinity-json", "type-swap-json"),
    "kernel check --profile": ("yaml-bad-utf8", "big-int-yaml", "deep-yaml", "yaml-bomb", "yaml-type-swap"),
    "kernel check --waivers": ("yaml-bad-utf8", "big-int-yaml"),
    "scan --waivers": ("yaml-bad-utf8", "big-int-yaml", "yaml-bomb"),
    "image check-spec": ("yaml-bad-utf8", "big-int-yaml", "deep-yaml", "yaml-bomb", "yaml-type-swap"),
    "kernel inspect": ("bzimage-gzip-bomb",),
    "kernel check --config": ("bzimage-gzip-bomb",),
    "report render": ("infinity-json", "type-swap-json", "json-list"),
    "report diff": ("infinity-json", "type-swap-json"),
    "report verify": ("infinity-json", "type-swap-json"),
    "attest verify": ("infinity-json", "type-swap-json"),
    "report render --stig-benchmark": ("xml-bomb", "xml-huge-attr"),
}
CASES = [(cmd, cls) for cmd in fuzz.COMMANDS for cls in (*COMMON, *EXTRA.get(cmd, ()))]


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_bounded(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("OBELISK_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "obelisk", *argv], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, preexec_fn=_limit, stdin=subprocess.DEVNULL)


def assert_clean_failure(proc: subprocess.CompletedProcess[str], codes: tuple[int, ...] = (2, 1)) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode in codes, proc.stderr[-2000:]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode == 2:
        assert len(lines) == 1, proc.stderr[-2000:]
    else:
        assert len(lines) <= 1, proc.stderr[-2000:]
    return lines[0] if lines else ""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    makers = fuzz.classes(random.Random(1))
    made = {name: maker(base / f"in-{name}") for name, maker in makers.items()}
    return made, fuzz.fixed_files(base), base


@pytest.mark.parametrize(("command", "cls"), CASES, ids=[f"{c}|{k}" for c, k in CASES])
def test_hostile_file(inputs, command, cls):
    made, fixed, base = inputs
    argv = fuzz.command_argv(fuzz.COMMANDS[command], made[cls], fixed, base / f"img-{cls}")
    assert_clean_failure(run_bounded(*argv))


@pytest.mark.parametrize("rel", ["etc/kubernetes/manifests/kube-apiserver.yaml", "var/lib/kubelet/config.yaml"])
def test_scan_root_with_a_fifo_does_not_block(tmp_path, rel):
    fuzz.fifo_root(tmp_path, rel)
    report = tmp_path / "r"
    proc = run_bounded("scan", "--root", str(tmp_path), "--offline", "-q", "--format", "json", "-o", str(report))
    assert_clean_failure(proc, (1, 2))
    assert "it is a FIFO, not a regular file" in report.read_text()


def test_profile_extends_outside_its_directory_is_refused_without_echo(tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text("root:$6$verysecrethash:19000:0:99999:7:::\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    profile = tmp_path / "a" / "b" / "p.yaml"
    profile.write_text("name: p\nextends: [../../secret.yaml, ../../../../../../etc/shadow]\n")
    config = tmp_path / ".config"
    config.write_text("CONFIG_X=y\n")
    line = assert_clean_failure(run_bounded("kernel", "check", "--config", str(config), "--profile", str(profile)))
    assert "extends[0]" in line and "verysecret" not in line


def test_profile_unknown_field_is_not_echoed(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("root:$6$verysecrethash:19000:0:99999:7::: 1\n")
    config = tmp_path / ".config"
    config.write_text("CONFIG_X=y\n")
    line = assert_clean_failure(run_bounded("kernel", "check", "--config", str(config), "--profile", str(profile)))
    assert "verysecret" not in line


@pytest.mark.parametrize(("text", "field"), [
    ("source_date_epoch: 9223372036854775808\n", "source_date_epoch"),
    ("source_date_epoch: 4294967296\n", "source_date_epoch"),
    ("disk: {size_mib: 99999999999999}\n", "disk.size_mib"),
    ("agent: {port: 70000}\n", "agent.port"),
    ("signing: {ca: /dev/zero}\n", "signing.ca"),
])
def test_spec_numbers_and_files_checked_before_work(tmp_path, text, field):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: n\nima: {policy: measure-only}\n" + text)
    line = assert_clean_failure(run_bounded("image", "check-spec", str(spec)), (2,))
    assert f"{field}:" in line and str(spec) in line


def test_spec_relative_path_escaping_its_directory_is_refused(tmp_path):
    (tmp_path / "spec").mkdir()
    spec = tmp_path / "spec" / "spec.yaml"
    spec.write_text("name: n\nima: {policy: measure-only}\nsigning: {ca: ../../../../../../etc/shadow}\n")
    line = assert_clean_failure(run_bounded("image", "check-spec", str(spec)), (2,))
    assert "signing.ca" in line and "inside the spec's directory" in line


def test_spec_file_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "ca.pem")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: n\nima: {policy: measure-only}\nsigning: {ca: ca.pem}\n")
    line = assert_clean_failure(run_bounded("image", "check-spec", str(spec)), (2,))
    assert "signing.ca" in line and "not a regular file" in line


def test_kernel_inspect_gzip_bomb_is_bounded(inputs):
    path = inputs[0]["bzimage-gzip-bomb"]  # 1 MB of gzip inflating to 1,000 MiB
    line = assert_clean_failure(run_bounded("kernel", "inspect", str(path)), (2,))
    assert str(path) in line and "offset" in line and "inflates beyond" in line


def test_gzip_config_bomb_is_bounded(tmp_path):
    path = tmp_path / "config.gz"
    path.write_bytes(gzip.compress(b"#" * (200 << 20), compresslevel=9))
    line = assert_clean_failure(run_bounded("kernel", "check", "--config", str(path)), (2,))
    assert str(path) in line and "inflates beyond" in line


def test_lint_one_rule_repeating_a_keyword(tmp_path):
    path = tmp_path / "policy"
    path.write_bytes(b"measure " + b"func=FILE_CHECK " * 20000 + b"\n")
    proc = run_bounded("ima", "policy", "lint", "--format", "json", "-o", os.devnull, str(path))
    assert_clean_failure(proc, (1,))
