"""What a build expects the firmware and the UKI's stub to measure: events per PCR, and the values.

The build predicts PCR 4 (the UKI as the firmware loads it), PCR 7 (the Secure Boot state and the
authority that admitted the UKI) and PCR 11 (the UKI's sections as systemd-stub measures them).
Each producer returns a `PcrPrediction`; the manifest stores them; the verifier replays a node's
UEFI event log against its quote and compares event by event, so that a mismatch is named by the
`name` of the expected event it concerns (e.g. "the UKI (Authenticode)", "SecureBoot", "db",
"UKI section .initrd") rather than as a bare PCR value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from obelisk.tpm.pcr import extend

BANK = "sha256"


@dataclass(frozen=True)
class ExpectedEvent:
    pcr: int
    event_type: int  # TCG PC Client event type (eventlog.EV_*)
    digest: bytes  # the sha256 the event extends into the PCR
    name: str  # what is measured, in words an operator reads in a finding
    data: bytes = b""  # the event data the log should carry, when the build knows it (else empty)


@dataclass(frozen=True)
class PcrPrediction:
    pcr: int
    events: tuple[ExpectedEvent, ...]

    @property
    def value(self) -> bytes:
        return replay(self.events)


def replay(events: Iterable[ExpectedEvent], start: bytes = b"\0" * 32) -> bytes:
    """The PCR's value after extending each event's digest in order (sha256 bank)."""
    value = start
    for event in events:
        value = extend(value, event.digest, BANK)
    return value
