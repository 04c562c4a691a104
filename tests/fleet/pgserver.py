"""A PostgreSQL server of its own, for the fleet's tests and its load generator (bench/fleet_load.py):
Debian's `postgresql` binaries, initdb in a temporary directory, a server on a Unix socket only."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PostgreSQL:
    url: str  # SQLAlchemy URL of the empty database `fleet`
    process: subprocess.Popen[bytes]  # the postmaster


@contextlib.contextmanager
def running(*, durable: bool = False) -> Iterator[PostgreSQL]:
    """A server with an empty database `fleet`; `durable=False` runs it with fsync=off (tests: speed over
    surviving a power loss), `durable=True` with PostgreSQL's defaults."""
    from tests.fleet.conftest import free_port

    found = bindir()
    if found is None:
        raise RuntimeError("PostgreSQL server binaries not installed (Debian package postgresql)")
    # PostgreSQL refuses to run as root: as root, its files and process belong to the postgres user
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="obelisk-pg-"))
    if user:
        shutil.chown(root, user)
    data, sock = root / "data", root
    init = subprocess.run([str(found / "initdb"), "-D", str(data), "-U", "obelisk", "--auth=trust", "-E", "UTF8",
                           "--no-sync"], user=user, capture_output=True, text=True)
    if init.returncode != 0:
        raise RuntimeError(init.stderr)
    port = free_port()
    log = open(root / "postgres.log", "wb")  # noqa: SIM115
    settings = [] if durable else ["-c", "fsync=off"]
    server = subprocess.Popen([str(found / "postgres"), "-D", str(data), "-k", str(sock), "-p", str(port),
                               "-c", "listen_addresses=", "-c", "max_connections=200", *settings],
                              user=user, stdout=log, stderr=subprocess.STDOUT)
    import psycopg

    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with psycopg.connect(host=str(sock), port=port, user="obelisk", dbname="postgres",
                                     autocommit=True) as conn:
                    conn.execute("CREATE DATABASE fleet")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError((root / "postgres.log").read_text()) from None
                time.sleep(0.2)
        yield PostgreSQL(f"postgresql+psycopg://obelisk@/fleet?host={sock}&port={port}", server)
    finally:
        server.terminate()  # SIGTERM: smart shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
