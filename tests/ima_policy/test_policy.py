import pytest

from obelisk.core import findings as report_format
from obelisk.core.errors import InputError
from obelisk.core.findings import Status
from obelisk.ima_policy import lint, profiles
from obelisk.ima_policy import policy as policy_format

UUID = "8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6"


def _ids(report):
    return {f.id for f in report.findings if f.status is Status.FAIL}


@pytest.mark.parametrize("name", ["appraise-rootfs", "appraise-containers", "measure-only", "appraise-all"])
def test_profiles_render_and_lint_clean(name):
    text = profiles.render(profiles.load(name), fsuuid=UUID)
    report = lint.lint_policy(text.encode(), name)
    assert not report.failed, [f.id + " " + f.detail for f in report.findings if f.status is Status.FAIL]
    policy = policy_format.parse(text)
    # every rule is preceded by a comment saying why it is there
    lines = text.splitlines()
    for rule in policy.rules:
        assert lines[rule.line - 2].startswith("# ") and len(lines[rule.line - 2]) > 10


def test_appraise_rootfs_scoped_to_image():
    policy = policy_format.parse(profiles.render(profiles.load("appraise-rootfs"), fsuuid=UUID))
    appraise = [r for r in policy.rules if r.action == "appraise"]
    for r in appraise:
        assert r.get("appraise_type") in ("imasig", "imasig|modsig")
        if r.get("func") in ("BPRM_CHECK", "MMAP_CHECK"):
            assert r.get("fsuuid") == UUID
        else:  # kernel-loaded content: appraised wherever it comes from, before any exclusion
            assert r.get("fsuuid") is None
    funcs = {r.get("func") for r in appraise}
    assert {"BPRM_CHECK", "MMAP_CHECK", "KEXEC_KERNEL_CHECK", "FIRMWARE_CHECK", "POLICY_CHECK"} <= funcs
    first_dont = min(r.line for r in policy.rules if r.action.startswith("dont_"))
    assert all(r.line < first_dont for r in appraise if r.get("func") == "POLICY_CHECK")


def test_render_needs_fsuuid():
    with pytest.raises(InputError, match="--fsuuid"):
        profiles.render(profiles.load("appraise-rootfs"))
    with pytest.raises(InputError, match="not a UUID"):
        profiles.render(profiles.load("appraise-rootfs"), fsuuid="nope")
    with pytest.raises(InputError, match="unknown IMA policy profile"):
        profiles.load("nope")


BAD = """\
# a policy with one of each problem
measure func=BPRM_CHECK template=ima-sig
measure func=BPRM_CHECK
mesure func=FILE_CHECK
measure func=FILE_CHECKS
measure fsmagic=zz
appraise func=BPRM_CHECK template=ima-ng appraise_type=imasig fsuuid=8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6
appraise func=KEXEC_CMDLINE
dont_appraise fsmagic=0x9fa0 appraise_type=imasig
appraise func=FIRMWARE_CHECK appraise_type=imasig|modsig
measure func=KEY_CHECK keyrings=.ima|.evm
appraise func=BPRM_CHECK appraise_type=imasig
appraise fsmagic=0xc36400 appraise_type=imasig
appraise func=BPRM_CHECK fsuuid=8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6 appraise_type=imasig
measure func=FILE_CHECK mask=MAY_READ
appraise fowner=0 appraise_type=imasig
uid=0 measure
measure func=BPRM_CHECK bogus=1
"""


def test_lint_finds_each_problem():
    report = lint.lint_policy(BAD.encode(), "bad.policy")
    ids = _ids(report)
    expected = {
        "ima.policy.shadowed.line-3",  # same as line 2
        "ima.policy.grammar.line-4",  # unknown action
        "ima.policy.grammar.line-5",  # unknown function
        "ima.policy.grammar.line-6",  # fsmagic not hex
        "ima.policy.combination.line-7",  # template= on appraise
        "ima.policy.combination.line-8",  # KEXEC_CMDLINE is a buffer
        "ima.policy.hash-appraisal.line-8",
        "ima.policy.combination.line-9",  # option on dont_appraise
        "ima.policy.combination.line-10",  # modsig only for modules/kexec
        "ima.policy.shadowed.line-14",  # line 7 (and 12) match first
        "ima.policy.appraise-network-fs.line-13",
        "ima.policy.measure-every-read.line-15",
        "ima.policy.measure-network-fs.line-15",
        "ima.policy.appraise-pseudo-fs.line-16",
        "ima.policy.appraise-every-open.line-16",
        "ima.policy.grammar.line-17",
        "ima.policy.grammar.line-18",  # unknown keyword
        "ima.policy.policy-unsigned.policy",
    }
    assert expected <= ids, expected - ids
    assert "ima.policy.combination.line-11" not in ids  # keyrings with KEY_CHECK is fine
    assert "ima.policy.shadowed.line-12" not in ids  # broader than line 7 (no fsuuid): not shadowed
    f = next(f for f in report.findings if f.id == "ima.policy.grammar.line-18")
    assert "bogus" in f.detail and f.evidence[0].location == "line 18"
    assert report.exit_code() == 1


