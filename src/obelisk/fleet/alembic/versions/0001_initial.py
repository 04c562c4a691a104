"""The fleet's first schema: images, nodes, nonces, attestations, events, audit.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from obelisk.fleet.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("signer", sa.String(500), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("added_by", sa.String(500), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_images_name_version"),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("ek_public", sa.Text(), nullable=False, unique=True),
        sa.Column("ek_certificate", sa.Text(), nullable=True),
        sa.Column("ak_record", sa.Text(), nullable=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.Column("last_attested", UTCDateTime(), nullable=True),
        sa.Column("clock", sa.Integer(), nullable=True),
        sa.Column("reset_count", sa.Integer(), nullable=True),
        sa.Column("restart_count", sa.Integer(), nullable=True),
    )
    op.create_table(
        "nonces",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False, unique=True),
        sa.Column("node_id", sa.String(64), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=True),
        sa.Column("ak_public", sa.Text(), nullable=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=True),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_nonces_node_id", "nonces", ["node_id"])
    op.create_table(
        "attestations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node_id", sa.String(64), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("nonce_id", sa.Integer(), sa.ForeignKey("nonces.id"), nullable=False, unique=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
    )
    op.create_index("ix_attestations_node_id", "attestations", ["node_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("old_status", sa.String(20), nullable=True),
        sa.Column("new_status", sa.String(20), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_events_node_id", "events", ["node_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", sa.String(500), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("audit", "events", "attestations", "nonces", "nodes", "images"):
        op.drop_table(table)
