"""Boot preparation without QEMU: command line, QEMU arguments, the node's disk.raw (provisioned from the
image's, an image installed into it keeping /var), the config disk, the TPM, and /var sealed as predicted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

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
    boot=replace(_SAMPLE.boot, cmdline="console=ttyS0 quiet panic=-1 obelisk.var=PARTLABEL=var"),
    disk=replace(_SAMPLE.disk, size_mib=40))


def test_kernel_cmdline_is_the_builds():
    assert boot.kernel_cmdline(MANIFEST) == "console=ttyS0 quiet panic=-1 obelisk.var=PARTLABEL=var"
    assert boot.kernel_cmdline(MANIFEST, ("debug",)).endswith(" debug")
    with pytest.raises(InputError, match="boot.cmdline"):
        boot.kernel_cmdline(replace(MANIFEST, boot=replace(MANIFEST.boot, cmdline="")))
    without = mf.to_json(MANIFEST)
    del without["boot"]["cmdline"]
    with pytest.raises(InputError, match="boot.cmdline"):
        mf.parse(mf.dumps(without), "manifest.json")


def test_qemu_args_forward_only_the_agent(tmp_path):
    args = boot.qemu_run(tmp_path / "out", tmp_path / "run", 12345, 512).argv()
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev and f"hostfwd=tcp:127.0.0.1:12345-{boot.GUEST_IP}:8443" in netdev
    # the firmware boots the node's own disk (written: /var lives there) with the node's own variables
    assert f"file={tmp_path / 'run' / 'disk.raw'},if=virtio,format=raw" in args
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'run' / 'ovmf-vars.fd'}" in args
    assert "-kernel" not in args and not any("/out/" in a for a in args)  # nothing from OUT but through disk.raw
    assert "tpm-tis,tpmdev=tpm0" in args


# ---- disk.raw: two tiny images of one node (the var partition in the same place) ---------------------------

MIB = 1 << 20


def _image(out: Path, version: str) -> mf.Manifest:
    """OUT/disk.raw of image `version` (dummy root and hash tree of 1 MiB each) and a manifest recording it."""
    from obelisk.image import disk_image

    out.mkdir(parents=True, exist_ok=True)
    (out / "uki.efi").write_bytes(f"UKI of {version}".encode())
    (out / "root").write_bytes(version.encode() * (MIB // len(version)))
    (out / "verity").write_bytes(hashlib.sha256(version.encode()).digest() * 1000)
    layout = disk_image.build_disk_image(out / boot.DISK_IMAGE, esp_files={"EFI/BOOT/BOOTX64.EFI": out / "uki.efi"},
                                         root=out / "root", root_verity=out / "verity", var_size=64 * MIB,
                                         seed=f"obelisk:n1:{version}", source_date_epoch=1700000000)
    return replace(MANIFEST, boot=replace(MANIFEST.boot, disk_image=layout))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return {v: (root / v, _image(root / v, v)) for v in ("1.0", "2.0")}


def _digest(path: Path, begin: int, end: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(begin)
        remaining = end - begin
        while remaining > 0:
            chunk = handle.read(min(4 * MIB, remaining))
            assert chunk, f"{path} ends before {end}"
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def test_copy_sparse_keeps_the_bytes_and_leaves_zeros_as_holes(tmp_path):
    source = tmp_path / "source"
    data = b"head" * 1000 + b"\0" * (8 * MIB) + b"tail" * 1000 + b"\0" * 100
    source.write_bytes(data)  # written out: every zero is allocated
    target = tmp_path / "target"
    target.write_bytes(b"an older copy, longer than nothing")
    boot.copy_sparse(source, target)
    assert target.read_bytes() == data
    assert target.stat().st_blocks * 512 < 2 * MIB < source.stat().st_blocks * 512
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "target"]  # no temporary file left


def test_install_image_replaces_the_image_partitions_and_keeps_var(tmp_path, images):
    """A node of image 1.0 with data on its var partition gets image 2.0: every byte outside the var
    partition is 2.0's, every byte inside it the node's."""
    from obelisk.image import disk_image

    (out_a, _), (out_b, manifest_b) = images["1.0"], images["2.0"]
    run = tmp_path / "run"
    run.mkdir()
    node = run / boot.DISK_IMAGE
    boot.copy_sparse(out_a / boot.DISK_IMAGE, node)
    var = manifest_b.boot.disk_image.partition(disk_image.VAR)
    with open(node, "r+b") as handle:  # what the node wrote into /var
        handle.seek(var.start)
        handle.write(b"LUKS\xba\xbe" + os.urandom(MIB))
        handle.seek(var.start + var.size - 4096)
        handle.write(os.urandom(4096))
    var_before = _digest(node, var.start, var.start + var.size)
    assert _digest(node, 0, var.start) != _digest(out_b / boot.DISK_IMAGE, 0, var.start)

    boot.install_image(out_b, run, manifest_b)
    layout = manifest_b.boot.disk_image
    assert node.stat().st_size == layout.size
    assert _digest(node, var.start, var.start + var.size) == var_before
    assert _digest(node, 0, var.start) == _digest(out_b / boot.DISK_IMAGE, 0, var.start)
    assert _digest(node, var.start + var.size, layout.size) == _digest(out_b / boot.DISK_IMAGE,
                                                                       var.start + var.size, layout.size)
    # sfdisk reads 2.0's partition table (primary and backup GPT) from the node's disk
    table = json.loads(subprocess.run(["sfdisk", "--json", str(node)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["id"].lower() == layout.disk_guid.lower()
    assert [p["name"] for p in table["partitions"]] == [p.name for p in layout.partitions]


def test_install_image_refuses_a_disk_whose_var_is_elsewhere(tmp_path, images):
    out, manifest = images["2.0"]
    run = tmp_path / "run"
    run.mkdir()
    boot.copy_sparse(out / boot.DISK_IMAGE, run / boot.DISK_IMAGE)
    before = _digest(run / boot.DISK_IMAGE, 0, manifest.boot.disk_image.size)
    bigger = replace(manifest.boot.disk_image, size=manifest.boot.disk_image.size + MIB)
    with pytest.raises(boot.BootError, match="var partition is not where this image puts it"):
        boot.install_image(out, run, replace(manifest, boot=replace(manifest.boot, disk_image=bigger)))
    assert _digest(run / boot.DISK_IMAGE, 0, manifest.boot.disk_image.size) == before
    with pytest.raises(InputError, match="no boot.disk_image"):
        boot.install_image(out, run, MANIFEST)


@pytest.mark.swtpm
def test_var_sealed_for_reads_the_token_in_the_nodes_var_partition(tmp_path, images):
    """None while the node has not made /var; then whether its LUKS2 token is sealed as this image says:
    PCR 7 by value (PCR 11 is bound at first boot), or to the image's policy key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from obelisk.disk import volume as disk
    from obelisk.image import disk_image
    from obelisk.tpm.swtpm import SoftwareTPM

    out, manifest = images["1.0"]
    run = tmp_path / "run"
    run.mkdir()
    boot.copy_sparse(out / boot.DISK_IMAGE, run / boot.DISK_IMAGE)
    pcr7, other = hashlib.sha256(b"Secure Boot state").digest(), hashlib.sha256(b"another state").digest()
    sealed = replace(manifest, disk=replace(manifest.disk, var="luks2", policy="pcr",
                                            sealed_to={7: pcr7, 11: b"\1" * 32}))
    assert boot.var_sealed_for(run, sealed) is None  # blank: the node has not booted yet
    assert boot.var_sealed_for(run, replace(sealed, boot=replace(sealed.boot, disk_image=None))) is None
    var = manifest.boot.disk_image.partition(disk_image.VAR)

    def first_boot(**enroll) -> None:
        volume = tmp_path / "var.img"
        volume.write_bytes(b"")
        os.truncate(volume, var.size)
        with SoftwareTPM.start(tmp_path / "swtpm") as sw:
            disk.enroll(str(volume), [7, 11], sw.tcti, format_volume=True, recovery=False, **enroll)
        with open(run / boot.DISK_IMAGE, "r+b") as node, open(volume, "rb") as src:
            node.seek(var.start)
            node.write(src.read(16 * MIB))

    first_boot(values={7: pcr7})  # as disk/unlock.create_var with the recipe's PCR 7
    assert boot.var_sealed_for(run, sealed) is True
    assert boot.var_sealed_for(run, replace(sealed, disk=replace(sealed.disk, sealed_to={7: other, 11: pcr7}))) \
        is False
    der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert boot.var_sealed_for(run, sealed, policy_key=der) is False  # sealed to values, not to a key
    first_boot(policy_key=der, bound={7: pcr7})
    assert boot.var_sealed_for(run, sealed, policy_key=der) is True
    assert boot.var_sealed_for(run, sealed) is False
    rogue = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert boot.var_sealed_for(run, sealed, policy_key=rogue) is False


