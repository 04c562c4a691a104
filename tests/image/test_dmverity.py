"""dm-verity over the root image, checked with veritysetup itself (cryptsetup-bin) as the reference."""

from __future__ import annotations

import os
import re

import pytest

from obelisk.core import tools
from obelisk.core.errors import InputError
from obelisk.image import dmverity
from obelisk.image.dmverity import VerityTree

SEED = "5d2c0f2b7f1e4f9a9c1f0e3b2a1d4c6e8f00112233445566778899aabbccddee"


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "root.squashfs"
    path.write_bytes(os.urandom(4096 * 300))  # 300 blocks: a tree of more than one level
    return path


def _verify_with_veritysetup(data, hash_file, root_hash) -> int:
    return tools.run("veritysetup", ["verify", data, hash_file, root_hash], check=False).returncode


def test_veritysetup_accepts_the_tree_and_one_flipped_byte_fails_it(data, tmp_path):
    tree = dmverity.format_hash_tree(data, tmp_path / "root.verity", seed=SEED)
    assert _verify_with_veritysetup(data, tmp_path / "root.verity", tree.root_hash) == 0
    dmverity.verify_hash_tree(data, tmp_path / "root.verity", tree)

    content = bytearray(data.read_bytes())
    content[4096 * 157 + 11] ^= 0x01  # one bit of one byte in a middle block
    data.write_bytes(bytes(content))
    assert _verify_with_veritysetup(data, tmp_path / "root.verity", tree.root_hash) != 0
    with pytest.raises(InputError, match="dm-verity verification failed"):
        dmverity.verify_hash_tree(data, tmp_path / "root.verity", tree)


def test_a_wrong_root_hash_is_refused(data, tmp_path):
    tree = dmverity.format_hash_tree(data, tmp_path / "root.verity", seed=SEED)
    wrong = ("0" if tree.root_hash[0] != "0" else "1") + tree.root_hash[1:]
    assert _verify_with_veritysetup(data, tmp_path / "root.verity", wrong) != 0


def test_same_inputs_give_the_same_root_hash_and_the_same_hash_file(data, tmp_path):
    first = dmverity.format_hash_tree(data, tmp_path / "a.verity", seed=SEED)
    second = dmverity.format_hash_tree(data, tmp_path / "b.verity", seed=SEED)
    assert first == second
    assert (tmp_path / "a.verity").read_bytes() == (tmp_path / "b.verity").read_bytes()
    other = dmverity.format_hash_tree(data, tmp_path / "c.verity", seed=SEED + "x")
    assert other.salt != first.salt and other.uuid != first.uuid and other.root_hash != first.root_hash


def test_the_record_matches_what_veritysetup_dump_reads_from_the_superblock(data, tmp_path):
    tree = dmverity.format_hash_tree(data, tmp_path / "root.verity", seed=SEED)
    dump = tools.run("veritysetup", ["dump", tmp_path / "root.verity"]).stdout.decode()
    fields = dict(re.findall(r"^([A-Za-z ]+):\s+(\S+)", dump, flags=re.M))
    assert fields["UUID"] == tree.uuid
    assert fields["Salt"] == tree.salt
    assert int(fields["Data blocks"]) == tree.data_blocks == 300
    assert int(fields["Data block size"]) == tree.data_block_size == 4096
    assert int(fields["Hash block size"]) == tree.hash_block_size == 4096
    assert fields["Hash algorithm"] == tree.hash_algorithm == "sha256"
    assert int(fields["Hash type"]) == tree.format_version == 1
    assert tree.hash_size == (tmp_path / "root.verity").stat().st_size
    assert len(tree.root_hash) == 64 and len(bytes.fromhex(tree.salt)) == 32


