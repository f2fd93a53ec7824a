"""install_usage: the stores' last use moves out of the wide installs row

The bundles' background stamp writes tens of thousands of last-use times every few
seconds with 100,000 installs; rewriting each store's install row (its sealed columns)
for that was the largest cost left on the bundles' path. `install_usage` holds only the
store id and the time. Existing times are copied over; no row means never used.

Revision ID: d1e2f3a4b011
Revises: c0d1e2f3a010
Create Date: 2026-12-03 00:11:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision: str = "d1e2f3a4b011"
down_revision: str | None = "c0d1e2f3a010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "install_usage",
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("store_id", name=op.f("pk_install_usage")),
    )
    op.execute(
        "INSERT INTO install_usage (store_id, last_used_at) "
        "SELECT store_id, last_used_at FROM installs WHERE last_used_at IS NOT NULL"
    )
    with op.batch_alter_table("installs") as batch:
        batch.drop_column("last_used_at")


def downgrade() -> None:
    with op.batch_alter_table("installs") as batch:
        batch.add_column(sa.Column("last_used_at", UTCDateTime(), nullable=True))
    op.execute(
        "UPDATE installs SET last_used_at = (SELECT u.last_used_at FROM install_usage u "
        "WHERE u.store_id = installs.store_id)"
    )
    op.drop_table("install_usage")
