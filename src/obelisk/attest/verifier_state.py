"""The verifier's state file (`attest verify --state`, `image node --state`): per AK, the counters of
its last passing quote and where the check of that node's IMA list stopped.

Version 2, `obelisk.verifier-state/2`:

    {"schema": "obelisk.verifier-state/2",
     "aks": {"<AK qualified name (else name), hex>": {
         "clock": N, "reset_count": N, "restart_count": N,
         "ima": {"references": "<sha256 of the references it was checked against>",
                 "progress": {obelisk.ima-progress/1, ima_policy/progress.py}}}}}

The next verification of the same node walks only the IMA entries measured since (`ima_check.
IncrementalChecker`), the whole list when the node rebooted (resetCount changed), when the
references differ, or when the part already checked was rewritten; the findings are always the
ones a full check gives. `ima` is absent when the last passing report had no IMA list.

Version 1 (obelisk before issue 17) had no schema, only the counters:
`{"<hex>": {"clock": N, "reset_count": N, "restart_count": N}}`. It is still read (as counters with
no IMA position: the next check walks the whole list) and rewritten as version 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from obelisk.attest import akrecord
from obelisk.attest.verify import Counters
from obelisk.core.errors import InputError, ParseError
from obelisk.ima_policy import progress as imaprogress

if TYPE_CHECKING:
    from obelisk.attest.ima_check import IncrementalChecker, References
    from obelisk.attest.verify import Options

SCHEMA = "obelisk.verifier-state/2"
MAX_STATE_BYTES = 64 * 1024 * 1024  # every AK the verifier has seen, each IMA position up to 4 MiB


@dataclass(frozen=True)
class NodeState:
    """What the verifier keeps about one AK after a passing report."""

    counters: Counters
    ima: imaprogress.ImaProgress | None = None
    references: str = ""  # the References.fingerprint `ima` was checked against


def key_of(ak: akrecord.AKRecord) -> str:
    return (ak.qualified_name or ak.name or b"").hex()


def parse(data: bytes | str, source: str = "verifier state") -> dict[str, NodeState]:
    """Either version; InputError names the file, the AK entry and the field."""
    from obelisk.core.jsonsafe import load_json

    doc = load_json(data, source, what="verifier state JSON", max_bytes=MAX_STATE_BYTES)
    if not isinstance(doc, dict):
        raise InputError("unreadable verifier state: expected an object", source=source)
    if "schema" not in doc:  # version 1: counters only
        return {key: NodeState(_counters(entry, key, source)) for key, entry in doc.items()}
    if doc["schema"] != SCHEMA:
        raise InputError(f"verifier state schema {str(doc['schema'])[:80]!r} is not {SCHEMA}", source=source)
    aks = doc.get("aks")
    if not isinstance(aks, dict):
        raise InputError("verifier state: field aks: expected an object", source=source)
    return {key: _node(entry, key, source) for key, entry in aks.items()}


def _counters(entry: Any, key: str, source: str) -> Counters:
    try:
        return Counters(int(entry["clock"]), int(entry["reset_count"]), int(entry["restart_count"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        raise InputError(f"verifier state entry {key[:80]!r} malformed: clock, reset_count, restart_count",
                         source=source) from None


def _node(entry: Any, key: str, source: str) -> NodeState:
    counters = _counters(entry, key, source)
    ima = entry.get("ima")
    if ima is None:
        return NodeState(counters)
    where = f"{source}: entry {key[:80]!r}: ima"
    if not isinstance(ima, dict) or not isinstance(ima.get("references"), str) or "progress" not in ima:
        raise InputError("expected an object with references (string) and progress", source=where)
    try:
        progress = imaprogress.parse(json.dumps(ima["progress"]), source=f"{where}.progress")
    except ParseError as exc:
        raise InputError(str(exc)) from None
    return NodeState(counters, progress, ima["references"])


def serialize(state: dict[str, NodeState]) -> str:
    aks: dict[str, Any] = {}
    for key, node in state.items():
        entry: dict[str, Any] = {"clock": node.counters.clock, "reset_count": node.counters.reset_count,
                                 "restart_count": node.counters.restart_count}
        if node.ima is not None:
            entry["ima"] = {"references": node.references, "progress": json.loads(imaprogress.serialize(node.ima))}
        aks[key] = entry
    return json.dumps({"schema": SCHEMA, "aks": aks}, sort_keys=True) + "\n"


def load(path: str | None, ak: akrecord.AKRecord) -> NodeState | None:
    """What the state file at `path` keeps for `ak` (None: no file, or the AK not seen yet)."""
    if not path or not os.path.exists(path):
        return None
    from obelisk.core.inputs import read_bounded

    return parse(read_bounded(path, "verifier state", MAX_STATE_BYTES), source=path).get(key_of(ak))


def save(path: str, ak: akrecord.AKRecord, node: NodeState) -> None:
    """Record `node` for `ak` in the state file at `path`, as version 2 (an unreadable file is started afresh)."""
    from obelisk.core import atomic

    state: dict[str, NodeState] = {}
    if os.path.exists(path):
        try:
            with open(path, "rb") as handle:
                state = parse(handle.read(), source=path)
        except (OSError, InputError):
            state = {}
    state[key_of(ak)] = node
    atomic.write_text(path, serialize(state))


def resume_ima(opts: Options, refs: References, saved: NodeState | None) -> IncrementalChecker:
    """Make `opts` check the IMA list from where `saved` stopped (when it was checked against these same
    references); the returned checker's `state` is the position to save after a passing report."""
    from obelisk.attest.ima_check import IncrementalChecker

    progress = saved.ima if saved is not None and saved.references == refs.fingerprint else None
    checker = IncrementalChecker(refs, progress)
    opts.ima_check = checker
    return checker


def after(counters: Counters, checker: IncrementalChecker, refs: References) -> NodeState:
    """The state to save once a report passed with the quote's `counters`."""
    return NodeState(counters, checker.state, refs.fingerprint)
