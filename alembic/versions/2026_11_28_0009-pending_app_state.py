"""pending_installs.app_state_sealed: an app's opaque state, sealed, echoed on return

Revision ID: b9c0d1e2f009
Revises: e7f2c9a3d007
Create Date: 2026-11-29 00:09:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b9c0d1e2f009"
down_revision: str | None = "e7f2c9a3d007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pending_installs") as batch:
        batch.add_column(sa.Column("app_state_sealed", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pending_installs") as batch:
        batch.drop_column("app_state_sealed")
