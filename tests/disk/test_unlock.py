"""The node-side unlock of /var (runs on the node from /sbin/obelisk-init); its decisions, on the host."""

from __future__ import annotations

import subprocess

import pytest

from obelisk.cli import node_init as node_init_cli
from obelisk.core.errors import ObeliskError
from obelisk.disk import unlock as node_init


def test_cmdline_value():
    line = "console=ttyS0 obelisk.var=/dev/vdc obelisk.var.extra=x quiet"
    assert node_init.cmdline_value(line, "obelisk.var", "/dev/vdb") == "/dev/vdc"
    assert node_init.cmdline_value("quiet", "obelisk.var", "/dev/vdb") == "/dev/vdb"


def test_ext_superblock_detection(tmp_path):
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * (4 << 20))
    assert not node_init.has_ext_filesystem(str(blank))
    fs = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", str(fs), "4M"], check=True)
    assert node_init.has_ext_filesystem(str(fs))


def test_a_plain_disk_in_place_of_the_encrypted_var_is_refused(tmp_path):
    """Never used, never formatted: someone may have swapped the disk for one with planted data."""
    fs = tmp_path / "var.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", str(fs), "8M"], check=True)
    before = fs.read_bytes()
    with pytest.raises(ObeliskError, match="not a LUKS2 volume"):
        node_init.unlock_var(str(fs), mountpoint=str(tmp_path / "mnt"))
    assert fs.read_bytes() == before


def test_failure_leaves_var_a_tmpfs_and_exit_1(tmp_path, monkeypatch, capsys):
    fs = tmp_path / "var.img"
    fs.write_bytes(b"\0" * (1 << 20))
    mounted = []
    monkeypatch.setattr(node_init, "mount", lambda *a, **k: mounted.append(a))
    assert node_init_cli.main(["unlock-var", "--device", str(fs), "--mount", str(tmp_path)]) == 1
    assert mounted == [("tmpfs", str(tmp_path), "tmpfs")]
    assert "FATAL: /var stays locked" in capsys.readouterr().out


def test_partlabel_resolves_through_sysfs_uevents(tmp_path):
    for name, lines in {"vda": "DEVNAME=vda\n", "vda1": "PARTN=1\nPARTNAME=esp\nDEVNAME=vda1\n",
                        "vda4": "PARTN=4\nPARTNAME=var\nDEVNAME=vda4\n"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "uevent").write_text(lines)
    assert node_init.resolve_partlabel("PARTLABEL=var", str(tmp_path)) == "/dev/vda4"
    with pytest.raises(ObeliskError, match="0 partitions"):
        node_init.resolve_partlabel("PARTLABEL=nothing", str(tmp_path))
    (tmp_path / "vdb4").mkdir()
    (tmp_path / "vdb4" / "uevent").write_text("PARTNAME=var\nDEVNAME=vdb4\n")
    with pytest.raises(ObeliskError, match="2 partitions"):  # a second disk with a /var: never guess
        node_init.resolve_partlabel("PARTLABEL=var", str(tmp_path))


