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
    assert db.current_revision(engine) == "0005"
    assert set(inspect(engine).get_table_names()) == {"alembic_version", "images", "nodes", "nonces", "attestations",
                                                      "events", "audit", "node_keys",
                                                      "service_secrets", "node_scans"}
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
        "0001_initial.py", "0002_node_keys.py", "0003_ima_progress.py", "0004_stateless_nonces.py",
        "0005_node_scans.py"]


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
    assert db.current_revision(sessions.kw["bind"]) == "0005"
    assert "node_keys" in inspect(sessions.kw["bind"]).get_table_names()
    assert "ima_progress" in {c["name"] for c in inspect(sessions.kw["bind"]).get_columns("nodes")}
    with sessions() as s:
        assert [a.subject for a in s.query(db.Audit)] == ["CN=old"]


def test_rounds_recorded_before_stateless_nonces_keep_their_nonce(tmp_path):
    """Migration 0004 moves single use to attestations.nonce: the rounds already kept get theirs from the
    nonce row they claimed, and the column is then unique."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = db.make_engine(str(tmp_path / "old.db"))
    db.migrate(engine, "0003")
    t = "'2026-01-01 00:00:00'"
    with engine.begin() as conn:
        for sql in (
            f"INSERT INTO images (id, name, version, manifest_sha256, manifest, signature, signer, added_at, added_by)"
            f" VALUES (1, 'n1', '1', 'aa', '{{}}', '{{}}', 'CN=s', {t}, 'CN=a')",
            f"INSERT INTO nodes (id, ek_public, image_id, status, hostname, registered_at)"
            f" VALUES ('n', 'ee', 1, 'trusted', 'h', {t})",
            f"INSERT INTO nonces (id, value, node_id, purpose, issued_at, expires_at, used_at)"
            f" VALUES (7, 'abcd', 'n', 'round', {t}, {t}, {t})",
            f"INSERT INTO attestations (node_id, nonce_id, image_id, at, passed, summary, report)"
            f" VALUES ('n', 7, 1, {t}, 1, 'ok', '{{}}')"):
            conn.execute(text(sql))
    engine.dispose()
    sessions = db.open_database(str(tmp_path / "old.db"))
    with sessions() as s:
        assert [(a.nonce, a.nonce_id) for a in s.query(db.Attestation)] == [("abcd", 7)]
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.add(db.Attestation(node_id="n", nonce="abcd", image_id=1, at=db.utcnow(), passed=True, summary="",
                             report="{}"))
