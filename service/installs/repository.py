"""The queries and writes of the `installs` table. Only the install service
(`service.py`) calls the writes; values are sealed by `sealing.py` before they get here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlmodel import col

from service.db import utcnow
from service.errors import StoreNotFound
from service.installs.models import AuthMethod, Install, InstallStatus, next_change_seq
from service.installs.sealing import Binding, fingerprint, sealed_values
from service.neto.apps import DEFAULT_APP
from service.security.crypto import KeyRing

# The installs table for Core statements on the hot paths.
INSTALLS: Table = Install.__table__  # type: ignore[attr-defined]


async def get(session: AsyncSession, store_id: str) -> Install | None:
    result = await session.execute(
        select(Install)
        .where(col(Install.store_id) == store_id)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def require(session: AsyncSession, store_id: str) -> Install:
    install = await get(session, store_id)
    if install is None:
        raise StoreNotFound()
    return install


def _active_row(
    keyring: KeyRing,
    *,
    store_id: str,
    store_domain: str,
    auth_method: str,
    app: str,
    secret: dict[str, Any],
    scope: str | None,
    timezone: str | None,
    user: dict[str, Any] | None,
    billing: dict[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The columns of an active install, its secrets sealed to its row; the fingerprint
    is taken from the secret itself (the access token, or the API key)."""
    token = secret.get("access_token") or secret.get("api_key") or ""
    return {
        "store_id": store_id,
        "store_domain": store_domain,
        "auth_method": auth_method,
        "app": app,
        "status": InstallStatus.active.value,
        "scope": scope,
        "timezone": timezone,
        "token_fingerprint": fingerprint(token),
        "installed_at": now,
        "updated_at": now,
        "change_seq": next_change_seq(),
        "revoked_at": None,
        **sealed_values(
            keyring,
            Binding(store_id, store_domain, auth_method),
            secret=secret,
            user=user,
            billing=billing,
        ),
    }


async def upsert(
    session: AsyncSession,
    keyring: KeyRing,
    *,
    store_id: str,
    store_domain: str,
    auth_method: AuthMethod,
    secret: dict[str, Any],
    scope: str | None = None,
    timezone: str | None = None,
    user: dict[str, Any] | None = None,
    billing: dict[str, Any] | None = None,
    now: datetime | None = None,
    app: str = DEFAULT_APP,
) -> str | None:
    """Store or replace the install keyed by store id, active, under the add-on `app`.
    Returns the app it belonged to if it already existed (None: it is new).

    An atomic INSERT .. ON CONFLICT DO UPDATE, so concurrent (re)installs of one store on
    several replicas cannot collide; a reinstall keeps the id and first install time.
    """
    before = await get(session, store_id)
    values = _active_row(
        keyring,
        store_id=store_id,
        store_domain=store_domain,
        auth_method=auth_method.value,
        app=app,
        secret=secret,
        scope=scope,
        timezone=timezone,
        user=user,
        billing=billing,
        now=now or utcnow(),
    )
    dialect = session.get_bind().dialect.name
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = dialect_insert(Install).values(**values)
    update_cols = {k: stmt.excluded[k] for k in values if k not in ("store_id", "installed_at")}
    await session.execute(stmt.on_conflict_do_update(index_elements=["store_id"], set_=update_cols))
    return None if before is None else before.app


