"""bind sealed values to the store domain and auth method; number changes in the database

1. Every sealed column of `installs` is re-sealed so that its associated data also binds
   the row's `store_domain` and `auth_method` (what decides where and how the secret is
   used). A row whose domain was changed by someone who can write the database but holds
   no key then fails to open instead of sending the secret to that domain. The old
   binding is not kept anywhere: after this migration the application opens only the new
   form, and nothing in a row says which form it is (no version a database writer could
   flip back). Needs BROKER_ENCRYPTION_KEYS when rows hold sealed values; runs online in
   batches with compare-and-set writes, like `broker keys rotate`.
2. `installs.change_seq` (and, on PostgreSQL, the sequence `installs_change_seq`): the
   change number the store caches follow instead of `updated_at`, which each replica
   stamped from its own clock.

There is no way back to the old binding: downgrade refuses while any row holds sealed
values (it would have to weaken them).

Revision ID: c5d0a7e1b005
Revises: b7e2f1a0c004
Create Date: 2026-11-28 00:05:00
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.security.crypto import Context, KeyRing, SealError

revision: str = "c5d0a7e1b005"
down_revision: str | None = "b7e2f1a0c004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("secret_sealed", "user_sealed", "billing_sealed")
BATCH = 200

installs = sa.table(
    "installs",
    sa.column("store_id", sa.String),
    sa.column("store_domain", sa.String),
    sa.column("auth_method", sa.String),
    sa.column("key_id", sa.String),
    *(sa.column(name, sa.Text) for name in COLUMNS),
)
HOLDS_SEALED = sa.or_(*(installs.c[name].is_not(None) for name in COLUMNS))


def _rebound(keyring: KeyRing, row: sa.Row[tuple[str, ...]]) -> dict[str, str | None] | None:
    """The row's sealed values re-sealed under the new binding; None if they do not open
    under the old one (already migrated by an earlier, interrupted run, or damaged)."""
    new: dict[str, str | None] = {}
    for name in COLUMNS:
        value = getattr(row, name)
        if value is None:
            new[name] = None
            continue
        old_ctx = Context("installs", name, row.store_id)
        new_ctx = Context("installs", name, row.store_id, (row.store_domain, row.auth_method))
        try:
            new[name] = keyring.seal(keyring.open(value, old_ctx), new_ctx)
        except SealError:
            return None
    return new


def _keyring(bind: sa.Connection) -> KeyRing | None:
    """The service's keys, or None when no row holds sealed values (nothing to do).
    Checked before any change, so a missing variable leaves the database as it was."""
    if bind.execute(sa.select(sa.func.count()).where(HOLDS_SEALED)).scalar_one() == 0:
        return None
    spec = os.environ.get("BROKER_ENCRYPTION_KEYS", "").strip()
    if not spec:
        raise RuntimeError(
            "this migration re-seals stored secrets and needs BROKER_ENCRYPTION_KEYS (the "
            "same keys the service uses); set it and run `broker migrate` again"
        )
    return KeyRing.parse(spec)


def _reseal_all(bind: sa.Connection, keyring: KeyRing | None) -> None:
    if keyring is None:
        return
    after, skipped = "", 0
    while True:
        rows = bind.execute(
            sa.select(installs)
            .where(HOLDS_SEALED, installs.c.store_id > after)
            .order_by(installs.c.store_id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1].store_id
        for row in rows:
            new = _rebound(keyring, row)
            if new is None:
                skipped += 1
                continue
            # Compare-and-set on what was read: a row a live replica changed meanwhile was
            # written by it and is left as it is.
            same = [installs.c[name].is_not_distinct_from(getattr(row, name)) for name in COLUMNS]
            bind.execute(
                sa.update(installs)
                .where(
                    installs.c.store_id == row.store_id,
                    installs.c.store_domain == row.store_domain,
                    installs.c.auth_method == row.auth_method,
                    *same,
                )
                .values(**new, key_id=keyring.primary)
            )
    if skipped:
        print(
            f"{skipped} install(s) did not open under the old binding and were left as they "
            "are (already re-sealed, damaged, or under a key that is not configured)"
        )


def upgrade() -> None:
    keyring = _keyring(op.get_bind())
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        op.execute("CREATE SEQUENCE IF NOT EXISTS installs_change_seq")
    # A constant default: no table rewrite on PostgreSQL.
    with op.batch_alter_table("installs") as batch:
        batch.add_column(
            sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
    if is_pg:
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_installs_change_seq", "installs", ["change_seq"],
                postgresql_concurrently=True, if_not_exists=True,
            )  # fmt: skip
            # Online: in autocommit each compare-and-set write commits on its own, so no
            # lock is held across the batches while live replicas serve traffic.
            _reseal_all(op.get_bind(), keyring)
    else:
        with op.batch_alter_table("installs") as batch:
            batch.create_index("ix_installs_change_seq", ["change_seq"])
        _reseal_all(op.get_bind(), keyring)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.select(sa.func.count()).where(HOLDS_SEALED)).scalar_one():
        raise RuntimeError(
            "no downgrade past c5d0a7e1b005 while installs hold sealed values: it would "
            "weaken their binding to the store domain and auth method"
        )
    with op.batch_alter_table("installs") as batch:
        batch.drop_index("ix_installs_change_seq")
        batch.drop_column("change_seq")
    if bind.dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS installs_change_seq")
