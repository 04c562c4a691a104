"""The live dashboard `fleet serve` shows operators: the fleet report's HTML page, rendered from the
database on each request, plus the pages it links to.

    /dashboard                  the fleet table (id, image, status, last attested, last round) and
                                every node's last-round findings: `fleet report --format html`'s page
    /dashboard/nodes/ID         one node: its last round's findings, its rounds and its events
    /dashboard/nodes/ID/rounds/N    one of its rounds: the full report, as the verifier kept it

Every page goes through the report component's HTML renderer (same template, same strict
Content-Security-Policy: no fetch, inline script only), reloads itself every `REFRESH_SECONDS` (the
operator can pause it), and links only to these same-origin paths. Who may see it is the server's
business (operators: a client certificate of the customer CA).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from obelisk.fleet.report import STATUS_BADGE, bundle, nodes_panel
from obelisk.fleet.service import Fleet, NotFound
from obelisk.reports.options import RenderOptions
from obelisk.reports.panels import Cell, Panel

BASE = "/dashboard"
REFRESH_SECONDS = 15
# A node page shows its newest rounds and events; the whole history is `fleet history NODE`.
HISTORY_ROWS = 200
# Sent with every page besides the page's own <meta> policy: what a <meta> cannot say (framing, forms, base).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                               "img-src data:; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _render(b: Any, title: str, panels: tuple[Panel, ...] = (), nav: tuple[Cell, ...] = ()) -> bytes:
    from obelisk.reports.render import render

    return render(b, "html", RenderOptions(title=title, panels=panels, nav=nav, refresh_seconds=REFRESH_SECONDS))


def overview(fleet: Fleet) -> bytes:
    rows = fleet.latest()
    return _render(bundle(rows, "fleet"), "obelisk fleet", (nodes_panel(rows, BASE),))


def node_page(fleet: Fleet, node_id: str) -> bytes:
    """One node: its status and last round's findings (as in the fleet report), its rounds and events."""
    node = next((n for n in fleet.nodes() if n["id"] == node_id), None)
    if node is None:
        raise NotFound(f"no node {node_id!r}")
    history = fleet.history(node_id)
    rounds = [r for r in history if r["type"] == "attestation"]
    events = [r for r in history if r["type"] == "event"]
    last = max(rounds, key=lambda r: r["id"]) if rounds else None
    row = {**node, "attestation": last["id"] if last else None, "report": fleet.report(last["id"]) if last else None}
    here = f"{BASE}/nodes/{quote(node_id, safe='')}"
    round_rows = tuple((Cell(f"#{r['id']}", href=f"{here}/rounds/{r['id']}"), Cell(r["at"] or "", mono=True),
                        Cell(r["image"], mono=True),
                        Cell("passed" if r["passed"] else "failed", badge="pass" if r["passed"] else "fail"),
                        Cell(r["summary"] or ""))
                       for r in reversed(rounds[-HISTORY_ROWS:]))
    event_rows = tuple((Cell(e["at"] or "", mono=True), Cell(e["kind"]),
                        Cell(e["old_status"] or "-", badge=STATUS_BADGE.get(e["old_status"] or "", "")),
                        Cell(e["new_status"] or "-", badge=STATUS_BADGE.get(e["new_status"] or "", "")),
                        Cell(e["detail"] or ""))
                       for e in reversed(events[-HISTORY_ROWS:]))
    panels = (nodes_panel([row], BASE),
              Panel("node-rounds", _count("Rounds", len(round_rows), len(rounds)),
                    ("Round", "At", "Image", "Result", "Summary"), round_rows, empty="No round yet."),
              Panel("node-events", _count("Events", len(event_rows), len(events)),
                    ("At", "Event", "From", "To", "Detail"), event_rows, empty="No event yet."))
    return _render(bundle([row], f"node {node_id}"), f"obelisk fleet: node {node_id}", panels,
                   (Cell("← fleet", href=BASE),))


def round_page(fleet: Fleet, node_id: str, attestation_id: int) -> bytes:
    """One of a node's rounds: its report exactly as the verifier kept it."""
    from obelisk.core import findings as fmt
    from obelisk.reports.model import Bundle

    if not any(r["type"] == "attestation" and r["id"] == attestation_id for r in fleet.history(node_id)):
        raise NotFound(f"node {node_id} has no round {attestation_id}")
    report = fmt.parse(fleet.report(attestation_id), f"attestation {attestation_id}")
    nav = (Cell("← fleet", href=BASE), Cell(f"node {node_id}", href=f"{BASE}/nodes/{quote(node_id, safe='')}"))
    return _render(Bundle(report=report), f"obelisk fleet: node {node_id}, round {attestation_id}", nav=nav)


def _count(what: str, shown: int, total: int) -> str:
    return f"{what} ({total})" if shown == total else f"{what} (newest {shown} of {total})"
