import pytest

from obelisk.core import tools
from obelisk.core.errors import ToolFailedError, ToolMissingError


def test_missing_program_names_its_package(monkeypatch):
    monkeypatch.setitem(tools.PACKAGES, "no-such-obelisk-tool", "obelisk-imaginary")
    with pytest.raises(ToolMissingError, match="no-such-obelisk-tool.*obelisk-imaginary"):
        tools.run("no-such-obelisk-tool", [])


def test_failing_program_reports_its_last_line():
    with pytest.raises(ToolFailedError, match="openssl failed with exit code 1: Unable to load certificate"):
        tools.run("openssl", ["x509", "-in", "/nonexistent/cert.pem"])


def test_sbin_programs_are_found_without_sbin_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert tools.which("cryptsetup").endswith("/cryptsetup")
