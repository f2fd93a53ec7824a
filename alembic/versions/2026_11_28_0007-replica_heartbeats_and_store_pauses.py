"""replica heartbeats and shared store pauses

`broker_replicas`: one row per running replica, its heartbeat counter; the live rows
divide each store's Neto budget. `store_pauses`: a Neto 429 seen by one replica, picked up
by the others on their heartbeat. Both are tiny (one row per replica, per paused store).

Revision ID: d6e1b8f2c006
Revises: c5d0a7e1b005
Create Date: 2026-11-30 00:06:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d6e1b8f2c006"
down_revision: str | None = "c5d0a7e1b005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broker_replicas",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("beat", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_replicas")),
    )
    op.create_table(
        "store_pauses",
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("store_id", name=op.f("pk_store_pauses")),
    )


def downgrade() -> None:
    op.drop_table("store_pauses")
    op.drop_table("broker_replicas")