@pytest.mark.swtpm
def test_provision_writes_config_disk_and_enrolls_the_ak(tmp_path, images):
    from obelisk.attest import akrecord
    from obelisk.lab import qemu
    from obelisk.signer.keygen import generate

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    out, manifest = images["1.0"]
    run = tmp_path / "run"
    info = boot.provision(out, run, keys.ca_cert, keys.ca_key, manifest, 9999)
    # the node's disk is the image's disk.raw, its empty var partition a hole; /var is made at first boot
    size = manifest.boot.disk_image.size
    assert _digest(run / boot.DISK_IMAGE, 0, size) == _digest(out / boot.DISK_IMAGE, 0, size)
    assert (run / boot.DISK_IMAGE).stat().st_blocks * 512 < (out / boot.DISK_IMAGE).stat().st_size // 2
    assert not (run / "var.img").exists()
    # no Secure Boot keys in this image: Debian's empty variable store, the node's own copy
    assert (run / boot.VARIABLES).read_bytes() == qemu.OVMF_VARS_TEMPLATE.read_bytes()
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


# ---- /var as the node makes it at first boot, from the build's recipe and predictions ---------------------

def _plan(tmp_path: Path, policy: str, keys_dir: str = "keys", upgrade: dict | None = None):
    """A build plan with an encrypted /var sealed by `policy` (pcr | signed), the keys in `keys_dir`
    (and the spec's `upgrade` section, if given)."""
    from obelisk.image import build as buildmod
    from obelisk.image.spec import parse_spec

    disk = {"encryption": True, "policy": policy}
    if policy == "signed":
        disk.update(policy_key=f"{keys_dir}/disk-policy.key", policy_cert=f"{keys_dir}/disk-policy.pem")
    spec = parse_spec({"name": "n1", "signing": {"key": f"{keys_dir}/ima.key", "cert": f"{keys_dir}/ima.pem",
                                                 "ca": f"{keys_dir}/ca.pem"},
                       "rootfs": {"base": "debian", "packages": ["python3-tpm2-pytss", "cryptsetup-bin", "e2fsprogs"]},
                       "disk": disk, **({"upgrade": upgrade} if upgrade else {})}, "spec.yaml", tmp_path)
    ima = buildmod._load_keys(spec)
    signer = buildmod._load_policy_key(spec, ima) if policy == "signed" else None
    return buildmod.Plan(spec=spec, keys=ima, busybox=None, ima_policy=None, kubernetes_files=(), policy_signer=signer)