def test_a_partial_last_block_is_refused_because_it_would_be_read_unchecked(tmp_path):
    data = tmp_path / "odd.squashfs"
    data.write_bytes(os.urandom(4096 * 3 + 100))
    with pytest.raises(InputError, match="multiple of 4096"):
        dmverity.format_hash_tree(data, tmp_path / "odd.verity", seed=SEED)
    assert not (tmp_path / "odd.verity").exists()
    with pytest.raises(InputError, match="not found|No such file"):
        dmverity.format_hash_tree(tmp_path / "missing", tmp_path / "m.verity", seed=SEED)


def test_a_failing_veritysetup_leaves_no_hash_file(data, tmp_path, monkeypatch):
    real_run = tools.run

    def failing(tool, args, **kwargs):
        real_run(tool, args, **kwargs)
        raise KeyboardInterrupt  # killed after veritysetup wrote the tree, before the rename

    monkeypatch.setattr(tools, "run", failing)
    with pytest.raises(KeyboardInterrupt):
        dmverity.format_hash_tree(data, tmp_path / "root.verity", seed=SEED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root.squashfs"]


def test_dm_mod_create_names_the_partitions_and_carries_the_whole_table(data, tmp_path):
    tree = dmverity.format_hash_tree(data, tmp_path / "root.verity", seed=SEED)
    root = dmverity.partuuid("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
    verity = dmverity.partuuid("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5")
    argument = dmverity.dm_mod_create_argument(tree, data_device=root, hash_device=verity)
    # dm-init.rst: <name>,<uuid>,<minor>,<flags>,<table>; verity.rst: the verity target's parameters
    assert argument == (
        'dm-mod.create="root,,,ro,0 2400 verity 1 PARTUUID=4f68bce3-e8cd-4db1-96e7-fbcaf984b709 '
        f'PARTUUID=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5 4096 4096 300 1 sha256 {tree.root_hash} {tree.salt}"')
    restart = dmverity.dm_mod_create_argument(tree, data_device="/dev/vda2", hash_device="/dev/vda3",
                                              on_corruption="restart")
    assert restart.endswith(f'{tree.salt} 1 restart_on_corruption"')
    assert dmverity.waitfor_argument(root, verity) == f"dm-mod.waitfor={root},{verity}"


@pytest.mark.parametrize("device", ["", "/dev/vda2 evil", "PARTUUID=abc", "/dev/vda2,x", 'PARTUUID="x"', "root;x"])
def test_a_device_that_would_break_the_table_is_refused(data, tmp_path, device):
    tree = dmverity.format_hash_tree(data, tmp_path / "root.verity", seed=SEED)
    with pytest.raises(InputError, match="data_device"):
        dmverity.dm_mod_create_argument(tree, data_device=device, hash_device="/dev/vda3")
    with pytest.raises(InputError, match="name"):
        dmverity.dm_mod_create_argument(tree, data_device="/dev/vda2", hash_device="/dev/vda3", name="a,b")
    with pytest.raises(InputError, match="on_corruption"):
        dmverity.dm_mod_create_argument(tree, data_device="/dev/vda2", hash_device="/dev/vda3", on_corruption="log")


def test_the_record_round_trips_through_json_and_bad_fields_are_named(data, tmp_path):
    tree = dmverity.format_hash_tree(data, tmp_path / "root.verity", seed=SEED)
    assert VerityTree.from_json(tree.to_json()) == tree
    with pytest.raises(InputError, match="root_hash"):
        VerityTree.from_json({**tree.to_json(), "root_hash": "XYZ"}, "manifest.json")
    with pytest.raises(InputError, match="data_blocks"):
        VerityTree.from_json({**tree.to_json(), "data_blocks": -1})
    with pytest.raises(InputError, match="data_blocks"):
        VerityTree.from_json({**tree.to_json(), "data_blocks": True})
    with pytest.raises(InputError, match="unknown field 'extra'"):
        VerityTree.from_json({**tree.to_json(), "extra": 1})
    with pytest.raises(InputError, match="expected an object"):
        VerityTree.from_json([])
