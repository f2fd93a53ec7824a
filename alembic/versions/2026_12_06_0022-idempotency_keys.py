"""idempotency_keys: writes sent with an Idempotency-Key, and Neto's sealed answer

One row per (store, caller, key): a retry of the write is answered from here and never
sent to Neto twice (service/idempotency/). A new table: nothing for old replicas to mind.

Revision ID: c7d8e9f0a022
Revises: f3a4b5c6d013
Create Date: 2026-12-06 00:22:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision: str = "c7d8e9f0a022"
down_revision: str | None = "f3a4b5c6d013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("caller", sa.String(256), nullable=False),
        sa.Column("key_digest", sa.String(64), nullable=False),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("answer_sealed", sa.Text(), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("store_id", "caller", "key_digest", name="uq_idempotency_keys_scope"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
