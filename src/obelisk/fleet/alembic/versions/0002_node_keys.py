"""Node keys: a /var key per node, kept wrapped (AES-GCM) under the service's key-encryption key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from obelisk.fleet.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_keys",
        sa.Column("node_id", sa.String(64), sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("wrapped", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("released", sa.Integer(), nullable=False),
        sa.Column("last_released_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("node_keys")
