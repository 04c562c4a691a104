"""The fleet on a real PostgreSQL that the test starts: Debian's `postgresql` (initdb in a temporary
directory, a server on a Unix socket only), driven through SQLAlchemy with psycopg 3."""

from __future__ import annotations

import pytest

from tests.fleet import pgserver
from tests.fleet.test_fleet_tpm import two_nodes_flow
from tests.fleet.test_scan_digest import scan_sent_when_changed_flow
from tests.fleet.test_serve import two_processes_flow

pytestmark = [pytest.mark.swtpm, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgresql():
    """A PostgreSQL server of its own; yields a SQLAlchemy URL of an empty database `fleet`."""
    pytest.importorskip("psycopg")
    if pgserver.bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian package postgresql)")
    with pgserver.running() as server:
        yield server.url


def _reset(url: str) -> None:
    """An empty database for the next test (the schema too: `serve` must migrate it)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def db_url(postgresql):
    _reset(postgresql)
    return postgresql


def test_two_nodes_become_trusted_on_postgresql(pki, fleet_service, tmp_path, obelisk_cli, db_url):
    assert db_url.startswith("postgresql+psycopg://")
    with fleet_service.fleet.sessions() as s:
        assert s.get_bind().dialect.name == "postgresql"
    two_nodes_flow(pki, fleet_service, tmp_path, obelisk_cli)


def test_two_serve_processes_on_postgresql(pki, tmp_path, db_url):
    two_processes_flow(pki, tmp_path, db_url)


def test_a_nodes_scan_is_sent_and_kept_only_when_it_changed_on_postgresql(pki, fleet_service, tmp_path, db_url):
    scan_sent_when_changed_flow(pki, fleet_service, tmp_path)
