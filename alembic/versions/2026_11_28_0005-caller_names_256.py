"""caller names up to 256 characters fit every column

A caller token's `sub` may be 256 characters (the verifier's limit, and the width of
`audit_events.actor`), but `pending_installs.initiated_by` held 128: an app-initiated
install by a caller with a longer name failed with a 500 on PostgreSQL. Widening a
VARCHAR is a catalogue-only change on PostgreSQL (no table rewrite, no long lock).

Revision ID: b7e2f1a0c004
Revises: f8a3d0b4e008
Create Date: 2026-11-29 00:02:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7e2f1a0c004"
down_revision: str | None = "f8a3d0b4e008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _resize(length: int, previous: int) -> None:
    with op.batch_alter_table("pending_installs") as batch:
        batch.alter_column(
            "initiated_by",
            existing_type=sa.String(length=previous),
            type_=sa.String(length=length),
            existing_nullable=False,
        )


def upgrade() -> None:
    _resize(256, 128)


def downgrade() -> None:
    # Names longer than 128 characters would not fit back: cut them rather than fail.
    op.execute(
        sa.text(
            "UPDATE pending_installs SET initiated_by = substr(initiated_by, 1, 128) "
            "WHERE length(initiated_by) > 128"
        )
    )
    _resize(128, 256)
