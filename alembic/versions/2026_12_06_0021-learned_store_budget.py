"""learned_store_budget: a Neto pause carries the budget it taught and when it began

`store_pauses.per_minute` is the store's budget as the broker learned it from Neto's 429
(calls a minute, all replicas) and `store_pauses.at` the database's clock (epoch seconds)
when the pause began: a replica that starts during the pause, or after it while the
budget grows back, takes both up (neto/limits.py, replicas/heartbeat.py). Two nullable
columns on a table of a few rows: old replicas keep writing pauses without them, and
those are applied as before.

Revision ID: b6c7d8e9f021
Revises: e2f3a4b5c012
Create Date: 2026-12-06 00:21:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b6c7d8e9f021"
down_revision: str | None = "e2f3a4b5c012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("store_pauses") as batch:
        batch.add_column(sa.Column("per_minute", sa.Float(), nullable=True))
        batch.add_column(sa.Column("at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("store_pauses") as batch:
        batch.drop_column("at")
        batch.drop_column("per_minute")
