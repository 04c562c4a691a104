"""`obelisk demo` end to end (its walkthrough), with the fleet: the service, two QEMU nodes registering at
boot, an operator's approval through the service, both trusted, and the fleet HTML report.

Slow (the example's kernel build on a cold cache, two boots under TCG): markers qemu, kernel_build, slow.
The e2e test's keys are used so that its cached kernel is reused.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from lxml import html as lxml_html

from tests.image.test_e2e import example  # noqa: F401 - the module-scoped fixture: project and test keys

pytestmark = [pytest.mark.qemu, pytest.mark.kernel_build, pytest.mark.slow, pytest.mark.swtpm]


def test_demo_shows_two_nodes_registering_approved_and_trusted(example, tmp_path):  # noqa: F811
    from obelisk.lab.walkthrough import STAGES, Walk, run

    workdir = tmp_path / "demo"
    shutil.copytree(example / "keys", workdir / "project" / "keys")
    lines: list[str] = []
    result = run(Walk(example=example, workdir=workdir, quiet=True), emit=lines.append)
    assert not result["failed"], "\n".join(lines)
    assert list(result["timings_s"]) == [name for name, _ in STAGES]

    with sqlite3.connect(workdir / "fleet" / "fleet.db") as db:
        nodes = dict(db.execute("SELECT id, status FROM nodes").fetchall())
        assert len(nodes) == 2 and set(nodes.values()) == {"trusted"}
        for node in nodes:
            assert db.execute("SELECT count(*) FROM attestations WHERE node_id = ? AND passed", (node,)).fetchone()[0]
            kinds = [k for (k,) in db.execute("SELECT kind FROM events WHERE node_id = ? ORDER BY id", (node,))]
            assert kinds[:4] == ["registered", "ak-activated", "approve", "attested"], kinds
        audit = db.execute("SELECT subject, action, target, outcome FROM audit WHERE action = 'approve'").fetchall()
        assert sorted(audit) == sorted(("CN=demo operator", "approve", node, "ok") for node in nodes)

    page = lxml_html.fromstring((workdir / "results" / "fleet.html").read_bytes())
    rows = {tr.xpath("./td")[0].text_content(): tr.xpath("./td")[3].text_content()
            for tr in page.xpath("//table[@id='fleet-nodes']/tbody/tr")}
    assert rows == nodes
    assert (workdir / "results" / "report.html").is_file()

    # everything stopped: the service and both nodes' QEMU
    assert not (workdir / "fleet" / "serve.pid").exists()
    for name in ("node", "node-2"):
        assert not (workdir / name / "qemu.pid").exists()
    assert [line.split(" (")[0] for line in lines if line.startswith("[stop] ") and not line.endswith("...")] == \
        ["[stop] 2 nodes stopped, fleet service stopped"]
    assert [line for line in lines if line.startswith("[fleet] 2 nodes registered at boot and approved by "
                                                      "CN=demo operator (audited: 2 approvals)")]
