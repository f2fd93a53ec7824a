"""growing_ids_64_bit: every id that only grows becomes 64-bit

`audit_events.id`, `pending_installs.id`, `webhook_deliveries.id` and
`webhook_attempts.id` (with `webhook_attempts.delivery_id`, which holds a delivery's id)
were 32-bit serials on PostgreSQL: retention deletes rows but the sequences only grow, and
at 2**31 every insert fails (a bundle's audit row first of all). SQLite's INTEGER PRIMARY
KEY is its 64-bit rowid already: nothing to do there.

Old replicas keep serving while this runs (alembic/env.py), and an in-place
`ALTER COLUMN ... TYPE bigint` would rewrite a table of hundreds of millions of audit rows
under an exclusive lock (about 7 s a million rows here). So the tables that grow are
swapped instead:
1. one short transaction renames the table (and its key and indexes) to `*_int32`,
   creates the table again under its own name with bigint ids, its key and its indexes,
   and hands it the same sequence (now bigint), so ids go on from where they were: new
   rows, from old and new replicas alike, land in the new table at once;
2. the old rows are copied over in id order, 20,000 per committed statement, and the old
   table is dropped. A rerun after a failure resumes the copy where it stopped.
Until the copy is done, `/audit` and the delivery log miss the not yet copied, older rows
(docs/deploy.md). `pending_installs` holds only live installs (a few thousand rows at
most) and is altered in place.

Revision ID: e2f3a4b5c012
Revises: d1e2f3a4b011
Create Date: 2026-12-06 00:12:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e2f3a4b5c012"
down_revision: str | None = "d1e2f3a4b011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Table -> its columns that hold such an id. Each table's key is `id`, numbered by
# `{table}_id_seq`.
SWAPPED = {
    "audit_events": ("id",),
    "webhook_deliveries": ("id",),
    "webhook_attempts": ("id", "delivery_id"),
}
IN_PLACE = {"pending_installs": ("id",)}
BATCH = 20_000


def _exists(table: str) -> bool:
    found = op.get_bind().execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table})
    return bool(found.scalar())


def _is_bigint(table: str) -> bool:
    found = op.get_bind().execute(
        sa.text(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = :t AND column_name = 'id'"
        ),
        {"t": table},
    )
    return found.scalar() == "bigint"


def _swap(table: str, columns: tuple[str, ...]) -> None:
    """Step 1, in the migration's transaction: the old table out of the way, a bigint one
    in its place."""
    bind = op.get_bind()
    old = f"{table}_int32"
    indexes = bind.execute(
        sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "WHERE t.relname = :t AND NOT x.indisprimary"
        ),
        {"t": table},
    ).all()
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
    for name, _ in indexes:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_int32")
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    for column in columns:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE bigint")
    op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint OWNED BY {table}.id")
    op.execute(f"ALTER TABLE {old} ALTER COLUMN id DROP DEFAULT")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
    for _, definition in indexes:
        op.execute(definition)  # the old table's name then: the new table's now


def _copy(table: str) -> None:
    """Step 2, each batch committed on its own: the old rows over, then the old table
    gone. Resumable: rows already copied are where the copy goes on from."""
    bind = op.get_bind()
    old = f"{table}_int32"
    low, high = bind.execute(sa.text(f"SELECT MIN(id), MAX(id) FROM {old}")).one()  # noqa: S608
    if high is not None:
        copied = bind.execute(
            sa.text(f"SELECT MAX(id) FROM {table} WHERE id <= :high"),  # noqa: S608
            {"high": high},
        ).scalar()
        start = copied if copied is not None else low - 1
        while start < high:
            bind.execute(
                sa.text(
                    f"INSERT INTO {table} SELECT * FROM {old} "  # noqa: S608
                    "WHERE id > :start AND id <= :stop ON CONFLICT (id) DO NOTHING"
                ),
                {"start": start, "stop": start + BATCH},
            )
            start += BATCH
    op.execute(f"DROP TABLE {old}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in IN_PLACE.items():
        for column in columns:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE bigint")
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint")
    for table, columns in SWAPPED.items():
        # A rerun after a failed copy: that table is swapped already.
        if not _is_bigint(table):
            _swap(table, columns)
    with op.get_context().autocommit_block():
        for table in SWAPPED:
            if _exists(f"{table}_int32"):
                _copy(table)


def downgrade() -> None:
    # In place (a development database): fails, as it should, once an id is past 2**31-1.
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in {**IN_PLACE, **SWAPPED}.items():
        for column in columns:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE integer")
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS integer")
