"""The fleet's tables and database: SQLAlchemy 2.x, SQLite by default, PostgreSQL by URL.

The schema is owned by the alembic migrations shipped in this package (`alembic/versions/`);
`open_database` brings any database up to the newest revision before it is used, so every
`fleet serve` process (and every test) runs the same migrations. The models below must stay equal
to what the migrations create: tests/fleet/test_db.py compares them with alembic's autogenerate.

Times are timezone-aware UTC. Binary TPM structures are stored as hex text, JSON documents as text:
both survive every engine unchanged and stay readable with `sqlite3` or `psql`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from obelisk.core.errors import InputError

MIGRATIONS = Path(__file__).resolve().parent / "alembic"


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class UTCDateTime(TypeDecorator[_dt.datetime]):
    """A timezone-aware UTC datetime on every engine (SQLite keeps no zone: it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: _dt.datetime | None, dialect: object) -> _dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the fleet database")
        return value.astimezone(_dt.UTC)

    def process_result_value(self, value: _dt.datetime | None, dialect: object) -> _dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=_dt.UTC) if value.tzinfo is None else value.astimezone(_dt.UTC)


class Base(DeclarativeBase):
    pass


class Image(Base):
    """A build's reference values: its manifest and signature, as registered by `fleet image add`."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_images_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    manifest_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    manifest: Mapped[str] = mapped_column(Text)  # manifest.json exactly as signed
    signature: Mapped[str] = mapped_column(Text)  # manifest.json.sig (obelisk.manifest-signature/1)
    signer: Mapped[str] = mapped_column(String(500))  # the signing certificate's subject
    added_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    added_by: Mapped[str] = mapped_column(String(500))


class Node(Base):
    """A node, known by its EK; its AK once proven by make/activate credential."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # derived from the EK's name
    ek_public: Mapped[str] = mapped_column(Text, unique=True)  # hex TPM2B_PUBLIC
    ek_certificate: Mapped[str | None] = mapped_column(Text, nullable=True)  # hex DER
    ak_record: Mapped[str | None] = mapped_column(Text, nullable=True)  # obelisk.ak/1 JSON, activated
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    status: Mapped[str] = mapped_column(String(20))
    hostname: Mapped[str] = mapped_column(String(255), default="")
    registered_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    last_attested: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the TPM counters of the last trusted quote: a replayed or rolled-back quote is refused
    clock: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reset_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    restart_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # where the last trusted round's IMA check stopped (obelisk.ima-progress/1): the next round of the
    # same boot walks only the entries after it (migration 0003)
    ima_progress: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the digest of the scan its last regular round was judged with: the nonce answer tells the node, which
    # then sends its scan's body only when its own scan's digest differs (migration 0005)
    scan_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class NodeScan(Base):
    """A node's CIS/STIG scan, kept once for every round that carried the same one (migration 0005).

    `sha256` is the digest the node names it by (fleet/scan_digest.py); `report` is the scan as the
    service decoded it (obelisk.report/1, compact), whose findings are joined into every round judged
    with it when the round is read; `failing` the ids of its failing findings (JSON list, in order), so a
    round that names the scan by its digest is judged without decoding it again."""

    __tablename__ = "node_scans"
    __table_args__ = (UniqueConstraint("node_id", "sha256", name="uq_node_scans_node_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    report: Mapped[str] = mapped_column(Text)
    failing: Mapped[str] = mapped_column(Text)
    received_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)


class Nonce(Base):
    """A single-use challenge: a registration's credential secret (kept as its hash), or a round's nonce
    issued before migration 0004 (round nonces are now MACs the service checks: `fleet/nonce.py`)."""

    __tablename__ = "nonces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[str] = mapped_column(String(128), unique=True)  # hex nonce; for credentials the challenge id
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(20))  # round | credential
    secret_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ak_public: Mapped[str | None] = mapped_column(Text, nullable=True)  # credential: the AK being proven
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), nullable=True)  # credential: its image
    issued_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NodeKey(Base):
    """A node's /var key, wrapped under the service's key-encryption key (never stored in the clear)."""

    __tablename__ = "node_keys"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    wrapped: Mapped[str] = mapped_column(Text)  # hex: 12-byte AES-GCM nonce || ciphertext+tag (AAD: node id)
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    released: Mapped[int] = mapped_column(Integer, default=0)
    last_released_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Attestation(Base):
    """One round's result, kept for ever (`fleet history`).

    `nonce` is the round's nonce, unique: the row is what makes a nonce single use (the service issues
    round nonces without storing them, migration 0004). `nonce_id` links rounds recorded before that
    to their row in `nonces`."""

    __tablename__ = "attestations"
    __table_args__ = (UniqueConstraint("nonce", name="uq_attestations_nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    nonce: Mapped[str] = mapped_column(String(128))  # hex; one result per round
    nonce_id: Mapped[int | None] = mapped_column(ForeignKey("nonces.id"), unique=True, nullable=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    passed: Mapped[bool] = mapped_column(Boolean)
    summary: Mapped[str] = mapped_column(Text)  # the failing check ids, or "all passed"
    report: Mapped[str] = mapped_column(Text)  # obelisk.report/1 JSON, without the scan's findings (below)
    # the node's scan this round was judged with (migration 0005): its findings belong to the round's report
    # at index `scan_position` of `report`'s findings; they are joined in when the round is read
    # (service.joined_report). Rounds kept before 0005 have their scan's findings in `report` and no scan_id.
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("node_scans.id"), index=True, nullable=True)
    scan_position: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Event(Base):
    """A node's state change."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(40))
    old_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    new_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class ServiceSecret(Base):
    """A secret every `fleet serve` process on this database shares (the round nonces' MAC key)."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))  # hex
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)


class Audit(Base):
    """An operator's action, with the subject of the client certificate that made it."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[_dt.datetime] = mapped_column(UTCDateTime)
    subject: Mapped[str] = mapped_column(String(500))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(500))
    outcome: Mapped[str] = mapped_column(String(20))  # ok | refused
    detail: Mapped[str] = mapped_column(Text, default="")


def database_url(given: str) -> str:
    """A SQLAlchemy URL; a plain path means a SQLite file there."""
    if "://" in given:
        return given
    return f"sqlite:///{Path(given).resolve()}"


# Kinds of transaction (the execution option TRANSACTION on a session's engine, see `sessions_for`):
WRITE = "write"  # the default: durable at commit
READ = "read"  # reads only; on SQLite without a transaction: each statement is a snapshot that neither takes
# nor waits for the write lock (a READ connection runs single statements)
ROUND = "round"  # an attestation round's result: its commit does not wait for the disk (see below)
TRANSACTION = "obelisk_transaction"
SYNCHRONOUS = "obelisk_synchronous"  # a SQLite connection's PRAGMA synchronous, in its pool record's info


def make_engine(url: str) -> Engine:
    """The engine; transactions of kind READ and ROUND behave as `sessions_for` says."""
    url = database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: object) -> None:
            dbapi_connection.isolation_level = None  # transactions begin below, not by the driver
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            kind = connection.get_execution_options().get(TRANSACTION, WRITE)
            if kind == READ:
                return  # each statement is its own snapshot (WAL): writers go on meanwhile
            # WAL with synchronous=NORMAL: the commit is durable against a crash of the process (SIGKILL)
            # but not of the machine; FULL syncs the WAL at every commit (and with it every earlier one).
            # The pragma cannot change inside a transaction, so it is set before the BEGIN, and only when
            # this connection's last transaction was of the other kind (most are rounds).
            synchronous = "NORMAL" if kind == ROUND else "FULL"
            info = connection.connection.info
            if info.get(SYNCHRONOUS) != synchronous:
                connection.exec_driver_sql(f"PRAGMA synchronous={synchronous}")
                info[SYNCHRONOUS] = synchronous
            # Take the write lock at the start: a transaction that read first and wrote later would fail at
            # once with "database is locked" when another process wrote in between (SQLite cannot wait then).
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=16, max_overflow=8)

    @event.listens_for(engine, "begin")
    def _begin_server(connection: Any) -> None:
        if connection.get_execution_options().get(TRANSACTION) == ROUND:
            # PostgreSQL's equivalent of SQLite's synchronous=NORMAL above, for this transaction only
            connection.exec_driver_sql("SET LOCAL synchronous_commit = off")

    return engine


def engine_for(sessions: sessionmaker, kind: str) -> Engine:
    """The sessions' engine, its transactions of `kind` (READ, ROUND, WRITE).

    ROUND trades durability against a crash of the machine for commits that do not wait for the disk:
    what a round writes survives the SIGKILL of its process (SQLite's WAL, PostgreSQL's WAL), but the
    last rounds before a power loss may be missing afterwards (a node is attested again next interval).
    Every other write (registrations, operator actions, key releases, the audit) commits durably, and
    flushes the rounds committed before it.
    """
    engine: Engine = sessions.kw["bind"]
    return engine.execution_options(**{TRANSACTION: kind})


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run the package's alembic migrations up to `revision` on `engine`."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def open_database(url: str) -> sessionmaker:
    """The database at `url`, migrated to the newest schema; returns a session factory."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = make_engine(url)
        migrate(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise InputError(f"fleet database {database_url(url).split('@')[-1]}: {str(exc).splitlines()[0]}") from None
    return sessionmaker(engine, expire_on_commit=False)
