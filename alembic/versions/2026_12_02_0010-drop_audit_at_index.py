"""audit_events: drop ix_audit_events_at; retention walks the primary key instead

Every bundle inserts an audit row, and every index on the table is written with it. The
`at` index served only retention, which now takes the oldest rows by id (ids follow time:
rows are appended) and deletes those past the cutoff, so the index is dead weight on the
hot path.

On PostgreSQL the index is dropped CONCURRENTLY (outside the migration's transaction), so
a large `audit_events` table stays writable while this runs.

Revision ID: c0d1e2f3a010
Revises: b9c0d1e2f009
Create Date: 2026-12-02 00:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "c0d1e2f3a010"
down_revision: str | None = "b9c0d1e2f009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(
                "ix_audit_events_at",
                table_name="audit_events",
                postgresql_concurrently=True,
                if_exists=True,
            )
        return
    op.drop_index("ix_audit_events_at", table_name="audit_events")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_audit_events_at",
                "audit_events",
                ["at"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        return
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
