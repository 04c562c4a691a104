"""The kernel command line an image boots with, fixed at build time.

The command line is the UKI's `.cmdline` section: systemd-stub measures it into PCR 11 and, with
Secure Boot on, ignores any other the boot loader passes. The build knows it byte for byte:
obelisk's defaults, the dm-verity root (its root hash binds the root partition to this UKI), the
spec's `kernel.cmdline` (which may override the defaults), and what IMA needs, recorded in the
manifest as `boot.cmdline`. A node booted with anything else (say `ima_appraise=off`, or another
root) has another PCR 11: its /var stays locked and the verifier names PCR 11's `.cmdline`.

The kernel profile's parameters come before the spec's (`cmdline_plan.profile_words`): the hardened
line is the default, and the build refuses a spec whose words make the line fail the profile's
command-line checks (`profile_failures`) unless `kernel.waivers` waives each failing check by id.

Devices: the root is one of the two verity devices the kernel makes from `dm-mod.create=` (one per
A/B slot, both checked against this image's root hash): `obelisk.root=slot` has the initramfs mount
the slot whose hash partition's top block hashes (with the salt) to `obelisk.verity=`'s root hash,
so one UKI boots from either slot and its measurements do not depend on the slot; /var is
disk.raw's partition named `var`, found by name; the config disk is the second disk `obelisk boot`
attaches.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from obelisk.core.findings import Finding, Status
from obelisk.core.waivers import apply_waivers, load_waivers
from obelisk.image.spec import Spec, SpecError
from obelisk.kernel_hardening import cmdline_plan
from obelisk.kernel_hardening.profile import load_profile

ROOT_DEVICE = "slot"
VAR_DEVICE = "PARTLABEL=var"
CONFIG_DEVICE = "/dev/vdb"


def verity_word(root_hash: str, salt: str, hash_start_block: int) -> str:
    """What the initramfs checks each slot's hash partition against: `obelisk.verity=ROOTHASH,SALT,START`."""
    return f"obelisk.verity={root_hash},{salt},{hash_start_block}"


# x86's COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h): the kernel cuts a longer line silently, which
# would cut the second slot's dm-verity table
MAX_CMDLINE = 2047


def check_length(spec: Spec, line: str) -> None:
    if len(line.encode()) > MAX_CMDLINE:
        raise SpecError(spec.source, "kernel.cmdline", f"the command line is {len(line.encode())} bytes, over the "
                        f"kernel's {MAX_CMDLINE} (both slots' dm-verity tables are on it): shorten kernel.cmdline")


def kernel_cmdline(spec: Spec, root: Sequence[str] = ()) -> str:
    """`root`: the words that set the verity root up (disk_image.verity_root_argument, verity_word)."""
    # panic=-1: a node that cannot boot powers off instead of sitting at a panic.
    # initramfs_async=0: the initramfs is unpacked before IMA loads /etc/keys/x509_ima.der from it.
    # ip=dhcp: the agent's address (QEMU's user network hands out 10.0.2.15).
    # The spec's words come after these defaults: the last obelisk.root= (or ip=, ...) wins, so real
    # hardware names its own disks there.
    words = ["panic=-1", "initramfs_async=0", *root, f"obelisk.root={ROOT_DEVICE}", f"obelisk.var={VAR_DEVICE}",
             f"obelisk.config={CONFIG_DEVICE}", "ip=dhcp", f"obelisk.image={spec.name}"]
    words += cmdline_plan.profile_words(load_profile(spec.kernel.profile))
    words += list(spec.kernel.cmdline)
    if spec.ima.policy != "none":
        words += ["ima_hash=sha256", "ima_template=ima-sig"]  # signatures in the list, for the verifier
    return " ".join(words)


def profile_findings(spec: Spec, line: str, today: _dt.date | None = None) -> tuple[Finding, ...]:
    """The kernel profile's command-line checks on the image's line, with `kernel.waivers` applied."""
    findings = cmdline_plan.cmdline_findings(load_profile(spec.kernel.profile), line, "boot.cmdline")
    if spec.kernel.waivers:
        findings = apply_waivers(findings, load_waivers(spec.kernel.waivers), today)
    return findings


def refuse_failing(spec: Spec, findings: tuple[Finding, ...]) -> None:
    """One line naming every check the line fails that no unexpired waiver covers."""
    failed = [f for f in findings if f.status is Status.FAIL]
    if failed:
        what = "; ".join(f"{f.id} ({f.observed or 'missing'}, expected {f.expected}"
                         + (f", waiver expired {f.waiver.expires.isoformat()}" if f.waiver else "") + ")"
                         for f in failed)
        raise SpecError(spec.source, "kernel.cmdline",
                        f"the command line fails the {spec.kernel.profile} profile: {what}; "
                        "change kernel.cmdline or waive these ids in kernel.waivers")