@pytest.mark.swtpm
def test_first_boot_creates_var_sealed_as_the_recipe_says(swtpm, tmp_path):
    """A blank partition becomes LUKS2 with its key sealed to the customer's signed PCR 11 and PCR 7 by
    value; the UKI's tpm2-pcr-signature.json then opens it, and a changed PCR 7 does not."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from obelisk.disk import pcrsig, recipe
    from obelisk.disk import volume as disk
    from obelisk.signer.keys import SoftwareKey, sign_tpm_policy
    from obelisk.tpm import device as tpm
    from obelisk.tpm import seal

    key = rsa.generate_private_key(65537, 2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    values = tpm.pcr_values(swtpm.tcti, "sha256", [7, 11])
    (tmp_path / "var-seal.json").write_bytes(recipe.serialize(
        recipe.VarRecipe(policy_key=der, signed_pcrs=(11,), bound={7: values[7]})))
    approved = seal.policy_pcr_digest((11,), {11: values[11]})
    signature = sign_tpm_policy(SoftwareKey(key), approved)
    signed = seal.SignedPolicy(pcrs=(11,), values={11: values[11]}, signature=signature)
    (tmp_path / "sig.json").write_bytes(pcrsig.serialize([signed], der))
    part = tmp_path / "var.img"
    with open(part, "wb") as handle:
        handle.truncate(32 << 20)
    assert node_init.is_blank(str(part))
    node_init.create_var(str(part), str(tmp_path / "var-seal.json"), swtpm.tcti)
    assert disk.is_luks(str(part)) and not node_init.is_blank(str(part))
    token = disk.tokens(str(part))[0]
    assert token.sealed.authorize_key == der and token.sealed.bound == {7: values[7]}
    policies = node_init.signed_policies(str(tmp_path / "sig.json"), der)
    assert disk.unlock(str(part), swtpm.tcti, test=True, extra_policies=policies).keyslot == token.keyslot
    tpm.extend_pcr(swtpm.tcti, 7, b"secure boot off")
    with pytest.raises(seal.PolicyMismatch, match="PCR 7"):
        disk.unlock(str(part), swtpm.tcti, test=True, extra_policies=policies)


def test_recipe_round_trips_and_refuses_nonsense():
    from obelisk.core.errors import InputError
    from obelisk.disk import recipe

    r = recipe.VarRecipe(policy_key=b"\x30\x01", signed_pcrs=(11,), bound={7: b"\x01" * 32})
    assert recipe.parse(recipe.serialize(r)) == r
    tofu = recipe.VarRecipe(policy_key=None, bound={7: b"\x02" * 32}, bound_at_first_boot=(11,))
    assert recipe.parse(recipe.serialize(tofu)) == tofu
    import json

    def edited(**changes):
        doc = json.loads(recipe.serialize(r))
        doc.update(changes)
        return json.dumps(doc).encode()

    for bad in (b"{}", b'{"format": "obelisk.var-seal/1"}', b"[1]", edited(bound={"x": "00"}),
                edited(signed_pcrs=[11, 11]), edited(bound={"77": "00"}), edited(policy_key="%%"),
                edited(policy_key=None), edited(signed_pcrs=[], bound={})):
        with pytest.raises(InputError):
            recipe.parse(bad, "var-seal.json")


def test_recipe_unlock_modes_round_trip_and_tpm_stays_the_old_format():
    from obelisk.disk import recipe

    tpm_only = recipe.VarRecipe(policy_key=None, bound_at_first_boot=(11,))
    assert b"unlock" not in recipe.serialize(tpm_only)  # images built before disk.unlock read the same
    both = recipe.VarRecipe(policy_key=None, bound_at_first_boot=(11,), unlock="tpm+fleet")
    fleet = recipe.VarRecipe(policy_key=None, unlock="fleet")
    for r in (both, fleet):
        assert recipe.parse(recipe.serialize(r)) == r
    assert (both.uses_tpm, both.uses_fleet, fleet.uses_tpm, tpm_only.uses_fleet) == (True, True, False, False)
    with pytest.raises(ValueError, match="no PCRs"):
        recipe.VarRecipe(policy_key=None, bound_at_first_boot=(11,), unlock="fleet")
    with pytest.raises(ValueError, match="nothing to seal"):
        recipe.VarRecipe(policy_key=None, unlock="tpm+fleet")


def test_an_image_that_unlocks_with_the_fleet_but_has_none_stays_locked(tmp_path):
    from obelisk.disk import recipe

    (tmp_path / "var-seal.json").write_bytes(recipe.serialize(recipe.VarRecipe(policy_key=None, unlock="fleet")))
    part = tmp_path / "var.img"
    part.write_bytes(b"\0" * (2 << 20))
    with pytest.raises(ObeliskError, match="no fleet configured"):
        node_init.unlock_var(str(part), mountpoint=str(tmp_path), recipe_file=str(tmp_path / "var-seal.json"))
    assert node_init.is_blank(str(part))