def test_signatures_not_built():
    text = profiles.render(profiles.load("appraise-rootfs"), fsuuid=UUID)
    report = lint.lint_policy(text.encode(), "p", signed_build=False)
    assert any(i.startswith("ima.policy.signatures-not-built") for i in _ids(report))


def test_keylime_demo_policy_flags_network_volumes():
    """Keylime's documented demo policy measures every executable, also on CephFS/NFS."""
    text = ("dont_measure fsmagic=0x9fa0\ndont_measure fsmagic=0x62656572\ndont_measure fsmagic=0x01021994\n"
            "dont_measure obj_type=var_log_t\nmeasure func=BPRM_CHECK\nmeasure func=FILE_MMAP mask=MAY_EXEC\n"
            "measure func=MODULE_CHECK uid=0\n")
    report = lint.lint_policy(text.encode(), "keylime")
    ids = _ids(report)
    assert "ima.policy.measure-network-fs.line-5" in ids and "ima.policy.measure-network-fs.line-6" in ids
    assert not any(i.startswith("ima.policy.grammar") for i in ids)


def test_cli_render_and_lint(obelisk_cli, tmp_path):
    out = tmp_path / "policy"
    proc = obelisk_cli("ima", "policy", "render", "--profile", "appraise-rootfs", "--fsuuid", UUID, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"fsuuid={UUID}" in out.read_text()
    ok = obelisk_cli("ima", "policy", "lint", str(out), "--format", "json")
    assert ok.returncode == 0 and not report_format.parse(ok.stdout).failed
    (tmp_path / "bad").write_text(BAD)
    bad = obelisk_cli("ima", "policy", "lint", str(tmp_path / "bad"), "--format", "json")
    assert bad.returncode == 1
    missing = obelisk_cli("ima", "policy", "render", "--profile", "appraise-rootfs")
    assert missing.returncode == 2 and "--fsuuid" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    binary = obelisk_cli("ima", "policy", "lint", str(tmp_path / "bin"))
    assert binary.returncode == 2 and "not UTF-8" in binary.stderr
    listing = obelisk_cli("ima", "policy", "profiles", "--format", "json")
    assert {p["name"] for p in __import__("json").loads(listing.stdout)["profiles"]} == {
        "appraise-rootfs", "appraise-containers", "measure-only", "appraise-all"}


ZERO = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize("name", ["appraise-rootfs", "appraise-containers", "appraise-all"])
def test_profiles_safe_with_a_zero_fsuuid(name):
    """A SquashFS root has no UUID (all zeros), like tmpfs, memfd and NFS: the profiles must still
    keep those out of appraisal."""
    text = profiles.render(profiles.load(name), fsuuid=ZERO)
    report = lint.lint_policy(text.encode(), name)
    assert not report.failed, [f.id + " " + f.detail for f in report.findings if f.status is Status.FAIL]


def test_appraise_containers_is_appraise_rootfs_plus_overlayfs():
    """The same rules as appraise-rootfs, except that container layers (overlayfs) are measured and appraised
    for execution instead of excluded."""
    rootfs = policy_format.parse(profiles.render(profiles.load("appraise-rootfs"), fsuuid=ZERO))
    containers = policy_format.parse(profiles.render(profiles.load("appraise-containers"), fsuuid=ZERO))
    overlay = "0x794c7630"
    before = [r.text for r in rootfs.rules if r.get("fsmagic") != overlay]
    after = [r.text for r in containers.rules if r.get("fsmagic") != overlay]
    assert before == after
    assert sorted(r.text for r in containers.rules if r.get("fsmagic") == overlay) == sorted([
        f"measure func=BPRM_CHECK fsmagic={overlay} template=ima-sig",
        f"appraise func=BPRM_CHECK fsmagic={overlay} appraise_type=imasig",
        f"measure func=MMAP_CHECK mask=MAY_EXEC fsmagic={overlay} template=ima-sig",
        f"appraise func=MMAP_CHECK mask=MAY_EXEC fsmagic={overlay} appraise_type=imasig"])


def test_zero_fsuuid_scopes_nothing():
    text = f"appraise func=POLICY_CHECK appraise_type=imasig\nappraise func=BPRM_CHECK fsuuid={ZERO} " \
           f"appraise_type=imasig\n"
    ids = _ids(lint.lint_policy(text.encode(), "p"))
    assert "ima.policy.appraise-pseudo-fs.line-2" in ids
    fixed = f"appraise func=BPRM_CHECK fsuuid={UUID} appraise_type=imasig\n"
    assert not any(i.startswith("ima.policy.appraise-pseudo-fs") for i in _ids(lint.lint_policy(fixed.encode(), "p")))
