"""neto_notify_tokens, neto_notifications; webhooks.stores and webhooks.include_raw

Neto's own notifications (service/inbound/): each store's URL token (a hash), one dedupe
row per notification accepted, and two subscription options (only some stores' events;
the body Neto sent). New tables, and columns with server defaults: a replica of the
previous version neither reads nor minds them.

Revision ID: d8e9f0a1b023
Revises: c7d8e9f0a022
Create Date: 2026-12-07 00:23:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db import BIGINT, UTCDateTime

revision: str = "d8e9f0a1b023"
down_revision: str | None = "c7d8e9f0a022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "neto_notify_tokens",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("issued_by", sa.String(256), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_neto_notify_tokens")),
        # One live URL per store; with several add-ons: (store_id, app).
        sa.UniqueConstraint("store_id", name="uq_neto_notify_tokens_store_id"),
    )
    op.create_table(
        "neto_notifications",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("dedupe_key", sa.String(80), nullable=False),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_neto_notifications")),
        sa.UniqueConstraint("store_id", "dedupe_key", name="uq_neto_notifications_store_id"),
    )
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(
            sa.Column("stores", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.add_column(
            sa.Column("include_raw", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("include_raw")
        batch.drop_column("stores")
    op.drop_table("neto_notifications")
    op.drop_table("neto_notify_tokens")
