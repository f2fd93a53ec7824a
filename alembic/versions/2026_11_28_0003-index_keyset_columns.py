"""indexes that serve the keyset queries exactly

`GET /installs?status=...` pages on (installed_at, store_id) within a status, and
`broker keys rotate` pages on store_id within one key id: both indexes now end with the
keyset's tiebreaker, so PostgreSQL reads each page straight from the index.

On PostgreSQL the indexes are built and dropped CONCURRENTLY (outside the migration's
transaction), so a large `installs` table stays writable while this runs.

Revision ID: 7c1d4e2a9b10
Revises: 5b1c0f7e2a10
Create Date: 2026-11-29 00:01:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7c1d4e2a9b10"
down_revision: str | None = "5b1c0f7e2a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _swap(drop: list[str], create: list[tuple[str, list[str]]]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, columns in create:
                op.create_index(
                    name, "installs", columns, postgresql_concurrently=True, if_not_exists=True
                )
            for name in drop:
                op.drop_index(
                    name, table_name="installs", postgresql_concurrently=True, if_exists=True
                )
        return
    with op.batch_alter_table("installs") as batch:
        for name, columns in create:
            batch.create_index(name, columns)
        for name in drop:
            batch.drop_index(name)


def upgrade() -> None:
    _swap(
        drop=["ix_installs_status_installed_at", "ix_installs_key_id"],
        create=[
            ("ix_installs_status_installed_at_store_id", ["status", "installed_at", "store_id"]),
            ("ix_installs_key_id_store_id", ["key_id", "store_id"]),
        ],
    )


def downgrade() -> None:
    _swap(
        drop=["ix_installs_status_installed_at_store_id", "ix_installs_key_id_store_id"],
        create=[
            ("ix_installs_status_installed_at", ["status", "installed_at"]),
            ("ix_installs_key_id", ["key_id"]),
        ],
    )
