"""The kernel command line an image boots with, fixed at build time.

The command line is measured into PCR 11 by the initramfs (measure.py), so the build has to know
it byte for byte: obelisk's defaults, the spec's `kernel.cmdline` (which may override them), and
what IMA needs, recorded in the manifest as `boot.cmdline`, and `obelisk boot` passes exactly that. A node
booted with anything else (say `ima_appraise=off`, or another root) has another PCR 11: its /var
stays locked and the verifier names PCR 11.

Devices are the virtio disks `obelisk boot` attaches: the root SquashFS, /var and the config disk.
"""

from __future__ import annotations

from obelisk.image.spec import Spec

ROOT_DEVICE = "/dev/vda"
VAR_DEVICE = "/dev/vdb"
CONFIG_DEVICE = "/dev/vdc"


def kernel_cmdline(spec: Spec) -> str:
    # panic=-1: a node that cannot boot powers off instead of sitting at a panic.
    # initramfs_async=0: the initramfs is unpacked before IMA loads /etc/keys/x509_ima.der from it.
    # ip=dhcp: the agent's address (QEMU's user network hands out 10.0.2.15).
    # The spec's words come after these defaults: the last obelisk.root= (or ip=, ...) wins, so real
    # hardware names its own disks there.
    words = ["panic=-1", "initramfs_async=0", f"obelisk.root={ROOT_DEVICE}", f"obelisk.var={VAR_DEVICE}",
             f"obelisk.config={CONFIG_DEVICE}", "ip=dhcp", f"obelisk.image={spec.name}"]
    words += list(spec.kernel.cmdline)
    if spec.ima.policy != "none":
        words += ["ima_hash=sha256", "ima_template=ima-sig"]  # signatures in the list, for the verifier
    return " ".join(words)
