"""The node's log of obelisk's own PCR 11 boot measurements (`/run/obelisk/boot-events`).

One line per event, in the order they were extended, written by the initramfs and
/sbin/obelisk-init (image/measure.py says what each event is):

    11 obelisk.cmdline 3f0c...64 hex digits
    11 obelisk.root 88d4...
    11 obelisk.boot-complete 5b1e...

Like the firmware event log it is untrusted until it replays to the quoted PCR: the verifier
replays it first, and only then compares each event with the build's (so that it can say *which*
measurement differs: the command line or the root). Parsing is strict and bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from obelisk.core.errors import ParseError

LOG_PATH = "/run/obelisk/boot-events"
MAX_SIZE = 64 * 1024
MAX_EVENTS = 256
_LINE = re.compile(rb"([0-9]{1,2}) ([a-z0-9][a-z0-9.-]{0,63}) ([0-9a-f]{64})")


@dataclass(frozen=True)
class LoggedEvent:
    pcr: int
    name: str
    digest: bytes  # sha256, what was extended


def parse(data: bytes, source: str = "boot events") -> tuple[LoggedEvent, ...]:
    if len(data) > MAX_SIZE:
        raise ParseError(f"larger than {MAX_SIZE} bytes", source=source)
    events: list[LoggedEvent] = []
    offset = 0
    for line in data.split(b"\n"):
        if line:
            if len(events) == MAX_EVENTS:
                raise ParseError(f"more than {MAX_EVENTS} events", source=source)
            m = _LINE.fullmatch(line)
            if m is None or int(m.group(1)) > 23:
                raise ParseError(f"offset {offset}: expected 'PCR NAME SHA256-HEX', got {line[:80]!r}",
                                 source=source)
            events.append(LoggedEvent(int(m.group(1)), m.group(2).decode(), bytes.fromhex(m.group(3).decode())))
        offset += len(line) + 1
    return tuple(events)


def serialize(events: tuple[LoggedEvent, ...] | list[LoggedEvent]) -> bytes:
    return b"".join(f"{e.pcr} {e.name} {e.digest.hex()}\n".encode() for e in events)
