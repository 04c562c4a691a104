"""Tables and links a caller adds to the HTML report (the fleet dashboard's): data, never markup."""

from __future__ import annotations

import pytest
from lxml import html as lxml_html

from obelisk.reports.options import RenderOptions
from obelisk.reports.panels import Cell, Panel
from obelisk.reports.render import render


@pytest.mark.parametrize("href", ["javascript:alert(1)", "https://elsewhere.example/", "//elsewhere.example/x",
                                  "/a b", "/x\"onmouseover=y"])
def test_links_go_nowhere_but_this_origin(href):
    with pytest.raises(ValueError, match="same-origin"):
        Cell("x", href=href)


def test_a_panel_rejects_rows_that_do_not_fit_its_columns_and_unknown_badges():
    with pytest.raises(ValueError, match="row 0: 1 cells for 2 columns"):
        Panel("p", "P", ("a", "b"), ((Cell("only one"),),))
    with pytest.raises(ValueError, match="badge"):
        Cell("trusted", badge="green")
    with pytest.raises(ValueError, match="panel id"):
        Panel("P 1", "P", (), ())


def test_panels_nav_and_refresh_render_as_text_and_the_plain_report_is_unchanged(bundle):
    hostile = "<script>alert(1)</script>"
    panel = Panel("fleet-nodes", "Nodes", ("Node", "Status"),
                  ((Cell(hostile, href="/dashboard/nodes/n1"), Cell("trusted", badge="pass")),
                   (Cell("n2"), Cell(hostile))))
    options = RenderOptions(rendered_at="2026-01-01T00:00:00Z", panels=(panel,), nav=(Cell("back", href="/d"),),
                            refresh_seconds=15)
    page = render(bundle, "html", options)
    dom = lxml_html.fromstring(page)
    rows = dom.xpath("//table[@id='fleet-nodes']/tbody/tr")
    assert [[td.text_content() for td in tr.xpath("./td")] for tr in rows] == [[hostile, "trusted"], ["n2", hostile]]
    assert dom.xpath("//table[@id='fleet-nodes']//a/@href") == ["/dashboard/nodes/n1"]
    assert dom.xpath("//table[@id='fleet-nodes']//td[@data-status='pass']/span/@class") == ["badge s-pass"]
    assert dom.xpath("//nav[@class='crumbs']/a/@href") == ["/d"] and dom.xpath("//body/@data-refresh") == ["15"]
    assert b"<noscript><meta http-equiv=\"refresh\" content=\"15\"></noscript>" in page
    assert len(dom.xpath("//script")) == 2  # the metadata block and the report's own script: nothing from a cell
    plain = render(bundle, "html", RenderOptions(rendered_at="2026-01-01T00:00:00Z"))
    assert b"\n<body>\n" in plain and b"<nav" not in plain and b'<section class="panel"' not in plain
    empty = render(bundle, "html", RenderOptions(panels=(Panel("none", "Nothing", ("a",), (), empty="Empty."),)))
    assert lxml_html.fromstring(empty).get_element_by_id("none").text_content() == "Empty."
