"""The agent's upgrade endpoint over real mutual TLS, writing a real A/B disk.raw (a file standing in for the
node's disk) and UEFI variables (a directory standing in for efivarfs): who may upgrade, what is verified
before a byte is written, what a good upgrade leaves (slot b written, its one trial boot set), and the trial's
commit, failure record and deadline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest

from obelisk.attest import upgrade, upgrade_client
from obelisk.attest.agent import AgentConfig, Services, make_server
from obelisk.attest.agent_certs import issue
from obelisk.attest.agent_client import AgentEndpoint
from obelisk.image import disk_image, dmverity, efiboot, slots
from obelisk.image import manifest as mf
from tests.image.manifests import sample_manifest

SEED = "obelisk:n1"
MIB = 1 << 20


def _image(root: Path, keys, version: str, content: bytes, *, sign_with=None) -> Path:
    """OUT for image n1 `version`: disk.raw with slot a, rootfs.squashfs/.verity, a signed manifest."""
    from obelisk.signer.keys import load_certificate, load_signing_key

    out = root / f"out-{version}"
    out.mkdir(parents=True)
    (out / "rootfs.squashfs").write_bytes(content)
    tree = dmverity.format_hash_tree(out / "rootfs.squashfs", out / "rootfs.verity", seed=f"{SEED}:{version}")
    (root / f"uki-{version}.efi").write_bytes(b"MZ uki " + version.encode() + bytes(4096))
    uki = root / f"uki-{version}.efi"
    layout = disk_image.build_disk_image(out / "disk.raw", esp_files={"EFI/BOOT/BOOTX64.EFI": uki},
                                         root=out / "rootfs.squashfs", root_verity=out / "rootfs.verity",
                                         var_size=64 * MIB, seed=SEED, source_date_epoch=1700000000,
                                         esp_size=64 * MIB, slot_size=16 * MIB)
    artifacts = {name: mf.artifact_record(out / name) for name in ("rootfs.squashfs", "rootfs.verity")}
    m = sample_manifest(image=mf.Image(name="n1", version=version), artifacts=artifacts,
                        spec={"name": "n1", "version": version, "upgrade": {"preserve_var": True, "trial_seconds": 60}})
    m = dataclasses.replace(m, boot=dataclasses.replace(m.boot, disk_image=layout))
    data = mf.serialize(m)
    (out / mf.MANIFEST).write_bytes(data)
    signer = sign_with or keys
    sig = mf.sign(data, load_signing_key(str(signer.ima_key)), load_certificate(signer.ima_cert))
    (out / mf.SIGNATURE).write_text(json.dumps(sig.to_json()))
    assert tree.root_hash
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from obelisk.signer.keygen import generate

    root = tmp_path_factory.mktemp("upgrade")
    keys = generate(root / "customer", "ecdsa-p256")
    other = generate(root / "other", "ecdsa-p256")
    certs = {
        "server": issue(keys.ca_cert, keys.ca_key, root / "server", "node-1", server=True),
        "operator": issue(keys.ca_cert, keys.ca_key, root / "operator", "pipeline", server=False, roles=("operator",)),
        "reader": issue(keys.ca_cert, keys.ca_key, root / "reader", "verifier", server=False),
    }
    v100 = _image(root, keys, "1.0.0", b"\x01" * (2 * MIB))
    v101 = _image(root, keys, "1.0.1", b"\x02" * (3 * MIB))
    rogue = _image(root, keys, "1.0.1-rogue", b"\x03" * (2 * MIB), sign_with=other)
    return {"root": root, "keys": keys, "certs": certs, "1.0.0": v100, "1.0.1": v101, "rogue": rogue}


@pytest.fixture
def node(world, tmp_path):
    """A node of 1.0.0 booted from slot a: its disk, efivars and /run/obelisk/slot; its agent on 127.0.0.1."""
    from obelisk.signer.keys import load_certificate

    disk = tmp_path / "node-disk.raw"
    shutil.copyfile(world["1.0.0"] / "disk.raw", disk)
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    (tmp_path / "slot").write_text("a\n")
    reboots: list[int] = []
    n = upgrade.Node(disk=str(disk), efivars=efiboot.EfiVars(efivars), slot_file=str(tmp_path / "slot"),
                     reboot=lambda: reboots.append(1))
    endpoint = upgrade.Endpoint(node=n, ca=load_certificate(world["keys"].ca_cert), image="n1")
    log: list[str] = []
    server_cert = world["certs"]["server"]
    config = AgentConfig(cert=str(server_cert.cert), key=str(server_cert.key), client_ca=str(world["keys"].ca_cert),
                         host="127.0.0.1", port=0, image="n1")
    services = Services(evidence=lambda nonce: "{}", kernel=dict, scan=None, image="n1", upgrade=endpoint)
    server = make_server(config, services, log=log.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"node": n, "disk": disk, "url": f"https://127.0.0.1:{server.server_address[1]}", "log": log,
           "reboots": reboots, "tmp": tmp_path}
    server.shutdown()
    server.server_close()


def _endpoint(world, url, who):
    c = world["certs"][who]
    return AgentEndpoint(url, ca=str(world["keys"].ca_cert), cert=str(c.cert), key=str(c.key), timeout=30)


def _slot_bytes(disk: Path, layout: disk_image.DiskLayout, slot: str) -> dict[str, bytes]:
    out = {}
    with open(disk, "rb") as handle:
        for name in disk_image.SLOTS[slot].partitions:
            part = layout.partition(name)
            handle.seek(part.start)
            out[name] = handle.read(part.size)
    return out


def test_an_operator_upgrade_writes_slot_b_verified_and_sets_its_one_trial_boot(world, node):
    layout = mf.load(world["1.0.1"] / mf.MANIFEST).boot.disk_image
    before_a = _slot_bytes(node["disk"], layout, "a")
    result = upgrade_client.upgrade_node(_endpoint(world, node["url"], "operator"), world["1.0.1"], wait=0)
    assert result.outcome == "written" and result.slot == "b", result
    parts = _slot_bytes(node["disk"], layout, "b")
    assert parts["root-b"].startswith((world["1.0.1"] / "rootfs.squashfs").read_bytes())
    assert parts["root-b-verity"].startswith((world["1.0.1"] / "rootfs.verity").read_bytes())
    assert hashlib.sha256(parts["boot-b"]).hexdigest() == layout.partition("esp").sha256
    assert _slot_bytes(node["disk"], layout, "a") == before_a  # the running slot is untouched
    assert result.bytes_written == sum(p.length for p in upgrade_client.stream_parts(world["1.0.1"])[2])
    # the firmware's side: entries for both slots, the running slot first in BootOrder, b as BootNext
    efivars = node["node"].efivars
    entry_b = efiboot.parse_load_option(efivars.read("Boot5101"))
    table = disk_image.read_gpt(node["disk"])
    boot_b = next(p for p in table.partitions if p.name == "boot-b")
    assert (entry_b.partition_uuid, entry_b.partition_number, entry_b.partition_start, entry_b.path) == \
        (boot_b.uuid, boot_b.number, boot_b.first_lba, "\\EFI\\BOOT\\BOOTX64.EFI")
    assert efivars.boot_order()[:2] == (0x5100, 0x5101)
    assert efiboot.parse_boot_order(efivars.read("BootNext")) == (0x5101,)
    state = slots.state(efivars, "a")
    assert state.trial is not None and state.trial.slot == "b" and state.trial.version == "1.0.1"
    assert state.trial.deadline == 60 and state.committed == "a"
    assert node["reboots"] == [] or node["reboots"] == [1]  # the reboot follows the answer by two seconds
    # and the GET side, for the operator
    status = json.loads(_endpoint(world, node["url"], "operator").get_ok("/v1/upgrade"))
    assert status["booted"] == "a" and status["trial"]["slot"] == "b"


def test_a_reader_certificate_cannot_upgrade(world, node):
    result = upgrade_client.upgrade_node(_endpoint(world, node["url"], "reader"), world["1.0.1"], wait=0)
    assert result.outcome == "refused" and "403" in result.detail and "operator role" in result.detail
    assert node["node"].efivars.read("BootNext") is None
    layout = mf.load(world["1.0.1"] / mf.MANIFEST).boot.disk_image
    assert set(b"".join(_slot_bytes(node["disk"], layout, "b").values())) == {0}


def test_an_image_signed_by_another_ca_is_refused_before_a_byte_is_written(world, node):
    result = upgrade_client.upgrade_node(_endpoint(world, node["url"], "operator"), world["rogue"], wait=0)
    assert result.outcome == "refused" and "403" in result.detail, result
    assert "not the customer CA's" in result.detail and result.bytes_written == 0
    layout = mf.load(world["rogue"] / mf.MANIFEST).boot.disk_image
    assert set(b"".join(_slot_bytes(node["disk"], layout, "b").values())) == {0}
    assert node["node"].efivars.read("BootNext") is None


def test_a_part_that_does_not_match_the_manifest_is_never_activated(world, node, tmp_path):
    bad = tmp_path / "bad-out"
    shutil.copytree(world["1.0.1"], bad)
    with open(bad / "rootfs.squashfs", "r+b") as handle:
        handle.seek(12345)
        handle.write(b"\xff")
    result = upgrade_client.upgrade_node(_endpoint(world, node["url"], "operator"), bad, wait=0)
    assert result.outcome == "refused" and "422" in result.detail and "root-b: sha256" in result.detail, result
    assert result.bytes_written > 0  # streamed into the inactive slot, then refused ...
    assert node["node"].efivars.read("BootNext") is None  # ... never made bootable
    layout = mf.load(world["1.0.1"] / mf.MANIFEST).boot.disk_image
    verity = _slot_bytes(node["disk"], layout, "b")["root-b-verity"]
    assert verity[:8192] == bytes(8192)  # no root hash matches slot b


def test_the_trial_commits_or_is_recorded_as_failed_and_its_deadline_reboots(world, node):
    n = node["node"]
    upgrade_client.upgrade_node(_endpoint(world, node["url"], "operator"), world["1.0.1"], wait=0)
    # the firmware deleted BootNext and booted slot b: its obelisk-init marks the trial
    n.efivars.delete("BootNext")
    Path(n.slot_file).write_text("b\n")
    marker = node["tmp"] / "trial"
    lines: list[str] = []
    state = upgrade.on_boot(n, None, lines.append, marker=str(marker))
    assert state is not None and state.in_trial and marker.read_text() == "60\n"
    # its deadline passes without a commit: the node reboots (back to slot a by BootOrder)
    reboots: list[int] = []
    assert upgrade.deadline(n, lines.append, reboot=lambda: reboots.append(1)) and reboots == [1]
    Path(n.slot_file).write_text("a\n")
    state = upgrade.on_boot(n, None, lines.append, marker=str(node["tmp"] / "trial-2"))
    assert state is not None and not state.in_trial and state.trial is None
    assert state.last_trial is not None and state.last_trial.result == "failed" and state.last_trial.slot == "b"
    assert any("trial boot of slot b (n1 1.0.1) failed: back on slot a" in line for line in lines), lines
    assert n.efivars.boot_order()[0] == 0x5100

    # upgrade again; this time the trial boot comes up and commits
    upgrade_client.upgrade_node(_endpoint(world, node["url"], "operator"), world["1.0.1"], wait=0)
    Path(n.slot_file).write_text("b\n")
    assert slots.commit(n.efivars, "b") is not None
    state = slots.state(n.efivars, "b")
    assert state.committed == "b" and state.trial is None and state.last_trial.result == "committed"
    assert n.efivars.boot_order()[:2] == (0x5101, 0x5100)
    assert not upgrade.deadline(n, lines.append, reboot=lambda: pytest.fail("a committed slot never reboots"))
    # the next upgrade writes slot a
    result = upgrade_client.upgrade_node(_endpoint(world, node["url"], "operator"), world["1.0.0"], wait=0)
    assert result.outcome == "written" and result.slot == "a"


def test_a_disk_of_another_layout_is_refused(world, node, tmp_path):
    from obelisk.signer.keys import load_certificate

    other = tmp_path / "small.raw"
    disk_image.build_disk_image(other, esp_files={"EFI/BOOT/BOOTX64.EFI": world["root"] / "uki-1.0.0.efi"},
                                root=world["1.0.0"] / "rootfs.squashfs", root_verity=world["1.0.0"] / "rootfs.verity",
                                var_size=64 * MIB, seed=SEED, source_date_epoch=1700000000, esp_size=64 * MIB,
                                slot_size=8 * MIB)
    n = dataclasses.replace(node["node"], disk=str(other))
    data, sig, parts = upgrade_client.stream_parts(world["1.0.1"])
    stream = b"".join(upgrade_client.body(data, sig, parts, lambda n: None))
    import io

    with pytest.raises(upgrade.Refused, match="partition boot-b: the new image has .* another disk layout") as exc:
        upgrade.upgrade(io.BytesIO(stream), len(stream), node=n, ca=load_certificate(world["keys"].ca_cert),
                        image="n1")
    assert exc.value.written == 0


def test_load_options_round_trip_and_damage_is_a_parse_error():
    from obelisk.core.errors import ParseError

    option = efiboot.LoadOption(description="obelisk slot b", partition_number=4, partition_start=288768,
                                partition_size=131072, partition_uuid="0b0c6f0e-1c49-5d3f-9a1e-6f1e2d3c4b5a",
                                path="\\EFI\\BOOT\\BOOTX64.EFI")
    data = efiboot.serialize_load_option(option)
    assert efiboot.parse_load_option(data) == option
    # UEFI's layout: attributes, FilePathListLength, UCS-2 description, HD node of 42 bytes, File, End
    assert data[:4] == b"\x01\x00\x00\x00" and data[6:6 + 30] == "obelisk slot b\0".encode("utf-16-le")
    assert data[36:38] == b"\x04\x01" and data[38:40] == (42).to_bytes(2, "little")
    assert data[-4:] == b"\x7f\xff\x04\x00"
    for cut in range(0, len(data) - 1, 7):
        with pytest.raises(ParseError):
            efiboot.parse_load_option(data[:cut])


def test_the_slot_entries_name_the_disk_as_the_firmwares_own_entry_does(world, node):
    """OVMF keeps (and does not delete) only boot options under a device QEMU lists: the node copies the disk's
    device path, PciRoot(0x0)/Pci(0x3,0x0), from the entry it booted from (BootCurrent)."""
    import struct

    pci_disk = bytes.fromhex("02010c00d041030a00000000") + bytes.fromhex("01010600" + "0003")  # PciRoot(0)/Pci(3,0)
    end = bytes.fromhex("7fff0400")
    firmware_entry = struct.pack("<IH", 1, len(pci_disk) + 4) + "UEFI Misc Device\0".encode("utf-16-le") \
        + pci_disk + end
    efivars = node["node"].efivars
    efivars.write("Boot0001", firmware_entry)
    efivars.write("BootCurrent", struct.pack("<H", 1), attributes=efiboot.BOOTSERVICE_ACCESS | efiboot.RUNTIME_ACCESS)
    assert efiboot.device_prefix(firmware_entry) == pci_disk
    result = upgrade_client.upgrade_node(_endpoint(world, node["url"], "operator"), world["1.0.1"], wait=0)
    assert result.outcome == "written"
    entry = efiboot.parse_load_option(efivars.read("Boot5101"))
    assert entry.prefix == pci_disk and entry.path == "\\EFI\\BOOT\\BOOTX64.EFI"
    assert efiboot.serialize_load_option(entry) == efivars.read("Boot5101")
    assert efivars.boot_order() == (0x5100, 0x5101)


def _with_disk(world, tmp_path: Path, **disk) -> Path:
    """A copy of 1.0.1's OUT whose manifest says what /var is sealed to (`obelisk upgrade --check` reads only
    the manifest of OUT; the agent verifies its signature when the upgrade is sent)."""
    out = tmp_path / "out-check"
    shutil.copytree(world["1.0.1"], out)
    m = mf.parse((out / mf.MANIFEST).read_bytes(), mf.MANIFEST)
    m = dataclasses.replace(m, disk=dataclasses.replace(m.disk, **disk))
    (out / mf.MANIFEST).write_bytes(mf.serialize(m))
    return out


def test_check_compares_the_nodes_pcr7_with_the_new_image_before_anything_is_written(world, tmp_path):
    from obelisk.attest import evidence as evmod
    from obelisk.attest.upgrade_client import preflight
    from obelisk.core.findings import Status
    from obelisk.tpm import eventlog
    from tests.attest import synth

    booted = synth.boot()
    pcr7 = eventlog.replay(eventlog.parse(booted.event_log)).value("sha256", 7)

    def evidence(nonce: bytes) -> str:
        ev = evmod.Evidence(nonce=nonce, attest=b"a", signature=b"s", bank="sha256", pcrs=dict(booted.pcrs),
                            ak_name=b"\0" * 34, event_log=booted.event_log, ima_log=booted.ima_log, kernel={},
                            boot_events=booted.boot_events, collected_at=evmod.now())
        return json.dumps(ev.to_json())

    server_cert = world["certs"]["server"]
    config = AgentConfig(cert=str(server_cert.cert), key=str(server_cert.key), client_ca=str(world["keys"].ca_cert),
                         host="127.0.0.1", port=0, image="n1")
    server = make_server(config, Services(evidence=evidence, kernel=dict, scan=None, image="n1"), log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # the node's evidence is all it needs: a reader certificate, nothing written
        reader = _endpoint(world, f"https://127.0.0.1:{server.server_address[1]}", "reader")
        same = preflight(reader, _with_disk(world, tmp_path / "a", sealed_to={7: pcr7}))
        found = {f.id: f for f in same.findings}
        assert found["upgrade.check.pcr7"].status is Status.PASS
        assert found["upgrade.check.rollback"].status is Status.SKIP  # the new image has no rollback index
        other = preflight(reader, _with_disk(world, tmp_path / "b", sealed_to={7: bytes(32)}, rollback_index=1))
        found = {f.id: f for f in other.findings}
        pcr_finding = found["upgrade.check.pcr7"]
        assert pcr_finding.status is Status.FAIL
        assert pcr_finding.observed == pcr7.hex() and "stay locked" in pcr_finding.detail
        assert found["upgrade.check.rollback"].status is Status.PASS  # the node has no floor yet
    finally:
        server.shutdown()
        server.server_close()
