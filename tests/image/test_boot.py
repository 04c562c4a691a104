"""Boot preparation without QEMU: command line, QEMU arguments, the provisioned /var disk and TPM."""

from __future__ import annotations

import json
import subprocess

import pytest

from obelisk.image import boot

MANIFEST = {"image": {"name": "n1", "version": "1"},
            "spec": {"kernel": {"cmdline": ["console=ttyS0", "quiet"]}, "ima": {"policy": "appraise-rootfs"},
                     "disk": {"size_mib": 40}}}


def test_kernel_cmdline():
    line = boot.kernel_cmdline(MANIFEST)
    assert line.startswith("console=ttyS0 quiet ")
    for part in ("initramfs_async=0", "obelisk.root=/dev/vda", "obelisk.var=/dev/vdb", "obelisk.image=n1",
                 "ima_hash=sha256", f"ip={boot.GUEST_IP}::10.0.2.2:255.255.255.0::eth0:off"):
        assert part in line.split()


def test_qemu_args_forward_only_the_agent(tmp_path):
    args = boot.qemu_args(tmp_path / "out", tmp_path / "run", 12345, "console=ttyS0", 512)
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev and f"hostfwd=tcp:127.0.0.1:12345-{boot.GUEST_IP}:8443" in netdev
    assert f"file={tmp_path / 'out' / 'rootfs.squashfs'},if=virtio,format=raw,readonly=on" in args
    assert "tpm-tis,tpmdev=tpm0" in args


@pytest.mark.swtpm
def test_provision_writes_var_disk_and_enrolls_the_ak(tmp_path):
    from obelisk.attest import akrecord
    from obelisk.signer.keygen import generate

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    run = tmp_path / "run"
    info = boot.provision(tmp_path, run, keys.ca_cert, keys.ca_key, MANIFEST, 9999)
    assert (run / "var.img").stat().st_size == 40 * 1024 * 1024
    # the agent's key lives only on the node's disk, not in the run directory
    assert not list(run.glob("**/agent.key"))
    listing = subprocess.run(["debugfs", "-R", "ls -l /lib/obelisk", str(run / "var.img")], capture_output=True,
                             text=True, check=True).stdout
    assert "agent.key" in listing and "agent.json" in listing and "ca.pem" in listing
    cat = subprocess.run(["debugfs", "-R", "cat /lib/obelisk/agent.json", str(run / "var.img")],
                         capture_output=True, text=True, check=True).stdout
    config = json.loads(cat)
    assert config["client_ca"] == "ca.pem" and config["tcti"] == "device:/dev/tpmrm0"
    record = akrecord.load((run / "ak.json").read_bytes(), "ak.json")
    assert record.qualified_name and not record.missing_attributes()
    assert info["client_cert"].exists() and oct(info["client_key"].stat().st_mode & 0o777) == "0o600"
