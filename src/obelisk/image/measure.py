"""PCR 11 on an obelisk node: systemd-stub's measurements of the UKI, then the boot phases.

systemd-stub (252) measures the UKI's sections into PCR 11 before the kernel runs (image/uki.py
predicts those events). After it, the node extends PCR 11 with systemd's boot-phase words, as
systemd-pcrphase does on a systemd system, so that `systemd-measure calculate --phase=...` is the
independent reference for every value here:

    enter-initrd    the initramfs's /init, first thing
    leave-initrd    the initramfs, just before switch_root
        ── /var's key unseals here (PolicyAuthorize: the customer signs PCR 11 at this phase)
    sysinit         /sbin/obelisk-init, right after /var is unlocked: from here on nothing on the
                    node can unseal /var's key again

Each phase extends sha256(word) into the sha256 bank. The node writes the phases it extended to
/run/obelisk/boot-events (tpm/bootevents.py): they are not in the firmware's event log, and the
verifier appends them to the log's PCR 11 events before replaying it against the quote.

The initramfs has no TPM library: it writes the TPM2_PCR_Extend command to /dev/tpmrm0 itself
(templates/tpm-extend.sh.j2 with `command_prefix_hex`), and /sbin/obelisk-init sends the
constant command `extend_command(...)` built here. A test sends them to swtpm.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from obelisk.tpm import algorithms
from obelisk.tpm.eventlog import EV_IPL
from obelisk.tpm.prediction import ExpectedEvent, PcrPrediction, replay

PCR = 11
BANK = "sha256"
PHASES = ("enter-initrd", "leave-initrd", "sysinit")
UNSEAL_PHASE = "enter-initrd:leave-initrd"  # what the customer signs, in systemd-measure's --phase notation
UNSEAL_AFTER = 2  # phases extended when /var is unsealed
MEASURED_BY = {"enter-initrd": "initramfs", "leave-initrd": "initramfs", "sysinit": "/sbin/obelisk-init"}

_TPM_ST_SESSIONS = 0x8002
_TPM_CC_PCR_EXTEND = 0x00000182
_TPM_RS_PW = 0x40000009


def phase_digest(word: str) -> bytes:
    return hashlib.sha256(word.encode()).digest()


def phase_events() -> tuple[ExpectedEvent, ...]:
    return tuple(ExpectedEvent(PCR, EV_IPL, phase_digest(w), f"boot phase {w} ({MEASURED_BY[w]})", w.encode())
                 for w in PHASES)


@dataclass(frozen=True)
class Prediction:
    pcr11: PcrPrediction  # the stub's events and every phase: what a quote of a running node shows
    unseal: bytes  # PCR 11 after leave-initrd: what the customer signs for /var

    @property
    def final(self) -> bytes:
        return self.pcr11.value


def predict(stub_events: Sequence[ExpectedEvent]) -> Prediction:
    stub = tuple(stub_events)
    if any(e.pcr != PCR for e in stub):
        raise ValueError("stub events must all be PCR 11's")
    phases = phase_events()
    return Prediction(pcr11=PcrPrediction(PCR, stub + phases), unseal=replay(stub + phases[:UNSEAL_AFTER]))


def extend_command(pcr: int, digest: bytes) -> bytes:
    """TPM2_PCR_Extend(pcr, sha256 digest) with an empty password session, as the TPM reads it."""
    if len(digest) != 32:
        raise ValueError("a sha256 digest is 32 bytes")
    auth = struct.pack(">IHBH", _TPM_RS_PW, 0, 0, 0)
    body = struct.pack(">I", pcr) + struct.pack(">I", len(auth)) + auth \
        + struct.pack(">IH", 1, algorithms.by_name(BANK).alg_id) + digest
    return struct.pack(">HII", _TPM_ST_SESSIONS, 10 + len(body), _TPM_CC_PCR_EXTEND) + body


def command_prefix_hex(pcr: int) -> str:
    """`extend_command` without its digest, in hex: the initramfs appends the digest to extend."""
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
