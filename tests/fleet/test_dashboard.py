"""The dashboard's routes over real HTTPS (no browser: tests/fleet/test_dashboard_browser.py drives one)."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from lxml import html as lxml_html

from obelisk.fleet.client import FleetClient


def _get(client: FleetClient, path: str) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(client.url)
    conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=client.context(), timeout=30)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_dashboard_pages_are_for_operators_with_a_strict_policy(pki, fleet_service):
    op = fleet_service.operator(pki)
    status, headers, body = _get(op, "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "connect-src" not in policy
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    page = lxml_html.fromstring(body)
    assert page.get_element_by_id("fleet-nodes").text_content() == "No node has registered yet."
    assert page.xpath("//body/@data-refresh") == ["15"]
    for path in ("/dashboard/nodes/n0000", "/dashboard/nodes/n0000/rounds/1", "/dashboard/other",
                 "/dashboard/nodes/n0000/rounds/x"):
        status, headers, body = _get(op, path)
        assert status == 404 and headers["content-type"] == "application/json", (path, body)
    anonymous = FleetClient(fleet_service.url, pki["ca"])
    assert _get(anonymous, "/dashboard/nodes/n0000")[0] == 401
