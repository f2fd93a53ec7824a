"""index installs.updated_at for the store caches' change feed

Revision ID: 5b1c0f7e2a10
Revises: 3e373f2a1158
Create Date: 2026-11-28 06:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b1c0f7e2a10"
down_revision: str | None = "3e373f2a1158"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # On a large PostgreSQL table this would be CREATE INDEX CONCURRENTLY outside a
    # transaction; at the size this migration ships at, a plain index build is instant.
    with op.batch_alter_table("installs", schema=None) as batch_op:
        batch_op.create_index("ix_installs_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("installs", schema=None) as batch_op:
        batch_op.drop_index("ix_installs_updated_at")
