import json

from obelisk.core import tools


def test_demo_signs_packs_and_verifies_the_example(obelisk_cli, tmp_path):
    proc = obelisk_cli("demo", "--workdir", str(tmp_path / "demo"), "--format", "json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["passed"] is True
    results = json.loads(open(data["results"]["verify"]).read())
    assert results["summary"]["fail"] == 0 and results["findings"][0]["status"] == "pass"
    listing = tools.run("rdsquashfs", ["-x", "/bin/busybox", data["results"]["squashfs"]]).stdout
    assert listing.startswith(b"security.ima=0x0302")  # an IMA v2 signature travels inside the image


def test_cli_usage_errors_are_one_line(obelisk_cli):
    proc = obelisk_cli("demo", "--example", "/nonexistent")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a directory" in proc.stderr
