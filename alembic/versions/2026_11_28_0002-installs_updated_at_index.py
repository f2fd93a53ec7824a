"""index installs.updated_at for the store caches' change feed

Revision ID: 5b1c0f7e2a10
Revises: 3e373f2a1158
Create Date: 2026-11-28 06:10:00

Built CONCURRENTLY on PostgreSQL so a large installs table stays writable.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b1c0f7e2a10"
down_revision: str | None = "3e373f2a1158"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY, outside the migration's transaction: installs stays writable.
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_installs_updated_at",
                "installs",
                ["updated_at"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        return
    with op.batch_alter_table("installs", schema=None) as batch_op:
        batch_op.create_index("ix_installs_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(
                "ix_installs_updated_at",
                table_name="installs",
                postgresql_concurrently=True,
                if_exists=True,
            )
        return
    with op.batch_alter_table("installs", schema=None) as batch_op:
        batch_op.drop_index("ix_installs_updated_at")
