import json

import pytest

from obelisk.core.errors import InputError
from obelisk.ima_policy import keylime, reference
from obelisk.ima_policy.reference import ReferenceManifest, Rule

MANIFEST = ReferenceManifest(
    files={"/usr/bin/kubelet": ("sha256:" + "ab" * 32,), "/usr/lib/libc.so.6": ("sha256:" + "cd" * 32,
                                                                               "sha512:" + "ef" * 64)},
    rules=(Rule("/etc/kubernetes/**", "glob", "any-digest", "written at first boot"),
           Rule("^/var/lib/containerd/", "regex", "ignore", "container layers")),
    buffers={"kexec-cmdline": ("sha256:" + "01" * 32,)},
    image="worker-1")


def test_manifest_round_trips():
    assert reference.parse(reference.serialize(MANIFEST)) == MANIFEST


def test_rules_match_like_documented():
    m = MANIFEST.matcher()
    assert m.match("/etc/kubernetes/pki/ca.crt").action == "any-digest"
    assert m.match("/etc/kubernetesX") is None
    assert m.match("/var/lib/containerd/io/x").action == "ignore"
    assert reference.RuleMatcher((Rule("/usr/*/x", "glob", "ignore"),)).match("/usr/a/b/x") is None


@pytest.mark.parametrize("text, message", [
    ('{"schema": "nope"}', "schema"),
    ('{"schema": "obelisk.ima-reference/1", "files": {"rel/path": "sha256:00"}}', "not an absolute path"),
    ('{"schema": "obelisk.ima-reference/1", "files": {"/x": "SHA256:00"}}', "algo:lowercase-hex"),
    ('{"schema": "obelisk.ima-reference/1", "rules": [{"glob": "/x", "action": "skip"}]}', "rules[0].action"),
    ('{"schema": "obelisk.ima-reference/1", "rules": [{"regex": "(", "action": "ignore"}]}', "invalid pattern"),
    ("[1", "not JSON"),
])
def test_bad_manifests_named(text, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(")):
        reference.parse(text, "ref.json")


KEYLIME_POLICY = {
    "meta": {"version": 1, "generator": 3, "timestamp": "2024-01-01T00:00:00"},
    "release": 0,
    "digests": {"/usr/bin/bash": ["aa" * 32], "/usr/bin/old": ["bb" * 20]},
    "excludes": ["/tmp/.*", "/var/log/.*"],
    "keyrings": {".ima": ["cc" * 32]},
    "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
    "ima-buf": {"kexec-cmdline": ["dd" * 32]},
    "verification-keys": "",
}


def test_keylime_policy_read_write_round_trip():
    policy = keylime.from_json(KEYLIME_POLICY)
    again = keylime.parse(keylime.serialize(policy))
    assert again == policy
    assert again.to_json()["digests"] == KEYLIME_POLICY["digests"]


def test_keylime_to_reference_and_back():
    manifest = keylime.to_reference(keylime.from_json(KEYLIME_POLICY))
    assert manifest.files["/usr/bin/bash"] == ("sha256:" + "aa" * 32,)
    assert manifest.files["/usr/bin/old"] == ("sha1:" + "bb" * 20,)
    assert manifest.buffers[".ima"] == ("sha256:" + "cc" * 32,)
    assert manifest.matcher().match("/tmp/x").action == "ignore"
    back = keylime.from_reference(manifest)
    assert back.digests == keylime.from_json(KEYLIME_POLICY).digests
    assert back.excludes == ("/tmp/.*", "/var/log/.*")


def test_reference_to_keylime_keeps_digests_and_rules():
    policy = keylime.from_reference(MANIFEST)
    assert policy.digests["/usr/lib/libc.so.6"] == ("cd" * 32, "ef" * 64)
    import re
    assert any(re.match(x, "/etc/kubernetes/a/b") for x in policy.excludes)


def test_reference_load_accepts_keylime(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(KEYLIME_POLICY))
    assert reference.load(path).files["/usr/bin/bash"] == ("sha256:" + "aa" * 32,)


def test_cli_convert(obelisk_cli, tmp_path):
    (tmp_path / "m.json").write_text(reference.serialize(MANIFEST))
    proc = obelisk_cli("ima", "reference", "convert", str(tmp_path / "m.json"), "--to", "keylime",
                       "-o", str(tmp_path / "k.json"))
    assert proc.returncode == 0, proc.stderr
    k = json.loads((tmp_path / "k.json").read_text())
    assert k["meta"]["version"] == 1 and "/usr/bin/kubelet" in k["digests"]
    proc = obelisk_cli("ima", "reference", "convert", str(tmp_path / "k.json"), "--to", "obelisk",
                       "-o", str(tmp_path / "m2.json"))
    assert proc.returncode == 0, proc.stderr
    assert reference.load(tmp_path / "m2.json").files == MANIFEST.files
    bad = obelisk_cli("ima", "reference", "convert", str(tmp_path / "nope"), "--to", "obelisk", "-o", "x")
    assert bad.returncode == 2 and "cannot read" in bad.stderr
