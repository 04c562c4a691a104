"""`obelisk demo` runs the image pipeline's stages (tests/image/test_e2e.py runs them end to end);
here: what a user gets when the example is wrong."""


def test_demo_rejects_a_directory_without_a_spec(obelisk_cli, tmp_path):
    proc = obelisk_cli("demo", "--example", str(tmp_path), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no spec.yaml" in proc.stderr and str(tmp_path) in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing started


def test_demo_is_the_walkthrough_of_every_stage():
    from obelisk.lab.walkthrough import STAGES

    assert [name for name, _ in STAGES] == ["keys", "build", "verify", "serve", "boot", "attest", "fleet", "report",
                                            "stop"]