async def set_status(
    session: AsyncSession,
    store_id: str,
    status: InstallStatus,
    *,
    token_fingerprint: str | None = None,
) -> bool:
    """Change a live install's status; True if it changed (a revoked install stays so).

    With `token_fingerprint`, only while the install still holds that token: what Neto
    said about a token says nothing about the one a reinstall has put in its place."""
    guard = (
        [] if token_fingerprint is None else [col(Install.token_fingerprint) == token_fingerprint]
    )
    result = await session.execute(
        update(Install)
        .where(
            col(Install.store_id) == store_id,
            col(Install.status) != InstallStatus.revoked.value,
            col(Install.status) != status.value,
            *guard,
        )
        .values(status=status.value, updated_at=utcnow(), change_seq=next_change_seq())
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


async def revoke(session: AsyncSession, store_id: str, *, keep_profile: bool = False) -> Install:
    """Destroy the sealed secret and the merchant's profile (user and billing address;
    with `keep_profile`, `forget_revoked_profiles` destroys it later) and mark the install
    revoked. The row keeps what the audit trail needs: store id, domain, auth method,
    times and the token's fingerprint (which identifies it and cannot be reversed)."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": InstallStatus.revoked.value,
        "secret_sealed": None,
        "revoked_at": now,
        "updated_at": now,
        "change_seq": next_change_seq(),
    }
    if not keep_profile:
        values.update(user_sealed=None, billing_sealed=None)
    result = await session.execute(
        update(INSTALLS).where(INSTALLS.c.store_id == store_id).values(**values)
    )
    if not getattr(result, "rowcount", 0):
        raise StoreNotFound()
    return await require(session, store_id)


async def forget_revoked_profiles(
    session: AsyncSession, revoked_before: datetime, limit: int
) -> int:
    """Destroy the profiles of up to `limit` installs revoked before `revoked_before` (or
    at an unknown time); how many. A row reinstalled meanwhile is not revoked any more,
    and is left alone by the same statement."""
    c = INSTALLS.c
    due = (
        c.status == InstallStatus.revoked.value,
        or_(c.revoked_at.is_(None), c.revoked_at < revoked_before),
        or_(c.user_sealed.is_not(None), c.billing_sealed.is_not(None)),
    )
    picked = select(c.store_id).where(*due).limit(limit).scalar_subquery()
    result = await session.execute(
        update(INSTALLS)
        .where(c.store_id.in_(picked), *due)
        .values(user_sealed=None, billing_sealed=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# The last-use stamp: never backwards, never on a revoked install. A plain read of the
# install row (no row lock: bundle batches share-lock installs rows in no particular
# order, and a stamp waiting for one could deadlock with them); usage rows are upserted
# in store order, so two replicas' stamps never wait on each other in a cycle either.
_STAMP = f"""INSERT INTO install_usage (store_id, last_used_at)
SELECT installs.store_id, {{at}} FROM installs
WHERE installs.store_id = :sid AND installs.status <> '{InstallStatus.revoked.value}'
ON CONFLICT (store_id) DO UPDATE SET last_used_at = excluded.last_used_at
WHERE install_usage.last_used_at < excluded.last_used_at
"""  # noqa: S608 (a constant)
# SQLite stores the time as its text (`db.UTCDateTime`), which sorts; PostgreSQL needs the
# parameter's type, which a SELECT list does not give it.
STAMP_SQLITE = _STAMP.format(at=":at")
STAMP_POSTGRES = text(_STAMP.format(at="CAST(:at AS TIMESTAMP WITH TIME ZONE)"))


async def stamp_last_used(conn: AsyncConnection, used: dict[str, datetime]) -> None:
    """Stamp each store's last use (bundles, in the background) on PostgreSQL; SQLite's
    stamp runs on the audit batch's own connection (access/audit_batch.py)."""
    await conn.execute(STAMP_POSTGRES, [{"sid": sid, "at": used[sid]} for sid in sorted(used)])


async def insert_many(
    session: AsyncSession, keyring: KeyRing, installs: list[dict[str, Any]]
) -> None:
    """Bulk-create installs (benchmarks, imports): each dict has store_id, store_domain,
    auth_method, secret, and optionally app/user/billing; sealed exactly like `upsert`."""
    now = utcnow()
    rows = [
        _active_row(
            keyring,
            store_id=item["store_id"],
            store_domain=item["store_domain"],
            auth_method=item["auth_method"],
            app=item.get("app", DEFAULT_APP),
            secret=item["secret"],
            scope=item.get("scope"),
            timezone=item.get("timezone"),
            user=item.get("user"),
            billing=item.get("billing"),
            now=now,
        )
        for item in installs
    ]
    for row in rows:
        del row["change_seq"]  # numbered by the database, row by row, in the statement
    await session.execute(insert(INSTALLS).values(change_seq=next_change_seq()), rows)


async def stamp_swept(session: AsyncSession, store_ids: list[str], at: datetime) -> None:
    """Record that the health sweep took these installs at `at`. Sweep bookkeeping, not
    a change to the install (its status, `updated_at` and the change feed stay as they
    are), so it is written here directly rather than through the install service."""
    await session.execute(
        update(INSTALLS).where(INSTALLS.c.store_id.in_(store_ids)).values(last_swept_at=at)
    )
