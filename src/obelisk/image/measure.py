"""obelisk's own boot measurements into PCR 11, and the values the build predicts for them.

Firmware PCRs 0-9 depend on the machine; PCR 11 is obelisk's. At every boot:

    1. the initramfs extends sha256(/proc/cmdline)              "obelisk.cmdline"
    2. the initramfs extends sha256(the whole root device)      "obelisk.root"
       ── /var's key is sealed to PCR 11 at this point: another command line or root cannot unseal it
    3. /sbin/obelisk-init extends sha256(BOOT_COMPLETE)          "obelisk.boot-complete"
       ── after this, nothing running on the node can unseal /var's key again

Both measurements happen before any code from the root runs, so a root that was changed (or a
command line that switches appraisal off) shows in PCR 11 whatever it does afterwards. Each
event extends the sha256 bank with the sha256 of its data (TPM2_PCR_Extend), so the build, which
knows the command line and the SquashFS bytes, predicts PCR 11 exactly; the verifier compares
the quoted value with `pcrs.predicted` in the manifest.

The initramfs has no TPM library: it writes the TPM2_PCR_Extend command to /dev/tpmrm0 itself
(`shell_functions`), and /sbin/obelisk-init writes the constant command `extend_command(...)`
built here. A test sends both to swtpm and compares PCR 11 with `predict`. Both also append
each event to /run/obelisk/boot-events (attest/bootevents.py), which the agent hands to the
verifier so that it can name the measurement that differs.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from obelisk.tpm import algorithms
from obelisk.tpm.pcr import extend as extend_pcr

PCR = 11
BANK = "sha256"
BOOT_COMPLETE = b"obelisk: boot complete, /var key no longer unsealable"
BOOT_COMPLETE_DIGEST = hashlib.sha256(BOOT_COMPLETE).digest()
UNSEAL_AFTER = 2  # /var's key is sealed to PCR 11 after this many events

_TPM_ST_SESSIONS = 0x8002
_TPM_CC_PCR_EXTEND = 0x00000182
_TPM_RS_PW = 0x40000009


@dataclass(frozen=True)
class BootEvent:
    pcr: int
    name: str
    digest: bytes  # sha256 of the measured data: what is extended
    measured_by: str
    description: str

    def to_json(self) -> dict[str, object]:
        return {"pcr": self.pcr, "name": self.name, "digest": self.digest.hex(), "measured_by": self.measured_by,
                "description": self.description}


def boot_events(cmdline: str, rootfs_sha256: bytes) -> tuple[BootEvent, ...]:
    """PCR 11's events, in the order a node extends them."""
    return (
        BootEvent(PCR, "obelisk.cmdline", hashlib.sha256(cmdline.encode() + b"\n").digest(), "initramfs",
                  "the kernel command line as /proc/cmdline shows it"),
        BootEvent(PCR, "obelisk.root", rootfs_sha256, "initramfs", "every byte of the root device (rootfs.squashfs)"),
        BootEvent(PCR, "obelisk.boot-complete", BOOT_COMPLETE_DIGEST, "/sbin/obelisk-init",
                  "marks the end of boot: /var's sealed key cannot be unsealed after it"),
    )


def replay(events: tuple[BootEvent, ...] | list[BootEvent], start: bytes = b"\0" * 32) -> bytes:
    value = start
    for event in events:
        value = extend_pcr(value, event.digest, BANK)
    return value


@dataclass(frozen=True)
class Prediction:
    unseal: bytes  # PCR 11 while /var is unlocked: what the disk key is sealed to
    final: bytes  # PCR 11 on a running node: what a quote shows


def predict(events: tuple[BootEvent, ...]) -> Prediction:
    return Prediction(unseal=replay(events[:UNSEAL_AFTER]), final=replay(events))


def extend_command(pcr: int, digest: bytes) -> bytes:
    """TPM2_PCR_Extend(pcr, sha256 digest) with an empty password session, as the TPM reads it."""
    if len(digest) != 32:
        raise ValueError("a sha256 digest is 32 bytes")
    auth = struct.pack(">IHBH", _TPM_RS_PW, 0, 0, 0)
    body = struct.pack(">I", pcr) + struct.pack(">I", len(auth)) + auth \
        + struct.pack(">IH", 1, algorithms.by_name(BANK).alg_id) + digest
    return struct.pack(">HII", _TPM_ST_SESSIONS, 10 + len(body), _TPM_CC_PCR_EXTEND) + body


def command_prefix_hex(pcr: int) -> str:
    """`extend_command` without its digest, in hex: the initramfs appends the digest it computed."""
    return extend_command(pcr, b"\0" * 32)[:-32].hex()


# The shell functions live in templates/tpm-send.sh.j2 and tpm-extend.sh.j2 (image/scripts.py).

def shell_send() -> str:
    """tpm_send FILE: one TPM command to the TPM device, its response code checked (dash and busybox sh)."""
    from obelisk.image import scripts

    return scripts.render("tpm-send.sh.j2")


def shell_functions(pcr: int = PCR) -> str:
    """tpm_send and tpm_extend (for PCR `pcr`), for the initramfs's busybox sh."""
    from obelisk.image import scripts

    return shell_send() + scripts.render("tpm-extend.sh.j2", tpm_prefix=command_prefix_hex(pcr))
