"""Waivers: approved exceptions (id, reason, approver, expiry) applied to findings.

A failure covered by an unexpired waiver becomes `waived`; an expired waiver leaves
it failing and says so. Shared by kernel checks, CIS/STIG scans and attestation.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from pathlib import Path

from obelisk.core.errors import InputError
from obelisk.core.findings import Finding, Status, Waiver
from obelisk.core.yamlsafe import load_yaml_file


def load_waivers(path: str | Path) -> tuple[Waiver, ...]:
    """Read a waivers file: YAML `waivers: [{id, reason, approver, expires}]` (or a bare list)."""
    data = load_yaml_file(path)
    if isinstance(data, dict):
        data = data.get("waivers")
    if not isinstance(data, list):
        raise InputError("expected a list under 'waivers'", source=str(path))
    out = []
    for i, item in enumerate(data):
        try:
            out.append(Waiver.from_json(item, f"waivers[{i}]"))
        except InputError as exc:
            raise InputError(str(exc), source=str(path)) from None
    return tuple(out)


def apply_waivers(findings: tuple[Finding, ...] | list[Finding], waivers: tuple[Waiver, ...],
                  today: _dt.date | None = None) -> tuple[Finding, ...]:
    today = today or _dt.date.today()
    by_id = {w.id: w for w in waivers}
    out = []
    for f in findings:
        w = by_id.get(f.id)
        if w is None or f.status is not Status.FAIL:
            out.append(f)
        elif w.expired(today):
            out.append(replace(f, waiver=w, detail=(f.detail + " " if f.detail else "")
                               + f"waiver expired on {w.expires.isoformat()} (approved by {w.approver})"))
        else:
            out.append(replace(f, status=Status.WAIVED, waiver=w))
    return tuple(out)