def _uki_pcr11(cmdline: str):
    """measure.Prediction of the UKI with this command line (systemd-stub's events, then the phases)."""
    from obelisk.image import measure, uki

    sections = uki.UkiSections(linux=b"bzImage", initrd=b"initramfs", cmdline=cmdline.encode(),
                               osrel=b"ID=obelisk\n")
    return measure.predict(uki.pcr11_prediction(sections).events)


def _boot_until_unseal(tcti: str, prediction) -> None:
    """PCR 11 as a node has it when /var is unsealed: the stub's events, enter-initrd, leave-initrd."""
    from obelisk.image import measure

    events = prediction.pcr11.events
    for event in events[:len(events) - len(measure.PHASES) + measure.UNSEAL_AFTER]:
        extend_pcr11(tcti, event.digest)


def _first_boot(tmp_path: Path, plan, prediction) -> str:
    """A blank var partition that the node's first boot of `prediction` formats and seals (disk/unlock.py)."""
    from obelisk.disk import unlock
    from obelisk.image import build as buildmod
    from obelisk.tpm.swtpm import SoftwareTPM

    volume = tmp_path / "var.img"
    volume.write_bytes(b"")
    os.truncate(volume, 64 << 20)
    (tmp_path / "var-seal.json").write_bytes(buildmod.var_recipe(plan))
    with SoftwareTPM.start(tmp_path / "swtpm") as sw:
        _boot_until_unseal(sw.tcti, prediction)
        unlock.create_var(str(volume), str(tmp_path / "var-seal.json"), sw.tcti)
    return str(volume)


