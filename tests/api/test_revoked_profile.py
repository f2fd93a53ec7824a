"""A departed merchant's personal data: a revoke destroys the profile (user: name, email;
billing address) as it destroys the token. The row keeps what the audit trail needs:
store id, domain, auth method, times and the token's fingerprint. The retention job
destroys any profile a revoke left behind (an older replica's, during a rolling upgrade),
and a migration those of installs revoked before. Checked in the rows themselves, not
only in the API."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import utcnow
from service.installs.models import Install
from service.installs.sealing import fingerprint
from service.jobs import retention
from service.web import metrics
from tests.support import alembic_config, install_store, recreate_database

STORE = "N1001"
DOMAIN = "shop.example.com"
ADMIN = "installs:admin"


async def row(app: Any, store_id: str = STORE) -> Install:
    async with app.state.services.sessionmaker() as session:
        query = select(Install).where(Install.store_id == store_id)  # type: ignore[arg-type]
        return (await session.execute(query)).scalar_one()


async def installed_then_revoked(client: Any, neto: Any, auth: Any, app: Any) -> dict[str, Any]:
    got = await install_store(client, neto, DOMAIN, store_id=STORE)
    before = await row(app)
    assert before.user_sealed and before.billing_sealed, "the grant carried a profile"
    r = await client.delete(f"/installs/{STORE}", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    return {"token": got["access_token"], "before": before, "answer": r.json()}


async def test_a_revoke_destroys_the_profile_and_keeps_the_audit_trail(client, app, neto, auth):
    done = await installed_then_revoked(client, neto, auth, app)
    before: Install = done["before"]
    after = await row(app)
    assert after.secret_sealed is None
    assert after.user_sealed is None and after.billing_sealed is None, "profile still stored"
    # What identifies the store and what happened to it stays.
    assert (after.store_id, after.store_domain, after.auth_method) == (
        before.store_id, before.store_domain, before.auth_method,
    )  # fmt: skip
    assert after.installed_at == before.installed_at and after.revoked_at is not None
    assert after.token_fingerprint == fingerprint(done["token"]) == before.token_fingerprint
    shown = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
    for body in (done["answer"], shown.json()):
        assert body["status"] == "revoked"
        assert body["user"] is None and body["billing_address"] is None, body
        assert body["token_fingerprint"] == before.token_fingerprint
        assert body["secret_readable"] is True
        assert "Merchant" not in str(body) and "Sample St" not in str(body)


async def test_a_reinstall_after_the_revoke_brings_a_fresh_profile(client, app, neto, auth):
    await installed_then_revoked(client, neto, auth, app)
    await install_store(client, neto, DOMAIN, store_id=STORE)
    shown = (await client.get(f"/installs/{STORE}", headers=auth("installs:read"))).json()
    assert shown["status"] == "active" and shown["user"]["email"] == f"owner@{DOMAIN}"


async def quiet_jobs(app: Any) -> None:
    """The app's background jobs stopped (a test's own ticks are then the only ones), once
    it is seen that the app runs the retention job: always, whatever the retentions."""
    assert [j for j in app.state.services.jobs if isinstance(j, retention.Retention)]
    for job in app.state.services.jobs:
        await job.stop()


async def retention_tick(app: Any) -> None:
    """One tick of a retention job like the app's own (which is stopped)."""
    services = app.state.services
    job = retention.Retention(
        services.sessionmaker, [], profiles=services.installs.forget_revoked_profiles
    )
    assert await job.lease.hold()
    try:
        await job.tick()
    finally:
        await job.lease.release()


async def test_a_profile_an_older_replica_left_is_destroyed_by_the_retention_job(
    app_factory, settings_factory, neto, auth
):
    # Every retention off: the job still runs, for the profiles.
    app = await app_factory(settings_factory(audit_retention_days=0, event_retention_days=0))
    await quiet_jobs(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        await install_store(client, neto, DOMAIN, store_id=STORE)
        await install_store(client, neto, "live.example.com", store_id="N2002")
    # What a replica of the previous version does on revoke: the secret only.
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(Install)
            .where(Install.store_id == STORE)  # type: ignore[arg-type]
            .values(status="revoked", secret_sealed=None, revoked_at=utcnow())
        )
    series = metrics.PRUNED.labels(retention.PROFILES)
    counted = series._value.get()
    await retention_tick(app)
    gone = await row(app)
    assert gone.user_sealed is None and gone.billing_sealed is None
    assert gone.store_domain == DOMAIN and gone.token_fingerprint is not None
    live = await row(app, "N2002")
    assert live.user_sealed and live.billing_sealed, "an active install's profile was touched"
    assert series._value.get() == counted + 1


