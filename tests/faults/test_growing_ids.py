"""Ids that never run out, and a revoke that never fails for its audit trail (trust round
4, item 1). On PostgreSQL the growing ids were 32-bit serials: past 2**31 a bundle, a
revoke and a verify answered 500, and the revoked store stayed active."""

from __future__ import annotations

import asyncio
import logging

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.sequences import GROWING, sequence_name
from tests.api.test_webhooks import FAST
from tests.support import (
    alembic_config,
    assert_error,
    metric,
    recreate_database,
    register_api_key_store,
)

ADMIN = "installs:admin"
PAST_31_BITS = 2**31 + 1000
# The revision before the ids became 64-bit.
BEFORE_BIGINT = "d1e2f3a4b011"
COPIED = ("audit_events", "pending_installs", "webhook_deliveries", "webhook_attempts")


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(**FAST))


def is_postgres(app) -> bool:
    return app.state.services.engine.dialect.name == "postgresql"


async def set_sequences(app, value: int) -> dict[str, int]:
    """Move every growing id to `value` (PostgreSQL: the sequences; SQLite: a row with that
    id, which the next insert continues from). Returns what to restore afterwards."""
    saved = {}
    async with app.state.services.engine.begin() as conn:
        if is_postgres(app):
            for table, column in GROWING:
                name = sequence_name(table, column)
                saved[name] = (
                    await conn.execute(text(f"SELECT last_value FROM {name}"))  # noqa: S608
                ).scalar_one()
                await conn.execute(text(f"SELECT setval('{name}', {value})"))
        else:
            await conn.execute(
                text(
                    "INSERT INTO audit_events (id, at, event, actor, details) "
                    "VALUES (:id, CURRENT_TIMESTAMP, 'test.marker', 'test', '{}')"
                ),
                {"id": value},
            )
    return saved


async def restore_sequences(app, saved: dict[str, int]) -> None:
    async with app.state.services.engine.begin() as conn:
        for name, value in saved.items():
            await conn.execute(text(f"SELECT setval('{name}', {value})"))


async def test_ids_past_31_bits_serve_bundles_webhooks_verify_and_revoke(
    app, client, auth, receiver, neto
):
    saved = await set_sequences(app, PAST_31_BITS)
    try:
        await client.post("/webhooks", json={"url": receiver.url}, headers=auth(ADMIN))
        await register_api_key_store(client, auth(ADMIN), "S1")
        headers = auth("credentials:read", stores=["S1"])
        for _ in range(3):  # the third bundle was the first 500 in the report
            assert (await client.get("/credentials/S1", headers=headers)).status_code == 200
        start = await client.get("/oauth/install", params={"store_domain": "x.example.com"})
        assert start.status_code == 302, start.text
        verified = await client.post("/installs/S1/verify", headers=auth(ADMIN))
        assert verified.status_code == 200, verified.text
        revoked = await client.delete("/installs/S1", headers=auth(ADMIN))
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        await receiver.wait_for(2)  # install.created and install.revoked, delivered
        async with app.state.services.engine.connect() as conn:
            smallest = {
                table: (await conn.execute(text(f"SELECT MIN({col}) FROM {table}"))).scalar()  # noqa: S608
                for table, col in [*GROWING[:4], ("webhook_attempts", "delivery_id")]
            }
            audited = [
                *(await conn.execute(text("SELECT event FROM audit_events ORDER BY id"))).scalars()
            ]
            assert audited == [
                *(["test.marker"] if not is_postgres(app) else []),
                "webhook.created",
                "install.created",
                *["bundle.issued"] * 3,
                "install.verified",
                "install.revoked",
            ], audited
        # SQLite: only the audit table was moved (its rowid was 64-bit all along).
        moved = smallest if is_postgres(app) else {"audit_events": smallest["audit_events"]}
        assert all(value > 2**31 for value in moved.values()), smallest
    finally:
        await restore_sequences(app, saved)


async def test_a_revoke_whose_audit_row_fails_still_revokes(app, client, auth, db_faults, caplog):
    caplog.set_level(logging.ERROR, logger="broker.installs")
    await register_api_key_store(client, auth(ADMIN), "S1")
    headers = auth("credentials:read", stores=["S1"])
    assert (await client.get("/credentials/S1", headers=headers)).status_code == 200
    db_faults.fail(r"^INSERT INTO audit_events")
    revoked = await client.delete("/installs/S1", headers=auth(ADMIN))
    db_faults.heal()

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    assert db_faults.refused, "the audit insert was never attempted"
    async with app.state.services.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, secret_sealed FROM installs WHERE store_id = 'S1'")
            )
        ).one()
        events = (await conn.execute(text("SELECT type FROM events ORDER BY seq"))).scalars()
        assert [*events] == ["install.created"]  # the revoke's event went with its audit row
    assert tuple(row) == ("revoked", None)
    assert_error(await client.get("/credentials/S1", headers=headers), 410, "store_revoked")
    scraped = (await client.get("/metrics")).text
    assert metric(scraped, "broker_audit_failures_total", event="install.revoked") >= 1
    [line] = [r for r in caplog.records if r.name == "broker.installs"]
    assert line.fields["store_id"] == "S1" and line.fields["error"] == "OperationalError"


