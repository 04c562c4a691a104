"""Tables a caller shows in the HTML report beside its findings (the fleet's nodes, a node's rounds and
events), and the links between such pages: data for the renderer, never markup.

A link is a same-origin path (`/dashboard/nodes/ID`) or a fragment: the page's Content-Security-Policy
stays as strict as the file report's, and nothing a node reports can become a link elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from obelisk.core.findings import Status

_ID = re.compile(r"[a-z][a-z0-9-]{0,40}")
# a path ("/x", never "//host": that is another origin) or a fragment
_HREF = re.compile(r"(/([A-Za-z0-9._~%:-][A-Za-z0-9._~%:/-]*)?|#[A-Za-z0-9._~%=&,-]*)")
BADGES = frozenset(s.value for s in Status)  # the colours the report's stylesheet has


@dataclass(frozen=True)
class Cell:
    text: str
    href: str = ""  # a same-origin path or a fragment
    badge: str = ""  # a finding status (pass, fail, error, skip, manual, waived): shown as its coloured badge
    mono: bool = False

    def __post_init__(self) -> None:
        if self.href and not _HREF.fullmatch(self.href):
            raise ValueError(f"link {self.href[:60]!r}: only same-origin paths and fragments")
        if self.badge and self.badge not in BADGES:
            raise ValueError(f"badge {self.badge!r}: one of {', '.join(sorted(BADGES))}")


@dataclass(frozen=True)
class Panel:
    id: str  # the table's HTML id (tests and tools find it by this)
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    empty: str = "None."  # shown instead of an empty table

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.id):
            raise ValueError(f"panel id {self.id!r}: lower-case letters, digits and '-'")
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"panel {self.id} row {i}: {len(row)} cells for {len(self.columns)} columns")
