"""The fleet on a real PostgreSQL that the test starts: Debian's `postgresql` (initdb in a temporary
directory, a server on a Unix socket only), driven through SQLAlchemy with psycopg 3."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.fleet.test_fleet_tpm import two_nodes_flow
from tests.fleet.test_serve import two_processes_flow

pytestmark = [pytest.mark.swtpm, pytest.mark.slow]


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgresql():
    """A PostgreSQL server of its own; yields a SQLAlchemy URL of an empty database `fleet`."""
    pytest.importorskip("psycopg")
    bindir = _bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian package postgresql)")
    # PostgreSQL refuses to run as root: as root, its files and process belong to the postgres user
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="obelisk-pg-"))
    if user:
        shutil.chown(root, user)
    data, sock = root / "data", root
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "obelisk", "--auth=trust", "-E", "UTF8",
                           "--no-sync"], user=user, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    from tests.fleet.conftest import free_port

    port = free_port()
    log = open(root / "postgres.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-k", str(sock), "-p", str(port),
                               "-c", "listen_addresses=", "-c", "fsync=off"], user=user, stdout=log,
                              stderr=subprocess.STDOUT)
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(host=str(sock), port=port, user="obelisk", dbname="postgres",
                                 autocommit=True) as conn:
                conn.execute("CREATE DATABASE fleet")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise AssertionError((root / "postgres.log").read_text()) from None
            time.sleep(0.2)
    try:
        yield f"postgresql+psycopg://obelisk@/fleet?host={sock}&port={port}"
    finally:
        server.terminate()  # SIGTERM: smart shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


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
