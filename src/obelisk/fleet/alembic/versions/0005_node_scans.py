"""A node's CIS/STIG scan kept once per distinct scan (node_scans), named by its digest; each round
refers to the scan it was judged with instead of carrying its findings; the digest of each node's last
scan, which the nonce answer tells the node.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from obelisk.fleet.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_scans",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node_id", sa.String(64), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("failing", sa.Text(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("node_id", "sha256", name="uq_node_scans_node_sha256"),
    )
    with op.batch_alter_table("nodes") as batch:  # batch: SQLite cannot ALTER a table in place
        batch.add_column(sa.Column("scan_sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("attestations") as batch:
        batch.add_column(sa.Column("scan_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("scan_position", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_attestations_scan_id_node_scans", "node_scans", ["scan_id"], ["id"])
        batch.create_index("ix_attestations_scan_id", ["scan_id"])


def downgrade() -> None:
    with op.batch_alter_table("attestations") as batch:
        batch.drop_index("ix_attestations_scan_id")
        batch.drop_constraint("fk_attestations_scan_id_node_scans", type_="foreignkey")
        batch.drop_column("scan_position")
        batch.drop_column("scan_id")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("scan_sha256")
    op.drop_table("node_scans")
