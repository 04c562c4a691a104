"""The HTML report in Debian's headless Chromium: no console errors, counts equal the data,
filters work, a screenshot and a PDF are produced."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest
from lxml import html as lxml_html

from obelisk.core import tools
from obelisk.reports.render import render

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1280,2200"]
# Chromium prints page console messages as `CONSOLE(line)` / `:CONSOLE:` lines with --enable-logging.
CONSOLE = re.compile(r"CONSOLE|Uncaught|Refused to", re.I)


def chromium(tmp_path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([tools.which("chromium"), *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120)


def console_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture
def report_html(bundle, tmp_path):
    path = tmp_path / "report.html"
    path.write_bytes(render(bundle, "html"))
    return path


def test_console_error_detection_works(tmp_path):
    """Control: a page that throws is caught by the same check the report must pass."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    proc = chromium(tmp_path, bad.as_uri(), "--dump-dom")
    assert console_lines(proc), proc.stderr[-2000:]


def test_renders_without_console_errors_and_counts_match(bundle, report_html, tmp_path):
    proc = chromium(tmp_path, report_html.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_lines(proc) == []
    dom = lxml_html.fromstring(proc.stdout)
    assert dom.get("data-ready") == "1"  # the script ran to its end
    expected = Counter(f.status.value for f in bundle.report.findings)
    tiles = {t.get("data-status"): int(t.get("data-count")) for t in dom.xpath("//div[@class='tiles']/*[@data-count]")}
    shown_tiles = {t.xpath(".//span[@class='n']")[0].text_content(): t.get("data-status")
                   for t in dom.xpath("//div[@class='tiles']/*[@data-count]")}
    assert tiles.pop("total") == len(bundle.report.findings) == 12
    assert tiles == {s: expected.get(s, 0) for s in tiles}
    assert all(int(n) == tiles.get(s, 12) for n, s in shown_tiles.items())
    findings = dom.xpath("//div[@id='finding-list']/details")
    assert Counter(f.get("data-status") for f in findings) == expected
    assert dom.get_element_by_id("shown").text_content() == "12 of 12 shown"
    # The benchmark table sums to the same numbers.
    fail_cells = [int(td.text_content()) for td in dom.xpath("//table[@id='by-benchmark']//td[@data-status='fail']")]
    assert sum(fail_cells) == expected["fail"]
    # Hostile text from a node stays text.
    assert not dom.xpath("//div[@id='finding-list']//script")
    assert "<script>alert(1)</script>" in proc.stdout.replace("&lt;", "<").replace("&gt;", ">")


def test_filters_from_address(report_html, tmp_path):
    proc = chromium(tmp_path, report_html.as_uri() + "#status=fail,error&severity=high,critical", "--dump-dom")
    assert console_lines(proc) == []
    dom = lxml_html.fromstring(proc.stdout)
    visible = [f for f in dom.xpath("//div[@id='finding-list']/details") if f.get("hidden") is None]
    assert {(f.get("data-status"), f.get("data-severity")) for f in visible} <= {
        ("fail", "high"), ("fail", "critical"), ("error", "high"), ("error", "critical")}
    assert len(visible) == 4
    assert dom.get_element_by_id("shown").text_content() == "4 of 12 shown"
    proc = chromium(tmp_path, report_html.as_uri() + "#section=worker", "--dump-dom")
    dom = lxml_html.fromstring(proc.stdout)
    visible = [f for f in dom.xpath("//div[@id='finding-list']/details") if f.get("hidden") is None]
    assert {f.get("data-section") for f in visible} == {"worker"} and len(visible) == 2


def test_screenshot_and_pdf(report_html, tmp_path):
    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, report_html.as_uri(), f"--screenshot={shot}")
    assert proc.returncode == 0 and console_lines(proc) == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a real page, not a blank
    pdf = tmp_path / "report.pdf"
    proc = chromium(tmp_path, report_html.as_uri(), f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert proc.returncode == 0
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
