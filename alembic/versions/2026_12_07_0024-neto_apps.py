"""installs.app, pending_installs.app: several Neto add-ons in one broker

Each install, and each install in flight, belongs to one add-on (BROKER_NETO_APPS;
service/neto/apps.py). Every existing row was made with the single-app settings, which
are the app named `default`: the server default fills them in, so a replica of the
previous version, which writes neither column, keeps writing `default` rows during a
rolling upgrade. A pending row's sealed binding covers its app only when it is not
`default` (oauth/pending.py), so the installs in flight at the upgrade still complete.

Revision ID: e9f0a1b2c024
Revises: d8e9f0a1b023
Create Date: 2026-12-07 00:24:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e9f0a1b2c024"
down_revision: str | None = "d8e9f0a1b023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("installs", "pending_installs"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("app", sa.String(32), nullable=False, server_default="default")
            )
    op.create_index(
        "ix_installs_app_installed_at_store_id", "installs", ["app", "installed_at", "store_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_installs_app_installed_at_store_id", table_name="installs")
    for table in ("pending_installs", "installs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("app")