async def test_a_revoke_on_a_database_that_is_gone_fails_and_says_so(app, client, auth, db_faults):
    await register_api_key_store(client, auth(ADMIN), "S1")
    db_faults.fail(r".")
    refused = await client.delete("/installs/S1", headers=auth(ADMIN))
    db_faults.heal()
    assert_error(refused, 503, "service_unavailable")
    detail = await client.get("/installs/S1", headers=auth("installs:read"))
    assert detail.json()["status"] == "active"  # not half-revoked


async def test_an_exhausted_audit_sequence_cannot_block_a_revoke(app, client, auth):
    if not is_postgres(app):
        pytest.skip("SQLite's rowid never runs out: it reuses a free id past 2**63-1")
    await register_api_key_store(client, auth(ADMIN), "S1")
    saved = {"audit_events_id_seq": 1}
    async with app.state.services.engine.begin() as conn:
        await conn.execute(text(f"SELECT setval('audit_events_id_seq', {2**63 - 1})"))
    try:
        revoked = await client.delete("/installs/S1", headers=auth(ADMIN))
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    finally:
        await restore_sequences(app, saved)


async def test_id_headroom_is_a_metric(app, client, auth):
    saved = await set_sequences(app, 2**62)
    try:
        scraped = (await client.get("/metrics")).text
    finally:
        await restore_sequences(app, saved)
    ratio = metric(scraped, "broker_id_headroom_ratio", sequence="audit_events_id_seq")
    assert 0.49 < ratio < 0.51
    for table, column in GROWING[1:]:
        name = sequence_name(table, column)
        expected = 0.5 if is_postgres(app) else 1.0  # SQLite: only the audit row was set
        assert metric(scraped, "broker_id_headroom_ratio", sequence=name) == pytest.approx(
            expected, abs=0.01
        )


def _column_types(url: str) -> dict[tuple[str, str], str]:
    async def read() -> dict[tuple[str, str], str]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema()"
                )
            )
            found = {(t, c): d for t, c, d in rows}
        await engine.dispose()
        return found

    return asyncio.run(read())


def test_the_migration_widens_ids_of_a_database_that_holds_rows(database_url, tmp_path):
    """From the initial schema with rows in it to head: rows kept, ids 64-bit."""
    if database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path}/ids.db"
    else:
        url = database_url.rsplit("/", 1)[0] + "/broker_ids_migration"
        asyncio.run(recreate_database(database_url, "broker_ids_migration"))
    command.upgrade(alembic_config(url), "3e373f2a1158")  # the initial schema
    asyncio.run(_execute(url, [
        "INSERT INTO audit_events (at, event, actor, details) "
        "VALUES (CURRENT_TIMESTAMP, 'install.revoked', 'ops', '{}')",
    ]))  # fmt: skip
    command.upgrade(alembic_config(url), BEFORE_BIGINT)
    asyncio.run(_execute(url, [
        "INSERT INTO pending_installs (state_hash, store_domain, initiated_by, created_at, "
        "expires_at) VALUES ('h', 'a.example.com', 'neto', CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP)",
        "INSERT INTO webhook_deliveries (webhook_id, seq, store_id, state, attempts, "
        "next_attempt_at) VALUES ('w', 1, 'S1', 'pending', 0, CURRENT_TIMESTAMP)",
        "INSERT INTO webhook_attempts (webhook_id, delivery_id, event_id, attempt, "
        "attempted_at, latency_ms) VALUES ('w', 1, 'e', 1, CURRENT_TIMESTAMP, 3)",
    ]))  # fmt: skip
    command.upgrade(alembic_config(url), "head")
    past = 2**40
    asyncio.run(_execute(url, [
        "INSERT INTO audit_events (id, at, event, actor, details) "
        "VALUES (1099511627776, CURRENT_TIMESTAMP, 'install.revoked', 'ops', '{}')",
        "INSERT INTO webhook_attempts (webhook_id, delivery_id, event_id, attempt, "
        "attempted_at, latency_ms) VALUES ('w', 1099511627776, 'e', 2, CURRENT_TIMESTAMP, 3)",
    ]))  # fmt: skip
    counts = asyncio.run(_counts(url))
    assert counts == {"audit_events": 2, "pending_installs": 1, "webhook_deliveries": 1,
                      "webhook_attempts": 2}  # fmt: skip
    if url.startswith("postgresql"):
        types = _column_types(url)
        for key in [("audit_events", "id"), ("pending_installs", "id"),
                    ("webhook_deliveries", "id"), ("webhook_attempts", "id"),
                    ("webhook_attempts", "delivery_id"), ("events", "seq")]:  # fmt: skip
            assert types[key] == "bigint", key
        asyncio.run(_execute(url, [f"SELECT setval('audit_events_id_seq', {past + 1})"]))
        asyncio.run(_execute(url, [
            "INSERT INTO audit_events (at, event, actor, details) "
            "VALUES (CURRENT_TIMESTAMP, 'install.revoked', 'ops', '{}')",
        ]))  # fmt: skip


async def _execute(url: str, statements: list[str]) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))
    await engine.dispose()


async def _counts(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        found = {
            table: (await conn.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar_one()  # noqa: S608
            for table in COPIED
        }
    await engine.dispose()
    return found