LINE = "console=ttyS0 quiet panic=-1 obelisk.var=PARTLABEL=var"


@pytest.mark.swtpm
def test_encrypted_var_opens_only_for_the_predicted_boot(tmp_path):
    """disk.policy pcr: the first boot seals /var's key to PCR 11 as it is at leave-initrd, which is the
    build's `unseal` prediction; after sysinit, or under a UKI with another command line, it stays sealed."""
    from obelisk.disk import volume as disk
    from obelisk.image import measure
    from obelisk.signer.keygen import generate
    from obelisk.tpm import seal
    from obelisk.tpm.swtpm import SoftwareTPM

    generate(tmp_path / "keys", "ecdsa-p256")
    predicted = _uki_pcr11(LINE)
    var = _first_boot(tmp_path, _plan(tmp_path, "pcr"), predicted)
    assert disk.is_luks(var)
    assert disk.tokens(var)[0].sealed.values == {11: predicted.unseal}  # the build predicted what was sealed
    with SoftwareTPM.start(tmp_path / "swtpm") as sw:  # the next boot of the same UKI
        _boot_until_unseal(sw.tcti, predicted)
        token = disk.unlock(var, sw.tcti, test=True)
        assert token.sealed.pcrs == (11,)
        extend_pcr11(sw.tcti, measure.phase_digest("sysinit"))  # obelisk-init: sealed for good
        with pytest.raises(seal.PolicyMismatch, match="PCR 11"):
            disk.unlock(var, sw.tcti, test=True)
    with SoftwareTPM.start(tmp_path / "swtpm") as sw:  # a UKI with another command line
        _boot_until_unseal(sw.tcti, _uki_pcr11(LINE + " ima_appraise=off"))
        with pytest.raises(seal.PolicyMismatch, match="PCR 11"):
            disk.unlock(var, sw.tcti, test=True)


@pytest.mark.swtpm
def test_signed_policy_opens_var_for_each_image_the_customer_signed(tmp_path):
    """disk.policy signed: /var is sealed to the customer key (PolicyAuthorize); the build's signed
    policy (the UKI's .pcrsig) for image A opens it when A booted, image B's (an update) when B booted,
    and a policy for A does not open it when B booted; a policy signed by another key opens nothing."""
    from obelisk.disk import volume as disk
    from obelisk.disk.unlock import signed_policies
    from obelisk.image import build as buildmod
    from obelisk.signer.keygen import generate
    from obelisk.signer.keys import load_certificate
    from obelisk.tpm import seal
    from obelisk.tpm.swtpm import SoftwareTPM

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    plan = _plan(tmp_path, "signed")
    predicted = {"a": _uki_pcr11(LINE), "b": _uki_pcr11(LINE + " obelisk.image-version=2")}
    policies = {}
    for name, prediction in predicted.items():
        path = tmp_path / f"policy-{name}.json"
        path.write_bytes(buildmod.signed_var_policy(plan, prediction.unseal))
        policies[name] = signed_policies(str(path))
    var = _first_boot(tmp_path, plan, predicted["a"])
    token = disk.tokens(var)[0]
    assert token.sealed.authorize_key  # sealed to the policy key, not to values
    assert token.sealed.authorize_key != load_certificate(keys.ima_cert).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    for booted, other in (("a", "b"), ("b", "a")):
        with SoftwareTPM.start(tmp_path / "swtpm") as sw:
            _boot_until_unseal(sw.tcti, predicted[booted])
            with pytest.raises(seal.PolicyMismatch, match="PCR 11"):
                disk.unlock(var, sw.tcti, test=True, extra_policies=policies[other])
            assert disk.unlock(var, sw.tcti, test=True, extra_policies=policies[booted]).sealed.authorize_key

    generate(tmp_path / "rogue", "ecdsa-p256")
    rogue_plan = _plan(tmp_path, "signed", keys_dir="rogue")
    (tmp_path / "rogue.json").write_bytes(buildmod.signed_var_policy(rogue_plan, predicted["a"].unseal))
    with SoftwareTPM.start(tmp_path / "swtpm") as sw:
        _boot_until_unseal(sw.tcti, predicted["a"])
        with pytest.raises(seal.TPMError, match="signed by the key"):
            disk.unlock(var, sw.tcti, test=True, extra_policies=signed_policies(str(tmp_path / "rogue.json")))


