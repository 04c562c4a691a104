"""The live dashboard in Debian's headless Chromium, against a real `fleet serve` process (SQLite) with
real rounds from swtpm-backed host nodes, the browser authenticated as an operator by the customer CA's
client certificate: the fleet table and the summary equal the database, a node's page shows its rounds
and events, a round's page its findings, and no page logs a console error.

Chromium presents the certificate the way an operator's browser would: the key and certificate in its
NSS database ($HOME/.pki/nssdb, made with certutil and pk12util under a temporary HOME, the customer CA
trusted there for the server), and the profile's `auto_select_certificate` setting for the service's
origin (what the AutoSelectCertificateForUrls policy sets; headless Chromium cannot show the picker).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import html as lxml_html

from obelisk.core import tools
from obelisk.fleet.client import FleetClient
from obelisk.tpm.swtpm import SoftwareTPM
from tests.fleet.conftest import make_node, signed_manifest, start_serve
from tests.reports.test_html_browser import FLAGS, console_lines

pytestmark = [pytest.mark.browser, pytest.mark.swtpm, pytest.mark.slow]


@dataclass
class OperatorBrowser:
    """Headless Chromium whose NSS database holds an operator's certificate, auto-selected for `origin`."""

    home: Path
    origin: str

    def load(self, url: str) -> tuple[subprocess.CompletedProcess[str], lxml_html.HtmlElement]:
        profile = self.home / f"profile-{len(list(self.home.glob('profile-*')))}"
        (profile / "Default").mkdir(parents=True)
        (profile / "Default" / "Preferences").write_text(json.dumps(auto_select_preferences(self.origin)))
        proc = subprocess.run([tools.which("chromium"), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(self.home)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc, lxml_html.fromstring(proc.stdout)


def auto_select_preferences(origin: str) -> dict:
    """A profile whose content setting picks the client certificate issued by the customer CA for `origin`
    (issuer CN as `obelisk keys generate` names the CA)."""
    rule = {"setting": {"filters": [{"ISSUER": {"CN": "obelisk customer IMA CA"}}]}, "last_modified": "0"}
    return {"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {f"{origin},*": rule}}}}}


def operator_browser(tmp_path: Path, pki, origin: str, who: str | None = "operator") -> OperatorBrowser:
    """A browser home whose NSS database trusts the customer CA and holds `who`'s key and certificate
    (None: no certificate at all)."""
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, load_pem_private_key, pkcs12

    from obelisk.signer.keys import load_certificate

    home = tmp_path / f"browser-{who}"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    subprocess.run([tools.which("certutil"), "-N", "-d", db, "--empty-password"], check=True, capture_output=True)
    subprocess.run([tools.which("certutil"), "-A", "-d", db, "-n", "customer CA", "-t", "C,,", "-i", pki["ca"]],
                   check=True, capture_output=True)
    if who is not None:
        issued = pki[who]
        p12 = home / f"{who}.p12"
        p12.write_bytes(pkcs12.serialize_key_and_certificates(
            who.encode(), load_pem_private_key(issued.key.read_bytes(), None), load_certificate(issued.cert), None,
            BestAvailableEncryption(b"transfer")))
        subprocess.run([tools.which("pk12util"), "-i", str(p12), "-d", db, "-W", "transfer"], check=True,
                       capture_output=True)
    return OperatorBrowser(home, origin)


def _db(path: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def _table(dom, table_id: str) -> list[list[str]]:
    return [[td.text_content().strip() for td in tr.xpath("./td")]
            for tr in dom.xpath(f"//table[@id='{table_id}']/tbody/tr")]


def test_dashboard_shows_the_database_to_an_operator_in_chromium(pki, tmp_path):
    from obelisk.tpm import device

    db_file = tmp_path / "fleet.db"
    serve = start_serve(pki, str(db_file), tmp_path / "serve.log")
    try:
        op = FleetClient(serve.url, pki["ca"], str(pki["operator"].cert), str(pki["operator"].key), timeout=30)
        op.add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
        with SoftwareTPM.start(tmp_path / "tpm-a") as tpm_a, SoftwareTPM.start(tmp_path / "tpm-b") as tpm_b, \
                SoftwareTPM.start(tmp_path / "tpm-c") as tpm_c:
            a = make_node(tpm_a, tmp_path / "a", serve.url, pki)
            b = make_node(tpm_b, tmp_path / "b", serve.url, pki)
            c = make_node(tpm_c, tmp_path / "c", serve.url, pki)
            for node, name in ((a, "node-a"), (b, "node-b"), (c, "node-c")):
                node.register(name)
            op.approve(a.node)
            op.approve(b.node)
            for _ in range(3):
                assert a.round()["status"] == "trusted"
            assert b.round()["status"] == "trusted"
            device.extend_pcr(tpm_b.tcti, 10, b"an unlogged binary")  # b: something ran behind IMA's back
            assert b.round()["status"] == "failed"
        # c stays pending: never approved, no round

        browser = operator_browser(tmp_path, pki, serve.url)
        proc, dom = browser.load(f"{serve.url}/dashboard")
        assert console_lines(proc) == [], console_lines(proc)
        assert dom.get("data-ready") == "1"  # the report's script ran to its end
        assert dom.xpath("//body/@data-refresh") == ["15"] and dom.get_element_by_id("auto-refresh").get("checked") \
            is not None

        # the fleet table is the database's nodes table
        nodes = {node: (status, image) for node, status, image in _db(
            db_file, "SELECT n.id, n.status, i.name || ':' || i.version FROM nodes n JOIN images i "
                     "ON n.image_id = i.id")}
        table = {row[0]: row for row in _table(dom, "fleet-nodes")}
        assert set(table) == set(nodes) == {a.node, b.node, c.node}
        assert {n: (row[3], row[2]) for n, row in table.items()} == nodes
        assert {n: row[3] for n, row in table.items()} == {a.node: "trusted", b.node: "failed", c.node: "pending"}
        assert table[c.node][5] == "none yet" and table[b.node][5].endswith("failed")

        # the summary counts every node's status finding and its last round's findings, as stored
        expected: Counter[str] = Counter()
        for node, (status, _) in nodes.items():
            expected["pass" if status == "trusted" else "fail"] += 1
            # a round as the service reads it back: its stored findings with its node's scan put back in
            last = _db(db_file, "SELECT id FROM attestations WHERE node_id = ? ORDER BY id DESC LIMIT 1", node)
            if last:
                expected.update(f["status"] for f in op.request("GET", f"/v1/attestations/{last[0][0]}")["findings"])
        tiles = {t.get("data-status"): int(t.get("data-count"))
                 for t in dom.xpath("//div[@class='tiles']/*[@data-count]")}
        assert tiles.pop("total") == sum(expected.values())
        assert tiles == {s: expected.get(s, 0) for s in tiles}
        assert len(dom.xpath("//div[@id='finding-list']/details")) == sum(expected.values())

        # drill down: the node's link opens its page with every round and event the database has for it
        link = dom.xpath(f"//table[@id='fleet-nodes']//a[normalize-space()='{b.node}']/@href")
        assert link == [f"/dashboard/nodes/{b.node}"]
        proc, page = browser.load(serve.url + link[0])
        assert console_lines(proc) == [], console_lines(proc)
        rounds = _db(db_file, "SELECT id, passed FROM attestations WHERE node_id = ? ORDER BY id DESC", b.node)
        shown = _table(page, "node-rounds")
        assert [(r[0], r[3]) for r in shown] == [(f"#{i}", "passed" if p else "failed") for i, p in rounds]
        assert "ima.pcr.10.sha256" in shown[0][4]
        events = _db(db_file, "SELECT kind, new_status FROM events WHERE node_id = ? ORDER BY id DESC", b.node)
        assert [(r[1], r[3]) for r in _table(page, "node-events")] == events
        assert [r[1] for r in _table(page, "node-events")][-4:] == ["attested", "approve", "ak-activated",
                                                                    "registered"]
        failing = page.xpath("//div[@id='finding-list']/details[@data-status='fail']//code[@class='fid']/text()")
        assert "ima.pcr.10.sha256" in failing and "fleet.node.status" in failing

        # and a round's link opens that round's full report, as stored
        href = page.xpath("//table[@id='node-rounds']//a/@href")[-1]  # the oldest: the good round
        proc, first = browser.load(serve.url + href)
        assert console_lines(proc) == []
        stored = op.request("GET", f"/v1/attestations/{rounds[-1][0]}")
        assert len(first.xpath("//div[@id='finding-list']/details")) == len(stored["findings"])
        assert not first.xpath("//div[@id='finding-list']/details[@data-status='fail']")

        # the log says who looked: the operator's certificate subject
        log = serve.stderr.read_text()
        assert '[CN=alice] "GET /dashboard HTTP/1.1" 200' in log

        # control: the same browser without the operator's certificate gets no page (operators only)
        proc, dom = operator_browser(tmp_path, pki, serve.url, None).load(f"{serve.url}/dashboard")
        assert not dom.xpath("//table[@id='fleet-nodes']")
        assert "operator endpoints need a client certificate" in dom.text_content()
    finally:
        serve.process.kill()
        serve.process.wait()
