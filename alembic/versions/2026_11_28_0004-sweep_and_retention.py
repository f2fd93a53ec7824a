"""background jobs: leases, the health sweep's bookkeeping, retention's index

- `leases`: one row per background job (health sweep, retention), so one replica at a
  time runs each.
- `installs.last_swept_at` and an index on (status, last_swept_at): the sweep takes the
  active installs swept longest ago.
- `ix_audit_events_at`: retention deletes audit rows older than a cutoff in batches.

On PostgreSQL the indexes are built CONCURRENTLY (outside the migration's transaction),
so a large `audit_events` table stays writable while this runs.

Revision ID: f8a3d0b4e008
Revises: 7c1d4e2a9b10
Create Date: 2026-11-30 00:08:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision: str = "f8a3d0b4e008"
down_revision: str | None = "7c1d4e2a9b10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("ix_installs_status_last_swept_at", "installs", ["status", "last_swept_at"]),
    ("ix_audit_events_at", "audit_events", ["at"]),
]


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    with op.batch_alter_table("installs") as batch:
        batch.add_column(sa.Column("last_swept_at", UTCDateTime(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, table, columns in INDEXES:
                op.create_index(
                    name, table, columns, postgresql_concurrently=True, if_not_exists=True
                )
        return
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("installs") as batch:
        batch.drop_column("last_swept_at")
    op.drop_table("leases")
