"""alembic environment for the fleet database: run by obelisk.fleet.db.migrate with an open connection."""

from __future__ import annotations

from alembic import context

from obelisk.fleet.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: obelisk always passes its connection
    raise RuntimeError("run the fleet migrations through obelisk.fleet.db.migrate")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
