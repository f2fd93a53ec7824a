"""Alembic environment: async engine, batch mode on SQLite, the models' metadata.

Migrations run while the old replicas still serve traffic (the Helm hook runs
`broker migrate` before the new pods start), so on PostgreSQL a migration must never hold
a lock that blocks reads or writes of a large table for long:
- `lock_timeout` (below): a DDL statement that cannot get its lock quickly fails instead of
  queueing, because every query on that table would queue behind it. Rerun the migration.
- Indexes on existing tables: `CREATE INDEX CONCURRENTLY` / `DROP INDEX CONCURRENTLY`
  inside `with op.get_context().autocommit_block():` (they cannot run in a transaction);
  add `if_not_exists=True` so a rerun after a failed build works. See
  2026_11_28_0003-index_keyset_columns.py.
- New columns: nullable or with a constant default (no table rewrite); backfill in
  batches from application code, then add NOT NULL via a `CHECK ... NOT VALID` constraint
  and `VALIDATE CONSTRAINT` in a later migration.
- Never change a column's type in place on a large table; add a column, dual-write,
  backfill, switch, drop.
SQLite (development, single node) takes the database lock for a migration either way.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import service.audit.models
import service.events.models
import service.idempotency.models
import service.inbound.models
import service.installs.models
import service.jobs.models
import service.oauth.models
import service.replicas.models  # noqa: F401  (registers the tables on the metadata)
from service.config import normalize_database_url
from service.db import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get(
        "BROKER_DATABASE_URL", "sqlite+aiosqlite:///./var/broker.db"
    )
    return normalize_database_url(url)


# How long one DDL statement may wait for its lock (see the module docstring).
PG_LOCK_TIMEOUT = "5s"


def do_run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET lock_timeout = '{PG_LOCK_TIMEOUT}'")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def ensure_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


async def run_async_migrations() -> None:
    url = database_url()
    # Like the broker's engines: a failed statement's message never prints its values.
    engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=database_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        ensure_sqlite_folder(database_url())
        asyncio.run(run_async_migrations())
