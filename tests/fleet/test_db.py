"""The fleet database: the shipped alembic migrations create exactly the models' schema."""

from __future__ import annotations

import datetime as _dt

import pytest
from sqlalchemy import inspect

from obelisk.fleet import db


def test_migrations_create_the_models_schema(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    sessions = db.open_database(str(tmp_path / "fleet.db"))
    engine = sessions.kw["bind"]
    assert db.current_revision(engine) == "0004"
    assert set(inspect(engine).get_table_names()) == {"alembic_version", "images", "nodes", "nonces", "attestations",
                                                      "events", "audit", "node_keys",
                                                      "service_secrets"}
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.Base.metadata) == []
    # opening again (a second `serve`, a restart) migrates nothing and keeps the data
    with sessions.begin() as s:
        s.add(db.Audit(at=db.utcnow(), subject="CN=a", action="x", target="t", outcome="ok", detail=""))
    again = db.open_database(f"sqlite:///{tmp_path / 'fleet.db'}")
    with again() as s:
        row = s.query(db.Audit).one()
        assert row.subject == "CN=a" and row.at.tzinfo is _dt.UTC


def test_the_migrations_ship_inside_the_package():
    assert (db.MIGRATIONS / "env.py").is_file()
    assert sorted(p.name for p in (db.MIGRATIONS / "versions").glob("*.py")) == [
        "0001_initial.py", "0002_node_keys.py", "0003_ima_progress.py", "0004_stateless_nonces.py"]


def test_an_unusable_database_is_one_clear_error(tmp_path):
    from obelisk.core.errors import InputError

    with pytest.raises(InputError, match="fleet database"):
        db.open_database(str(tmp_path / "missing-dir" / "fleet.db"))
    from sqlalchemy.exc import StatementError

    with pytest.raises(StatementError, match="naive"):
        with db.open_database(str(tmp_path / "f.db")).begin() as s:
            s.add(db.Audit(at=_dt.datetime(2026, 1, 1), subject="", action="", target="", outcome="", detail=""))


def test_an_older_database_is_upgraded_in_place(tmp_path):
    """A database made by revision 0001 (an older `fleet serve`) is migrated on open, its data kept."""
    from sqlalchemy import text

    engine = db.make_engine(str(tmp_path / "old.db"))
    db.migrate(engine, "0001")
    assert db.current_revision(engine) == "0001"
    assert "node_keys" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO audit (at, subject, action, target, outcome, detail) "
                          "VALUES ('2026-01-01 00:00:00', 'CN=old', 'approve', 'n1', 'ok', '')"))
    engine.dispose()
    sessions = db.open_database(str(tmp_path / "old.db"))
    assert db.current_revision(sessions.kw["bind"]) == "0004"
    assert "node_keys" in inspect(sessions.kw["bind"]).get_table_names()
    assert "ima_progress" in {c["name"] for c in inspect(sessions.kw["bind"]).get_columns("nodes")}
    with sessions() as s:
        assert [a.subject for a in s.query(db.Audit)] == ["CN=old"]