@pytest.mark.swtpm
def test_rollback_index_locks_older_customer_signed_images_out_of_var(tmp_path):
    """upgrade.rollback_index (docs/upgrade.md), from the build's own recipe and .pcrsig: image A
    (index 1) creates /var and the floor; image B (index 2) opens it and raises the floor; A, signed by
    the same customer key, then boots and /var stays locked, the error naming the floor and A's index."""
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import unlock
    from obelisk.disk import volume as disk
    from obelisk.image import build as buildmod
    from obelisk.signer.keygen import generate
    from obelisk.tpm import rollback, seal
    from obelisk.tpm.swtpm import SoftwareTPM

    generate(tmp_path / "keys", "ecdsa-p256")
    plans = {"a": _plan(tmp_path, "signed", upgrade={"rollback_index": 1}),
             "b": _plan(tmp_path, "signed", upgrade={"rollback_index": 2})}
    predicted = {"a": _uki_pcr11(LINE), "b": _uki_pcr11(LINE + " obelisk.image-version=2")}
    for name, plan in plans.items():
        (tmp_path / f"policy-{name}.json").write_bytes(buildmod.signed_var_policy(plan, predicted[name].unseal))
        (tmp_path / f"var-seal-{name}.json").write_bytes(buildmod.var_recipe(plan))
    recipe = {name: recipemod.parse((tmp_path / f"var-seal-{name}.json").read_bytes()) for name in plans}
    assert (recipe["b"].rollback_index, recipe["b"].advance_rollback_index) == (2, True)
    volume = tmp_path / "var.img"
    volume.write_bytes(b"")
    os.truncate(volume, 64 << 20)
    with SoftwareTPM.start(tmp_path / "swtpm") as sw:  # A's first boot
        _boot_until_unseal(sw.tcti, predicted["a"])
        assert unlock.create_var(str(volume), str(tmp_path / "var-seal-a.json"), sw.tcti,
                                 str(tmp_path / "policy-a.json")).endswith("defined, floor 1")
    with SoftwareTPM.start(tmp_path / "swtpm") as sw:  # B, the upgrade
        _boot_until_unseal(sw.tcti, predicted["b"])
        approvals = unlock.signed_policies(str(tmp_path / "policy-b.json"))
        token = disk.unlock(str(volume), sw.tcti, test=True, extra_policies=approvals)
        assert unlock.advance_floor(recipe["b"], sw.tcti, approvals, token.sealed) == \
            ", rollback floor raised from 1 to 2"
    with SoftwareTPM.start(tmp_path / "swtpm") as sw:  # A again: customer-signed, but below the floor
        _boot_until_unseal(sw.tcti, predicted["a"])
        assert rollback.read_floor(sw.tcti).rollback_index == 2
        with pytest.raises(seal.RollbackLocked, match="is 2, above this image's rollback index 1"):
            disk.unlock(str(volume), sw.tcti, test=True,
                        extra_policies=unlock.signed_policies(str(tmp_path / "policy-a.json")))


def test_rollback_index_needs_the_signed_tpm_policy(tmp_path):
    from obelisk.image.spec import SpecError, parse_spec
    from obelisk.signer.keygen import generate

    generate(tmp_path / "keys", "ecdsa-p256")
    with pytest.raises(SpecError, match="upgrade.rollback_index: rollback protection is part of the customer-signed"):
        _plan(tmp_path, "pcr", upgrade={"rollback_index": 1})
    with pytest.raises(SpecError, match="upgrade.rollback_index: 65 is out of range 0..64"):
        parse_spec({"name": "n1", "upgrade": {"rollback_index": 65}}, "spec.yaml", tmp_path)


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
