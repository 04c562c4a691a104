"""The node's shell scripts (image/scripts.py, image/templates/*.sh.j2): the bytes they render to,
and dash, busybox sh and shellcheck on every rendering.

The renderings cover both boot paths: the bundled example (TPM, /var on LUKS2), a TPM with a plain
/var, and no TPM at all (another agent port).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from obelisk.image import build, initramfs, measure, scripts
from obelisk.image.spec import Spec, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"


def example_spec(tmp: Path) -> Spec:
    """examples/node/spec.yaml as it is, with empty stand-ins for its keys (Secure Boot's too) and kernel source."""
    shutil.copytree(EXAMPLE, tmp / "node")
    data = yaml.safe_load((tmp / "node" / "spec.yaml").read_text())
    secure_boot = data["secure_boot"]
    seed = tmp / "node" / data["kernel"]["randstruct_seed"]
    seed.parent.mkdir(parents=True, exist_ok=True)
    seed.write_text("0" * 64)
    seed.chmod(0o600)
    for path in (data["signing"]["key"], data["signing"]["cert"], data["signing"]["ca"], data["disk"]["policy_key"],
                 data["disk"]["policy_cert"], secure_boot["pk_cert"], secure_boot["kek_cert"], secure_boot["db_key"],
                 secure_boot["db_cert"]):
        (tmp / "node" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "node" / path).touch()
    (tmp / "linux.tar.xz").touch()
    data["kernel"]["source"] = str(tmp / "linux.tar.xz")
    (tmp / "node" / "spec.yaml").write_text(yaml.safe_dump(data))
    return load_spec(tmp / "node" / "spec.yaml")


def small_spec(*, tpm: bool, port: int) -> Spec:
    return parse_spec({"name": "n", "version": "1", "ima": {"policy": "none"}, "tpm": {"enabled": tpm},
                       "agent": {"port": port}}, "test", ".")


def init_for(spec: Spec) -> str:
    """/init as build.step_initramfs renders it for `spec`."""
    return initramfs.render_init(measure=spec.tpm.enabled, var_mode=build.var_mode(spec))


# id -> (template, render(tmp_path), sha256). Digests: what the scripts rendered to before they were
# templates (Python strings filled in with .replace); the build caches on them, and the initramfs's
# and root's bytes follow from them: change them on purpose only (obelisk-init's changed once since, when
# the node's entry points moved to obelisk.cli.node_init and obelisk.cli.node_agent; both changed with
# issue 13: systemd's boot phases in PCR 11, the dm-verity root, /var found by PARTLABEL, the .pcrsig).
RENDERINGS: dict[str, tuple[str, Callable[[Path], str], str]] = {
    "init-example": ("init.sh.j2", lambda tmp: init_for(example_spec(tmp)),
                     "832cdb1da2ae95a69873d05c53e183c5c7c732e43278533f34456ee51b758e3a"),
    "init-tpm-plain": ("init.sh.j2", lambda tmp: initramfs.render_init(measure=True, var_mode="plain"),
                       "753594781a3ad42ff1d317c5ed1621e62f6a6116080428f6db9360fae6a9e3eb"),
    "init-no-tpm": ("init.sh.j2", lambda tmp: initramfs.render_init(measure=False, var_mode="plain"),
                    "a9988a438e1345397875fb7213672d3aac5fd0b7ad6d7fcebba0fe5eedb4eeda"),
    "obelisk-init-example": ("obelisk-init.sh.j2", lambda tmp: build.node_init_script(example_spec(tmp)),
                             "e4498f834049e58fb5114a25c2237dc7eb39a4fb629f36ad5e8aed4914c6637c"),
    "obelisk-init-tpm-plain": ("obelisk-init.sh.j2",
                               lambda tmp: build.node_init_script(small_spec(tpm=True, port=8443)),
                               "234a79b894cd50794e691aac9d8ef40e1cad8f3bab7efac765f63c03c2c2fe91"),
    "obelisk-init-no-tpm": ("obelisk-init.sh.j2", lambda tmp: build.node_init_script(small_spec(tpm=False, port=9443)),
                            "3e7f479814b715389014f8295c7dfa28620f20ff646f18a663cf9f878e445abb"),
    "tpm-send": ("tpm-send.sh.j2", lambda tmp: measure.shell_send(),
                 "d0fd551961af1197f330d9223a99ff5bb427e858f781a13187c7ed1a8b745383"),
    "tpm-functions": ("tpm-extend.sh.j2", lambda tmp: measure.shell_functions(),
                      "4bfad51cff2a393ade01b5b7695328617b7cdd8f50c661651d1b3d9f6f8e0d7b"),
}

# shellcheck's findings that are what the scripts mean, each allowed on the lines it names only
# (the regex is matched against the whole rendered line, stripped).
ACCEPTED: tuple[tuple[int, str, str], ...] = (
    (2050, r'if \[ "(yes|no|plain|luks2)" = (yes|luks2) \]; then',
     "settings are tested at run time on purpose: every rendering holds, and every check sees, the whole script"),
    (2059, r'printf "\$\(echo "[0-9a-f]+\$1" \| sed \'s/\.\./\\\\x&/g\'\)" > "\$cmd" \|\| return 1',
     "tpm_extend's format is hex digits made into \\x escapes, never a %: busybox printf turns them into bytes"),
    (2013, r"for arg in \$\(cat /proc/cmdline\); do",
     "the kernel command line is one line of words: splitting it into words is the point"),
    (2002, r"echo \"obelisk: node up \(\$\(cat /etc/obelisk/image \| tr '\\n' ' '\)\)\" > /dev/console",
     "style only (cat file | tr): kept, so that the scripts' bytes stay what they were"),
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian packages in packaging/apt-packages.txt")
    return path


def sh_syntax(shell: list[str], script: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "script.sh"
    path.write_text(script)
    return subprocess.run([*shell, "-n", str(path)], capture_output=True, text=True, check=False)


def shellcheck(script: str) -> list[tuple[int, int, str, str]]:
    """shellcheck -s sh's findings: (line, code, message, the line's text)."""
    proc = subprocess.run([_tool("shellcheck"), "-s", "sh", "-f", "json1", "-"], input=script, capture_output=True,
                          text=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr  # 1: findings; anything else: shellcheck itself failed
    lines = script.splitlines() + [""]  # a parse error can point past the last line
    findings = [(c["line"], c["code"], c["message"], lines[c["line"] - 1].strip())
                for c in json.loads(proc.stdout)["comments"]]
    assert (proc.returncode == 1) == bool(findings)
    return findings


def accepted_by(code: int, text: str) -> set[int]:
    """Indexes of the ACCEPTED entries that allow finding `code` on a line reading `text`."""
    return {i for i, (c, pattern, _) in enumerate(ACCEPTED) if c == code and re.fullmatch(pattern, text)}


def not_accepted(findings: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str, str]]:
    return [f for f in findings if not accepted_by(f[1], f[3])]


@pytest.fixture(params=sorted(RENDERINGS))
def rendering(request, tmp_path) -> tuple[str, str]:
    _, render, _ = RENDERINGS[request.param]
    return request.param, render(tmp_path)


def test_every_template_is_rendered_here():
    assert {t for t, _, _ in RENDERINGS.values()} == {p.name for p in scripts.TEMPLATES.glob("*.j2")}


def test_bytes_are_pinned(rendering):
    name, text = rendering
    assert hashlib.sha256(text.encode()).hexdigest() == RENDERINGS[name][2], \
        f"{name} renders to other bytes: if that is meant, update its digest here"


@pytest.mark.parametrize("shell", [["dash"], ["busybox", "sh"]], ids=["dash", "busybox"])
def test_shells_parse_every_rendering(rendering, shell, tmp_path):
    _tool(shell[0])
    proc = sh_syntax(shell, rendering[1], tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_shellcheck_finds_nothing_in_every_rendering(rendering):
    assert not_accepted(shellcheck(rendering[1])) == []


def test_every_accepted_finding_still_occurs(tmp_path):
    """An allowance that no rendering needs any more is removed, not kept around."""
    used: set[int] = set()
    for name, (_, render, _) in RENDERINGS.items():
        for _, code, _, text in shellcheck(render(tmp_path / name)):
            used |= accepted_by(code, text)
    assert used == set(range(len(ACCEPTED)))


def test_the_checks_catch_a_broken_script(tmp_path):
    """The same environment and checks reject a template with a shell error: they are not vacuous."""
    broken = scripts.environment().from_string('#!/bin/sh\nif [ "{{ flag }}" = yes ]; then\n  echo "open\nfi\n')
    script = broken.render(flag="yes")
    for shell in (["dash"], ["busybox", "sh"]):
        proc = sh_syntax(shell, script, tmp_path)
        assert proc.returncode != 0 and proc.stderr, shell
    assert not_accepted(shellcheck(script))  # it does not parse either
    # parses, but splits a path on spaces; and a constant test outside the accepted lines is not allowed
    sloppy = scripts.environment().from_string('#!/bin/sh\nf="$1"\nrm $f\n[ "{{ flag }}" = no ] && echo x\n')
    assert sh_syntax(["dash"], sloppy.render(flag="yes"), tmp_path).returncode == 0
    assert {f[1] for f in not_accepted(shellcheck(sloppy.render(flag="yes")))} == {2086, 2050}


@pytest.mark.parametrize("value", ["8443; reboot", "$(reboot)", "a b", "'x'", '"', "", True])
def test_values_must_be_plain_shell_tokens(value):
    with pytest.raises(ValueError, match="not a plain shell token"):
        scripts.render("obelisk-init.sh.j2", measure="yes", var_mode="plain", port=value,
                       boot_complete="/usr/lib/obelisk/boot-complete.tpm2", boot_complete_digest="00", runtime="no")


def test_a_missing_value_is_an_error():
    import jinja2

    with pytest.raises(jinja2.UndefinedError, match="port"):
        scripts.render("obelisk-init.sh.j2", measure="yes", var_mode="plain",
                       boot_complete="/usr/lib/obelisk/boot-complete.tpm2", boot_complete_digest="00", runtime="no")


def test_the_boot_phase_log_lines_are_the_phases_extended():
    """/init and /sbin/obelisk-init log each phase they extend to /run/obelisk/boot-events; run by dash,
    those lines parse (tpm/bootevents.py) to exactly measure.phase_events(), in order."""
    from obelisk.tpm import bootevents

    init = init_for(small_spec(tpm=True, port=8443))
    printf = re.search(r"^  (printf '11 enter-initrd .*\\)$\n^ +(.*)$", init, re.MULTILINE)
    assert printf is not None and printf.group(2).startswith("> /newroot/run/obelisk/boot-events")
    echo = re.search(r'^ +(echo "11 sysinit [0-9a-f]{64}") >> /run/obelisk/boot-events$',
                     build.node_init_script(small_spec(tpm=True, port=8443)), re.MULTILINE)
    assert echo is not None
    lines = subprocess.run(["dash", "-c", printf.group(1)[:-1] + "\n" + echo.group(1)], capture_output=True,
                           check=True).stdout
    logged = bootevents.parse(lines, "boot-events")
    assert [(e.pcr, e.name.encode(), e.digest) for e in logged] == [(e.pcr, e.data, e.digest)
                                                                    for e in measure.phase_events()]