async def test_profiles_are_destroyed_in_batches(app_factory, settings_factory, neto, auth):
    app = await app_factory(settings_factory())
    await quiet_jobs(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        for n in range(5):
            await install_store(client, neto, f"s{n}.example.com", store_id=f"N{n}")
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(update(Install).values(status="revoked", secret_sealed=None))
    cleared = await app.state.services.installs.forget_revoked_profiles(
        batch_size=2, pause_seconds=0
    )
    assert cleared == 5
    for n in range(5):
        assert (await row(app, f"N{n}")).user_sealed is None
    assert await app.state.services.installs.forget_revoked_profiles(batch_size=2) == 0


# -- the migration: profiles of installs revoked before this version -----------------------

MIGRATION = "f3a4b5c6d013"
ROWS = 12_001  # more than two of the migration's batches


def _migration_url(database_url: str, tmp_path: Any) -> str:
    if database_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path}/profiles.db"
    url = database_url.rsplit("/", 1)[0] + "/" + database_url.rsplit("/", 1)[1] + "_profiles"
    asyncio.run(recreate_database(database_url, url.rsplit("/", 1)[1]))
    return url


def test_the_migration_destroys_the_profiles_of_revoked_rows_only(database_url, tmp_path):
    url = _migration_url(database_url, tmp_path)
    before_it = ScriptDirectory.from_config(alembic_config(url)).get_revision(MIGRATION)
    command.upgrade(alembic_config(url), before_it.down_revision)
    asyncio.run(_execute(url, [
        # Many revoked rows with a profile, as the previous version left them.
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows) "
        "INSERT INTO installs (store_id, store_domain, auth_method, status, user_sealed, "
        "billing_sealed, token_fingerprint, installed_at, updated_at, revoked_at, change_seq) "
        "SELECT 'R' || CAST(i AS TEXT), 'r.example.com', 'oauth', 'revoked', 'u-sealed', "
        "'b-sealed', 'sha256:r', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, i "
        "FROM n",
        "INSERT INTO installs (store_id, store_domain, auth_method, status, secret_sealed, "
        "user_sealed, billing_sealed, token_fingerprint, installed_at, updated_at, change_seq) "
        "VALUES ('A1', 'a.example.com', 'oauth', 'active', 's', 'u-sealed', 'b-sealed', "
        "'sha256:a', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0), ('Q1', 'q.example.com', "
        "'api_key', 'reauth_required', 's', 'u-sealed', NULL, 'sha256:q', CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP, 0)",
    ], {"rows": ROWS}))  # fmt: skip
    before = asyncio.run(_rows(url))
    command.upgrade(alembic_config(url), MIGRATION)
    after = asyncio.run(_rows(url))
    revoked = [r for r in after.values() if r["status"] == "revoked"]
    assert len(revoked) == ROWS
    assert all(r["user_sealed"] is None and r["billing_sealed"] is None for r in revoked)
    for store_id, was in before.items():  # nothing else changed, on any row
        now_row = after[store_id]
        if was["status"] == "revoked":
            was = {**was, "user_sealed": None, "billing_sealed": None}
        assert now_row == was, store_id
    assert after["A1"]["user_sealed"] == "u-sealed" and after["Q1"]["user_sealed"] == "u-sealed"
    command.upgrade(alembic_config(url), MIGRATION)  # a rerun finds nothing to do
    assert asyncio.run(_rows(url)) == after


async def _execute(url: str, statements: list[str], params: dict[str, Any]) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for statement in statements:
            bound = {k: v for k, v in params.items() if f":{k}" in statement}
            await conn.execute(text(statement), bound)
    await engine.dispose()


async def _rows(url: str) -> dict[str, dict[str, Any]]:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        result = await conn.execute(text(
            "SELECT store_id, store_domain, auth_method, status, secret_sealed, user_sealed, "
            "billing_sealed, token_fingerprint, installed_at, updated_at, revoked_at, "
            "change_seq FROM installs"
        ))  # fmt: skip
        rows = {r.store_id: dict(r._mapping) for r in result}
    await engine.dispose()
    return rows
