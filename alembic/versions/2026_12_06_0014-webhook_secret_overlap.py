"""webhook secret rotation with an overlap window: the previous secret and its end

`webhooks.previous_secret_sealed` is the signing secret a rotation replaced, sealed like
the current one (same key id), and `webhooks.previous_secret_until` when deliveries stop
carrying its signature as well. Two nullable columns on a table of a few rows: replicas
still on the previous release read and write subscriptions without them (and sign with
the current secret only).

Revision ID: a4b5c6d7e014
Revises: b6c7d8e9f021
Create Date: 2026-12-06 00:14:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision: str = "a4b5c6d7e014"
down_revision: str | None = "b6c7d8e9f021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("previous_secret_sealed", sa.Text(), nullable=True))
        batch.add_column(sa.Column("previous_secret_until", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("previous_secret_until")
        batch.drop_column("previous_secret_sealed")
