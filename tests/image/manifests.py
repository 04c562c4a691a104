"""A small but complete image manifest, for tests of its readers that need no build."""

from __future__ import annotations

import dataclasses
import hashlib

from obelisk.image import manifest as mf

FILES = (
    mf.FileRecord("/usr", mf.DIR, mode="0755"),
    mf.FileRecord("/usr/bin", mf.DIR, mode="0755"),
    mf.FileRecord("/usr/bin/agent", mf.FILE, mode="0755", size=1, sha256=hashlib.sha256(b"a").hexdigest()),
    mf.FileRecord("/usr/bin/sh", mf.SLINK, target="agent"),
)


def sample_manifest(**changes) -> mf.Manifest:
    """Image n1 1, unsigned, plain /var of 64 MiB, no TPM predictions; `changes` replace whole fields."""
    m = mf.Manifest(
        image=mf.Image(name="n1", version="1"),
        tool=mf.Tool(name="obelisk", version="0.1.0", gensquashfs="gensquashfs (squashfs-tools-ng) 1.2.0"),
        source_date_epoch=1700000000,
        spec={"name": "n1", "version": "1", "disk": {"size_mib": 64}},
        signing=None,
        artifacts={"rootfs.squashfs": mf.Artifact(sha256="00" * 32, size=4096)},
        files=FILES,
        ima_reference=mf.ima_reference(FILES, "n1-1"),
        boot=mf.Boot(cmdline="panic=-1 obelisk.root=/dev/vda obelisk.var=/dev/vdb console=ttyS0",
                     devices=mf.Devices(root="/dev/vda", var="/dev/vdb", config="/dev/vdc")),
        pcrs=mf.Pcrs(bank="sha256", predicted={}, predictions=(), note="no TPM"),
        disk=mf.Disk(var="plain", policy=None, sealed_to={}, signed_policy=None, policy_certificate=None,
                     size_mib=64),
        kubernetes=mf.Kubernetes(role="none", version="1.31", binaries="/opt/kubernetes/bin (not included)"),
        sbom="sbom.spdx.json",
    )
    return dataclasses.replace(m, **changes)
