"""Migrations: built from empty at session start (conftest), and no drift from the models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

import service.audit.models
import service.events.models
import service.installs.models
import service.jobs.models
import service.oauth.models
import service.replicas.models  # noqa: F401
from service.db import metadata


async def test_models_and_migrations_do_not_drift(database_url):
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:

        def diff(sync_conn):
            ctx = MigrationContext.configure(
                sync_conn,
                opts={"compare_type": True, "render_as_batch": sync_conn.dialect.name == "sqlite"},
            )
            return compare_metadata(ctx, metadata)

        changes = await conn.run_sync(diff)
    await engine.dispose()
    assert changes == [], f"models differ from migrations; add a migration: {changes}"


async def test_every_table_is_created_with_its_indexes(database_url):
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:

        def names(sync_conn):
            insp = inspect(sync_conn)
            return {
                t: {ix["name"] for ix in insp.get_indexes(t)}
                for t in ("installs", "pending_installs", "audit_events", "events")
            }

        indexes = await conn.run_sync(names)
    await engine.dispose()
    assert "ix_installs_installed_at_store_id" in indexes["installs"]
    assert {"ix_installs_key_id_store_id", "ix_installs_updated_at"} <= indexes["installs"]
    assert {"ix_audit_events_store_id_id", "ix_audit_events_actor_id"} <= indexes["audit_events"]
    assert "ix_events_occurred_at" in indexes["events"]  # retention prunes by age


TABLES = {
    "installs", "install_usage", "pending_installs", "audit_events", "leases",
    "broker_replicas", "store_pauses", "events", "webhooks", "webhook_deliveries",
    "webhook_attempts", "idempotency_keys", "neto_notify_tokens", "neto_notifications",
}  # fmt: skip


def test_downgrade_to_empty_and_back(tmp_path):
    import sqlite3

    from alembic import command

    from tests.support import alembic_config

    path = tmp_path / "roundtrip.db"
    url = f"sqlite+aiosqlite:///{path}"

    def tables():
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        return {name for (name,) in rows} - {"alembic_version"}

    command.upgrade(alembic_config(url), "head")
    assert tables() == TABLES
    command.downgrade(alembic_config(url), "base")
    assert tables() == set()
    command.upgrade(alembic_config(url), "head")
    assert tables() == TABLES
