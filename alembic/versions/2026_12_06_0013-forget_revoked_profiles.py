"""forget_revoked_profiles: revoked installs no longer keep the merchant's profile

A revoke now destroys `user_sealed` and `billing_sealed` (the merchant's name, email and
billing address) with the token; installs revoked before this kept them. This clears them
on every revoked row; the row keeps store id, domain, auth method, times and the token's
fingerprint for the audit trail. Nothing else changes (no status, no change number: no
cached copy holds a profile).

An UPDATE of two columns to NULL, no type or schema change. Old replicas keep serving
while it runs (alembic/env.py), so on PostgreSQL it goes in committed batches of a few
thousand rows by store id, each a short row-lock on revoked rows only; a rerun goes on
where it stopped. Rows an old replica revokes after this ran are cleared by the new
replicas' retention job (service/jobs/retention.py). There is no downgrade: what is
destroyed stays destroyed.

Revision ID: f3a4b5c6d013
Revises: a4b5c6d7e014
Create Date: 2026-12-06 00:13:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f3a4b5c6d013"
down_revision: str | None = "a4b5c6d7e014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5_000
HOLDS_PROFILE = "status = 'revoked' AND (user_sealed IS NOT NULL OR billing_sealed IS NOT NULL)"


def _clear_batches() -> None:
    bind = op.get_bind()
    after = ""
    while True:
        # The next BATCH revoked rows by store id (the primary key), then those cleared.
        last = bind.execute(
            sa.text(
                "SELECT MAX(store_id) FROM (SELECT store_id FROM installs "  # noqa: S608
                f"WHERE store_id > :after AND {HOLDS_PROFILE} "
                "ORDER BY store_id LIMIT :n) AS batch"
            ),
            {"after": after, "n": BATCH},
        ).scalar()
        if last is None:
            return
        bind.execute(
            sa.text(
                "UPDATE installs SET user_sealed = NULL, billing_sealed = NULL "  # noqa: S608
                f"WHERE store_id > :after AND store_id <= :last AND {HOLDS_PROFILE}"
            ),
            {"after": after, "last": last},
        )
        after = last


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # each batch commits on its own
            _clear_batches()
    else:  # SQLite: one writer, the database lock either way
        _clear_batches()


def downgrade() -> None:
    pass  # destroyed profiles cannot come back; the schema is unchanged
