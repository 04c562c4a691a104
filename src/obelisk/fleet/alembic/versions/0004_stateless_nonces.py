"""Round nonces without a stored row: a MAC under a secret of the database, single use through the
attestation row (attestations.nonce, unique); the secret's table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from obelisk.fleet.db import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("attestations") as batch:  # batch: SQLite cannot ALTER a table in place
        batch.add_column(sa.Column("nonce", sa.String(128), nullable=True))
    # the rounds kept so far: their nonce from the row they claimed
    op.execute("UPDATE attestations SET nonce = (SELECT value FROM nonces WHERE nonces.id = attestations.nonce_id)")
    with op.batch_alter_table("attestations") as batch:
        batch.alter_column("nonce", existing_type=sa.String(128), nullable=False)
        batch.create_unique_constraint("uq_attestations_nonce", ["nonce"])
        batch.alter_column("nonce_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("attestations") as batch:
        batch.drop_constraint("uq_attestations_nonce", type_="unique")
        batch.drop_column("nonce")
    op.drop_table("service_secrets")
