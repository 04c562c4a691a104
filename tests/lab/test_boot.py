"""Boot preparation without QEMU: command line, QEMU arguments, the provisioned /var disk and TPM."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization

from obelisk.attest.agent_certs import issue
from obelisk.core.errors import InputError
from obelisk.image import manifest as mf
from obelisk.lab import boot
from tests.conftest import extend_pcr11
from tests.image.manifests import sample_manifest

_SAMPLE = sample_manifest()
MANIFEST = sample_manifest(
    spec={"kernel": {"cmdline": ["console=ttyS0", "quiet"]}, "ima": {"policy": "appraise-rootfs"},
          "disk": {"size_mib": 40}},
    boot=replace(_SAMPLE.boot, cmdline="console=ttyS0 quiet panic=-1 obelisk.var=/dev/vdb"),
    disk=replace(_SAMPLE.disk, size_mib=40))


def test_kernel_cmdline_is_the_builds():
    assert boot.kernel_cmdline(MANIFEST) == "console=ttyS0 quiet panic=-1 obelisk.var=/dev/vdb"
    assert boot.kernel_cmdline(MANIFEST, ("debug",)).endswith(" debug")
    with pytest.raises(InputError, match="boot.cmdline"):
        boot.kernel_cmdline(replace(MANIFEST, boot=replace(MANIFEST.boot, cmdline="")))
    without = mf.to_json(MANIFEST)
    del without["boot"]["cmdline"]
    with pytest.raises(InputError, match="boot.cmdline"):
        mf.parse(mf.dumps(without), "manifest.json")


def test_qemu_args_forward_only_the_agent(tmp_path):
    args = boot.qemu_run(tmp_path / "out", tmp_path / "run", 12345, "console=ttyS0", 512).argv()
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev and f"hostfwd=tcp:127.0.0.1:12345-{boot.GUEST_IP}:8443" in netdev
    assert f"file={tmp_path / 'out' / 'rootfs.squashfs'},if=virtio,format=raw,readonly=on" in args
    assert "tpm-tis,tpmdev=tpm0" in args


@pytest.mark.swtpm
def test_provision_writes_config_disk_and_enrolls_the_ak(tmp_path):
    from obelisk.attest import akrecord
    from obelisk.signer.keygen import generate

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    run = tmp_path / "run"
    info = boot.provision(tmp_path, run, keys.ca_cert, keys.ca_key, MANIFEST, 9999)
    # plain /var: a blank disk the node formats at its first boot
    assert (run / "var.img").stat().st_size == 40 * 1024 * 1024
    assert (run / "var.img").read_bytes()[:1 << 16] == b"\0" * (1 << 16)
    # the agent's key lives only on the node's config disk, not in the run directory
    assert not list(run.glob("**/agent.key"))
    listing = subprocess.run(["debugfs", "-R", "ls -l /", str(run / "config.img")], capture_output=True,
                             text=True, check=True).stdout
    assert "agent.key" in listing and "agent.json" in listing and "ca.pem" in listing
    assert oct((run / "config.img").stat().st_mode & 0o777) == "0o600"  # holds the agent's key
    assert oct(run.stat().st_mode & 0o777) == "0o700"
    cat = subprocess.run(["debugfs", "-R", "cat /agent.json", str(run / "config.img")],
                         capture_output=True, text=True, check=True).stdout
    config = json.loads(cat)
    assert config["client_ca"] == "ca.pem" and config["tcti"] == "device:/dev/tpmrm0"
    record = akrecord.parse((run / "ak.json").read_bytes(), "ak.json")
    assert record.qualified_name and not record.missing_attributes()
    assert info["client_cert"].exists() and oct(info["client_key"].stat().st_mode & 0o777) == "0o600"
    # the demo's verifier certificate may read evidence (and nothing more)
    assert _roles(info["client_cert"]) == {"reader"}


def _roles(path):
    from obelisk.attest import roles
    from obelisk.signer.keys import load_certificate

    return roles.roles_of(load_certificate(path).public_bytes(serialization.Encoding.DER))


def test_reboot_reissues_a_verifier_certificate_without_the_reader_role(tmp_path):
    from obelisk.signer.keygen import generate

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    run = tmp_path / "run"
    old = issue(keys.ca_cert, keys.ca_key, run, "obelisk-verifier", server=False, roles=("operator",))
    assert _roles(old.cert) == {"operator"}  # as good as none for the evidence endpoints
    again = boot.reader_client(run, keys.ca_cert, keys.ca_key)
    assert again.cert == run / "client.pem" and _roles(again.cert) == {"reader"}
    before = again.cert.read_bytes()
    assert boot.reader_client(run, keys.ca_cert, keys.ca_key).cert.read_bytes() == before  # kept when it fits


@pytest.mark.swtpm
def test_encrypted_var_opens_only_for_the_predicted_boot(tmp_path):
    """/var is LUKS2, its key sealed in the node's TPM to the PCR 11 the build predicted: replaying
    the predicted boot unseals it, another command line does not (and names PCR 11)."""
    from obelisk.disk import volume as disk
    from obelisk.image import measure
    from obelisk.signer.keygen import generate
    from obelisk.tpm import seal
    from obelisk.tpm.swtpm import SoftwareTPM

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    root = hashlib.sha256(b"rootfs").digest()
    events = measure.boot_events(MANIFEST.boot.cmdline, root)
    manifest = replace(MANIFEST, disk=replace(MANIFEST.disk, var="luks2", policy="pcr",
                                              sealed_to={11: measure.predict(events).unseal}))
    run = tmp_path / "run"
    boot.provision(tmp_path, run, keys.ca_cert, keys.ca_key, manifest, 9999)
    var = str(run / "var.img")
    assert disk.is_luks(var)
    assert oct((run / "var-recovery.key").stat().st_mode & 0o777) == "0o600"
    assert disk.test_key(var, disk.normalize_recovery_key((run / "var-recovery.key").read_text()))
    with SoftwareTPM.start(run / "swtpm") as sw:  # the node's TPM, as at its first boot
        for event in events[:measure.UNSEAL_AFTER]:
            extend_pcr11(sw.tcti, event.digest)
        token = disk.unlock(var, sw.tcti, test=True)
        assert token.sealed.pcrs == (11,)
        extend_pcr11(sw.tcti, events[-1].digest)  # end of boot: sealed for good
        with pytest.raises(seal.PolicyMismatch, match="PCR 11"):
            disk.unlock(var, sw.tcti, test=True)
    with SoftwareTPM.start(run / "swtpm") as sw:  # a boot with another command line
        other = measure.boot_events(MANIFEST.boot.cmdline + " ima_appraise=off", root)
        for event in other[:measure.UNSEAL_AFTER]:
            extend_pcr11(sw.tcti, event.digest)
        with pytest.raises(seal.PolicyMismatch, match="PCR 11"):
            disk.unlock(var, sw.tcti, test=True)



@pytest.mark.swtpm
def test_signed_policy_opens_var_for_each_image_the_customer_signed(tmp_path):
    """disk.policy signed: /var is sealed to the customer key (PolicyAuthorize); the build's signed
    policy for image A opens it when A booted, image B's (an update) when B booted, and a policy for
    A does not open it when B booted; a policy signed by another key opens nothing."""
    from obelisk.disk import volume as disk
    from obelisk.disk.unlock import signed_policies
    from obelisk.image import build as buildmod
    from obelisk.image import measure
    from obelisk.image.cmdline import kernel_cmdline
    from obelisk.image.spec import parse_spec
    from obelisk.signer.keygen import generate
    from obelisk.signer.keys import load_certificate, load_signing_key
    from obelisk.tpm import seal
    from obelisk.tpm.swtpm import SoftwareTPM

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    assert keys.policy_cert is not None
    spec = parse_spec({"name": "n1", "signing": {"key": "keys/ima.key", "cert": "keys/ima.pem", "ca": "keys/ca.pem"},
                       "rootfs": {"base": "debian", "packages": ["python3-tpm2-pytss", "cryptsetup-bin", "e2fsprogs"]},
                       "disk": {"encryption": True, "policy": "signed", "policy_key": "keys/disk-policy.key",
                                "policy_cert": "keys/disk-policy.pem"}}, "spec.yaml", tmp_path)
    ima = buildmod._load_keys(spec)
    plan = buildmod.Plan(spec=spec, keys=ima, busybox=None, ima_policy=None, kubernetes_files=(),
                         policy_signer=buildmod._load_policy_key(spec, ima))
    roots = {"a": hashlib.sha256(b"image A").digest(), "b": hashlib.sha256(b"image B").digest()}
    policies = {}
    for name, root in roots.items():
        path = tmp_path / f"policy-{name}.json"
        path.write_bytes(buildmod.signed_var_policy(plan, root))
        policies[name] = signed_policies(str(path))
    events = {name: measure.boot_events(kernel_cmdline(spec), root) for name, root in roots.items()}

    out = tmp_path / "out"
    out.mkdir()
    manifest = replace(MANIFEST, disk=replace(MANIFEST.disk, var="luks2", policy="signed",
                                              sealed_to={11: measure.predict(events["a"]).unseal},
                                              signed_policy=buildmod.ARTIFACT_VAR_POLICY,
                                              policy_certificate=keys.policy_cert.read_text()))
    data = mf.serialize(manifest)
    (out / "manifest.json").write_bytes(data)
    signature = mf.sign(data, load_signing_key(str(keys.ima_key)), load_certificate(keys.ima_cert))
    (out / mf.SIGNATURE).write_bytes(mf.dumps(signature.to_json()))
    run = tmp_path / "run"
    boot.provision(out, run, keys.ca_cert, keys.ca_key, manifest, 9999)
    var = str(run / "var.img")
    token = disk.tokens(var)[0]
    assert token.sealed.authorize_key  # sealed to the policy key, not to values
    assert token.sealed.authorize_key != load_certificate(keys.ima_cert).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    for booted, other in (("a", "b"), ("b", "a")):
        with SoftwareTPM.start(run / "swtpm") as sw:
            for event in events[booted][:measure.UNSEAL_AFTER]:
                extend_pcr11(sw.tcti, event.digest)
            with pytest.raises(seal.PolicyMismatch, match="PCR 11"):
                disk.unlock(var, sw.tcti, test=True, extra_policies=policies[other])
            assert disk.unlock(var, sw.tcti, test=True, extra_policies=policies[booted]).sealed.authorize_key

    generate(tmp_path / "rogue", "ecdsa-p256")
    rogue_spec = parse_spec({**spec.to_json(), "signing": {"key": "rogue/ima.key", "cert": "rogue/ima.pem",
                                                           "ca": "rogue/ca.pem"},
                             "disk": {**spec.to_json()["disk"], "policy_key": "rogue/disk-policy.key",
                                      "policy_cert": "rogue/disk-policy.pem"}}, "spec.yaml", tmp_path)
    rogue_ima = buildmod._load_keys(rogue_spec)
    rogue_plan = buildmod.Plan(spec=rogue_spec, keys=rogue_ima, busybox=None, ima_policy=None, kubernetes_files=(),
                               policy_signer=buildmod._load_policy_key(rogue_spec, rogue_ima))
    (tmp_path / "rogue.json").write_bytes(buildmod.signed_var_policy(rogue_plan, roots["a"]))
    with SoftwareTPM.start(run / "swtpm") as sw:
        for event in events["a"][:measure.UNSEAL_AFTER]:
            extend_pcr11(sw.tcti, event.digest)
        with pytest.raises(seal.TPMError, match="signed by the key"):
            disk.unlock(var, sw.tcti, test=True, extra_policies=signed_policies(str(tmp_path / "rogue.json")))


def test_the_ima_key_cannot_approve_disk_policies(tmp_path):
    """An IMA signature is a plain signature over H(file): a crafted file signed into any image would
    approve any PCR policy. The build refuses the IMA key as disk.policy_key."""
    from obelisk.image import build as buildmod
    from obelisk.image.spec import SpecError, parse_spec
    from obelisk.signer.keygen import generate

    generate(tmp_path / "keys", "ecdsa-p256")
    spec = parse_spec({"name": "n1", "signing": {"key": "keys/ima.key", "cert": "keys/ima.pem", "ca": "keys/ca.pem"},
                       "rootfs": {"base": "debian", "packages": ["python3-tpm2-pytss", "cryptsetup-bin", "e2fsprogs"]},
                       "disk": {"encryption": True, "policy": "signed", "policy_key": "keys/ima.key",
                                "policy_cert": "keys/ima.pem"}}, "spec.yaml", tmp_path)
    with pytest.raises(SpecError, match="disk.policy_key: is the IMA signing key"):
        buildmod._load_policy_key(spec, buildmod._load_keys(spec))


def test_fleet_url_and_join_token_go_on_the_config_disk_only(tmp_path):
    """--fleet-url and --fleet-join-token: fleet.json and fleet-token (0600) on the node's config disk."""
    from obelisk.core.errors import InputError
    from obelisk.image import fleet_node

    token = tmp_path / "token"
    token.write_text("s3cret-join-token\n")
    content = tmp_path / "content"
    content.mkdir()
    boot.write_fleet_config(content, boot.FleetProvision(url="https://10.0.2.100:8444", join_token=token))
    boot.make_ext2_disk(tmp_path / "config.img", content, 4, "obelisk-config")
    listing = subprocess.run(["debugfs", "-R", "stat /fleet-token", str(tmp_path / "config.img")],
                             capture_output=True, text=True, check=True).stdout
    assert "Mode:  0600" in listing
    cat = subprocess.run(["debugfs", "-R", "cat /fleet.json", str(tmp_path / "config.img")],
                         capture_output=True, check=True).stdout
    assert fleet_node.parse(cat, "fleet.json") == fleet_node.FleetNode(url="https://10.0.2.100:8444",
                                                                      join_token="fleet-token")
    forward = boot.fleet_forward("https://10.0.2.100:8444")
    assert forward is not None and (forward.guest_ip, forward.guest_port, forward.host_port) == (
        "10.0.2.100", 8444, 8444)
    for unreachable in ("https://fleet.example:8444", "https://10.0.2.2:8444", "https://192.168.1.1"):
        assert boot.fleet_forward(unreachable) is None
    with pytest.raises(InputError, match="--fleet-url"):
        boot.write_fleet_config(tmp_path / "content", boot.FleetProvision(url="http://10.0.2.100:8444"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        boot.write_fleet_config(tmp_path / "content", boot.FleetProvision(join_token=empty))
