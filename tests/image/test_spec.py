"""The spec model: parsing, every kind of rejection naming its field, docs generated from the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.image import spec as specmod
from obelisk.image.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def test_minimal_spec_gets_defaults(tmp_path):
    s = load_spec(_write(tmp_path, "name: n1\nima: {policy: measure-only}\n"))
    assert s.name == "n1"
    assert s.rootfs.base == "busybox"
    assert s.disk.pcrs == (11,)
    assert s.agent.port == 8443
    assert s.kubernetes.version == "1.31"


def test_version_like_values_stay_strings(tmp_path):
    s = load_spec(_write(tmp_path, "name: n1\nima: {policy: none}\nkubernetes: {version: 1.30}\n"))
    assert s.kubernetes.version == "1.30"


@pytest.mark.parametrize("text, field, words", [
    ("name: n\nbogus: 1\n", "bogus", "unknown key"),
    ("name: n\nkernel: {cmdlin: x}\n", "kernel.cmdlin", "unknown key"),
    ("version: '1'\n", "name", "missing"),
    ("name: n\nsigning: {key: nope.key, cert: nope.pem}\n", "signing.key", "no such file"),
    ("name: n\nima: {policy: appraise-rootfs}\n", "ima.policy", "signing.key"),
    ("name: n\nima: {policy: none}\ndisk: {encryption: true}\ntpm: {enabled: false}\n", "disk.encryption",
     "tpm.enabled"),
    ("name: n\nima: {policy: none}\ndisk: {pcrs: [7, 99]}\n", "disk.pcrs", "out of range"),
    ("name: n\nima: {policy: none}\nrootfs: {base: debian, packages: [python3-tpm2-pytss, cryptsetup-bin, "
     "e2fsprogs]}\ndisk: {encryption: true, pcrs: [7, 11]}\n", "disk.pcrs", "only PCR 11"),
    ("name: n\nima: {policy: none}\ndisk: {encryption: true}\n", "disk.encryption", "busybox"),
    ("name: n\nima: {policy: none}\nrootfs: {base: debian, packages: [python3]}\ndisk: {encryption: true}\n",
     "rootfs.packages", "cryptsetup-bin"),
    ("name: n\nima: {policy: bogus}\n", "ima.policy", "not one of"),
    ("name: n\nima: {policy: none}\nagent: {port: high}\n", "agent.port", "integer"),
    ("name: n\nima: {policy: none}\nrootfs: {base: directory}\n", "rootfs.path", "needs rootfs.path"),
    ("name: n\nima: {policy: none}\ntpm: {enabled: 1}\n", "tpm.enabled", "true or false"),
    ("name: n\nima: {policy: none}\nrootfs: {permissions: [{path: a, mode: '0644', uid: -5}]}\n",
     "rootfs.permissions", "out of range"),
    ("name: n\nima: {policy: none}\nrootfs: {permissions: [{path: a, mode: rwx}]}\n", "rootfs.permissions",
     "octal"),
    ("name: 'bad name'\nima: {policy: none}\n", "name", "letters"),
    ("- a list\n", "(top level)", "mapping"),
])
def test_rejections_name_the_field(tmp_path, text, field, words):
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text))
    assert info.value.key == field
    assert f"{field}: " in str(info.value)
    assert words in str(info.value)
    assert str(tmp_path / "spec.yaml") in str(info.value)


def test_paths_resolve_against_the_spec_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/tree").mkdir()
    s = load_spec(_write(tmp_path / "sub", "name: n\nima: {policy: none}\nrootfs: {base: directory, path: tree}\n"))
    assert s.rootfs.path == str(tmp_path / "sub/tree")
    assert s.to_json()["rootfs"]["path"] == "tree"


def test_pkcs11_uri_is_not_a_file(tmp_path):
    (tmp_path / "c.pem").write_text("x")
    s = load_spec(_write(tmp_path, "name: n\nsigning: {key: 'pkcs11:token=t;object=k', cert: c.pem}\n"))
    assert s.signing.key.startswith("pkcs11:")


def test_every_setting_is_documented_and_docs_are_current():
    docs = specmod.render_docs()
    for s in specmod.SETTINGS:
        assert f"`{s.key}`" in docs
        assert s.help
    for r in specmod.RULES:
        assert r.message in docs
    committed = (ROOT / "docs/image-spec.md").read_text()
    assert committed == docs, "docs/image-spec.md is stale: run `obelisk image spec-docs -o docs/image-spec.md`"


def test_example_skeleton_parses(tmp_path):
    text = specmod.example_yaml()
    data = __import__("yaml").safe_load(text)
    data["ima"]["policy"] = "none"
    spec = parse_spec(data, "example", tmp_path)
    assert spec.name == "example-node"


def test_cli_rejects_bad_spec_with_one_line(tmp_path, obelisk_cli):
    p = _write(tmp_path, "name: n\nkernel: {cmdlin: x}\n")
    r = obelisk_cli("build", str(p), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "kernel.cmdlin: unknown key" in r.stderr
    assert not (tmp_path / "out").exists()


def test_example_spec_is_valid(tmp_path):
    import shutil

    from obelisk.signer.keygen import generate

    shutil.copytree(ROOT / "examples/node", tmp_path / "node", ignore=shutil.ignore_patterns("keys", "out"))
    generate(tmp_path / "node/keys", "ecdsa-p256")
    s = load_spec(tmp_path / "node/spec.yaml")
    assert s.name == "example-node" and s.ima.policy == "appraise-rootfs"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                     st.floats(allow_nan=False, allow_infinity=False))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=12)
_keys = st.sampled_from([s.key for s in specmod.SETTINGS] + ["bogus", "kernel.bogus", "rootfs"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=8))
def test_hostile_specs_give_spec_errors_only(tmp_path_factory, entries):
    """Any YAML-shaped data is either a valid spec or one SpecError naming a field; never another exception."""
    data: dict = {"name": "fuzz"}
    for key, value in entries.items():
        section, _, name = key.rpartition(".")
        if section:
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][name] = value
        else:
            data[key] = value
    try:
        parse_spec(data, "fuzz.yaml", tmp_path_factory.getbasetemp())
    except SpecError as exc:
        assert exc.key and str(exc).startswith("fuzz.yaml: ")


FLEET_BASE = ("name: n\nima: {policy: none}\nrootfs: {base: debian, packages: [python3-tpm2-pytss, cryptsetup-bin, "
              "e2fsprogs]}\n")


@pytest.mark.parametrize("text, field, words", [
    (FLEET_BASE + "disk: {unlock: fleet}\nfleet: {url: 'https://f:8444'}\n", "disk.unlock", "disk.encryption"),
    (FLEET_BASE + "disk: {encryption: true, unlock: tpm+fleet}\n", "disk.unlock", "fleet.url"),
    (FLEET_BASE + "disk: {unlock: both}\n", "disk.unlock", "not one of"),
    (FLEET_BASE + "fleet: {url: 'http://f:8444'}\n", "fleet.url", "https://"),
    (FLEET_BASE + "fleet: {url: 'https://f:8444'}\n", "fleet.ca", "signing.ca"),
    (FLEET_BASE + "fleet: {url: 'https://f:8444'}\ntpm: {enabled: false}\n", "fleet.url", "tpm.enabled"),
    ("name: n\nima: {policy: none}\nfleet: {url: 'https://f:8444'}\n", "fleet.url", "busybox"),
    ("name: n\nima: {policy: none}\nrootfs: {base: debian, packages: [python3]}\nfleet: {url: 'https://f'}\n",
     "rootfs.packages", "python3-tpm2-pytss"),
    (FLEET_BASE + "fleet: {interval: 1}\n", "fleet.interval", "out of range"),
])
def test_fleet_rejections_name_the_field(tmp_path, text, field, words):
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text))
    assert info.value.key == field
    assert words in str(info.value)


def test_fleet_ca_defaults_to_signing_ca_and_alone_is_refused(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    s = load_spec(_write(tmp_path, FLEET_BASE + "fleet: {url: 'https://fleet.example:8444', ca: ca.pem}\n"
                                                "disk: {encryption: true, unlock: tpm+fleet}\n"))
    assert (s.fleet.url, s.fleet.interval, s.disk.unlock) == ("https://fleet.example:8444", 60, "tpm+fleet")
    assert s.to_json()["fleet"] == {"url": "https://fleet.example:8444", "interval": 60, "ca": "ca.pem"}
    assert load_spec(_write(tmp_path, "name: n\nima: {policy: none}\n")).disk.unlock == "tpm"
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, "name: n\nima: {policy: none}\nfleet: {ca: ca.pem}\n"))
    assert info.value.key == "fleet.ca" and "only used with fleet.url" in str(info.value)
