"""Installs: the queries and state changes of the `installs` table.

Secrets enter and leave through `seal_*`/`open_*` only, bound to the row's store id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlmodel import col

from service.db import utcnow
from service.errors import StoreNotFound, StoreSecretUnreadable
from service.models import AuthMethod, Install, InstallStatus
from service.security.crypto import Context, KeyRing, SealError

log = logging.getLogger("broker.stores")

# The installs table for Core statements on the hot paths.
INSTALLS: Table = Install.__table__  # type: ignore[attr-defined]
SEALED_COLUMNS = ("secret_sealed", "user_sealed", "billing_sealed")
# How stale an install's last-used time may be (it is for operators, not for access).


def fingerprint(secret: str) -> str:
    """Identifies a token without revealing it: operators compare, nobody can reverse."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def _ctx(store_id: str, column: str) -> Context:
    return Context("installs", column, store_id)


def _seal_json(keyring: KeyRing, store_id: str, column: str, value: Any) -> str | None:
    if value is None:
        return None
    return keyring.seal(json.dumps(value, separators=(",", ":")).encode(), _ctx(store_id, column))


def _open_json(keyring: KeyRing, store_id: str, column: str, sealed: str | None) -> Any:
    """Open a sealed column, or raise StoreSecretUnreadable after telling operators loudly.

    A failure here is never the caller's fault and never transient: the row was tampered
    with, a ciphertext was copied from another store's row, or its key is not configured.
    """
    if sealed is None:
        return None
    try:
        return json.loads(keyring.open(sealed, _ctx(store_id, column)))
    except SealError as exc:
        log.error(
            "a sealed column cannot be opened: tampered with, copied from another row, or "
            "sealed under a key that is not configured",
            extra={"fields": {"store_id": store_id, "column": column, "reason": str(exc)}},
        )
        raise StoreSecretUnreadable() from None


def sealed_values(
    keyring: KeyRing,
    store_id: str,
    *,
    secret: dict[str, Any],
    user: dict[str, Any] | None,
    billing: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "secret_sealed": _seal_json(keyring, store_id, "secret_sealed", secret),
        "user_sealed": _seal_json(keyring, store_id, "user_sealed", user),
        "billing_sealed": _seal_json(keyring, store_id, "billing_sealed", billing),
        "key_id": keyring.primary,
    }


def reseal(keyring: KeyRing, store_id: str, column: str, sealed: str | None) -> str | None:
    """The same plaintext sealed again under the primary key (key rotation)."""
    if sealed is None:
        return None
    ctx = _ctx(store_id, column)
    return keyring.seal(keyring.open(sealed, ctx), ctx)


# Header names by auth method: (who, secret).
_HEADER_NAMES = {
    AuthMethod.oauth.value: ("X_ACCESS_KEY", "X_SECRET_KEY"),
    AuthMethod.api_key.value: ("NETOAPI_USERNAME", "NETOAPI_KEY"),
}


@dataclass(frozen=True, slots=True, repr=False)
class StoreCredentials:
    """What a bundle or an invoke needs, opened. The repr names no secret.

    Kept lean (one is cached per store): the two header values, not a dict of headers,
    and the row's updated_at so the change feed can tell a stale copy from a fresh one.
    """

    store_id: str
    store_domain: str
    auth_method: str
    status: str
    updated_at: datetime
    who: str | None  # the OAuth client id, or the API-key username
    secret: str | None  # the access token or API key; None once revoked

    @property
    def headers(self) -> dict[str, str]:
        if self.secret is None:
            return {}
        who, secret = _HEADER_NAMES[self.auth_method]
        return {who: self.who or "", secret: self.secret}

    def __repr__(self) -> str:
        return f"StoreCredentials(store_id={self.store_id!r}, status={self.status!r})"


def _header_safe(value: str) -> bool:
    return all(" " <= ch <= "~" for ch in value)  # printable ASCII, as registration requires


def open_credentials(keyring: KeyRing, install: Install, client_id: str | None) -> StoreCredentials:
    who = secret = None
    if install.secret_sealed is not None:
        opened = _open_json(keyring, install.store_id, "secret_sealed", install.secret_sealed)
        if install.auth_method == AuthMethod.oauth:
            who, secret = client_id, opened["access_token"]
        else:
            who, secret = opened["username"], opened["api_key"]
        if not all(_header_safe(value) for value in (who, secret) if value is not None):
            # Registration refuses such values; one in the database was put there around
            # the broker. Used, it would split a header upstream or in a caller's bundle.
            log.error(
                "a sealed secret opens to a value that is not a safe header (control or "
                "non-ASCII characters): refusing to use it",
                extra={"fields": {"store_id": install.store_id, "column": "secret_sealed"}},
            )
            raise StoreSecretUnreadable()
    return StoreCredentials(
        store_id=install.store_id,
        store_domain=install.store_domain,
        # Interned: a hundred thousand cached copies of "active" cost nothing.
        auth_method=sys.intern(install.auth_method),
        status=sys.intern(install.status),
        updated_at=install.updated_at,
        who=who,
        secret=secret,
    )


@dataclass(frozen=True, slots=True)
class Profile:
    """What operators see of the sealed columns: user and billing address, and whether
    every sealed column still opens (False means tampered with or copied, see the log)."""

    user: Any
    billing: Any
    readable: bool


def open_profile(keyring: KeyRing, install: Install) -> Profile:
    """The merchant's user info and billing address, for operators. Also opens the secret
    (and drops it at once) so an unreadable row shows up in GET /installs/{store_id}."""
    opened: dict[str, Any] = {}
    readable = True
    for column in SEALED_COLUMNS:
        try:
            opened[column] = _open_json(keyring, install.store_id, column, getattr(install, column))
        except StoreSecretUnreadable:
            readable = False
    return Profile(opened.get("user_sealed"), opened.get("billing_sealed"), readable)


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
        "status": InstallStatus.active.value,
        "scope": scope,
        "timezone": timezone,
        "token_fingerprint": fingerprint(token),
        "installed_at": now,
        "updated_at": now,
        "revoked_at": None,
        **sealed_values(keyring, store_id, secret=secret, user=user, billing=billing),
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
) -> bool:
    """Store or replace the install keyed by store id, active. True if it already existed.

    An atomic INSERT .. ON CONFLICT DO UPDATE, so concurrent (re)installs of one store on
    several replicas cannot collide; a reinstall keeps the id and first install time.
    """
    existed = await get(session, store_id) is not None
    values = _active_row(
        keyring,
        store_id=store_id,
        store_domain=store_domain,
        auth_method=auth_method.value,
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
    return existed


def credentials_fingerprint(creds: StoreCredentials) -> str | None:
    """The fingerprint of the token or API key these credentials carry."""
    return fingerprint(creds.secret) if creds.secret else None


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
        .values(status=status.value, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


async def revoke(session: AsyncSession, store_id: str) -> Install:
    """Destroy the sealed secret and mark the install revoked."""
    install = await require(session, store_id)
    now = utcnow()
    install.status = InstallStatus.revoked.value
    install.secret_sealed = None
    install.token_fingerprint = None
    install.revoked_at = now
    install.updated_at = now
    session.add(install)
    await session.flush()
    return install


async def active_page(session: AsyncSession, *, after: str, limit: int) -> list[Install]:
    """Active installs with store ids after `after`, in id order (the caches' preload)."""
    stmt = (
        select(Install)
        .where(col(Install.store_id) > after, col(Install.status) == InstallStatus.active.value)
        .order_by(col(Install.store_id))
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def changed_since(session: AsyncSession, since: datetime) -> list[tuple[str, datetime]]:
    """(store id, updated_at) of installs changed at or after `since`: the caches' change
    feed. Core select of two columns: after a mass change this returns many rows."""
    table = INSTALLS
    result = await session.execute(
        select(table.c.store_id, table.c.updated_at).where(table.c.updated_at >= since)
    )
    return [(row[0], row[1]) for row in result]


async def touch_last_used(conn: AsyncConnection, store_ids: list[str], at: datetime) -> set[str]:
    """Stamp the stores' last use; returns those not revoked. The row write waits for a
    concurrent revoke of the same row, so the answer is the committed truth."""
    table = INSTALLS  # Core, not the ORM's bulk-update path: this runs per batch
    result = await conn.execute(
        update(table)
        .where(
            table.c.store_id.in_(store_ids),
            table.c.status != InstallStatus.revoked.value,
        )
        .values(last_used_at=at)
        .returning(table.c.store_id)
    )
    return set(result.scalars())


async def page(
    session: AsyncSession,
    *,
    status: str | None,
    q: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Install]:
    """Newest first by (installed_at, store_id): a keyset that new installs cannot shift
    (a reinstall keeps its first install time, so it does not move either)."""
    stmt = select(Install)
    if status:
        stmt = stmt.where(col(Install.status) == status)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # ILIKE (lower() LIKE lower() on SQLite): "n1001" finds "N1001" on both backends.
        stmt = stmt.where(
            or_(
                col(Install.store_id).ilike(pattern, escape="\\"),
                col(Install.store_domain).ilike(pattern, escape="\\"),
            )
        )
    if after is not None:
        at, sid = after
        stmt = stmt.where(
            or_(
                col(Install.installed_at) < at,
                and_(col(Install.installed_at) == at, col(Install.store_id) < sid),
            )
        )
    stmt = stmt.order_by(col(Install.installed_at).desc(), col(Install.store_id).desc())
    return list((await session.execute(stmt.limit(limit))).scalars())


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    """Installs per status, every status present (zero included): one GROUP BY."""
    stmt = select(col(Install.status), func.count()).group_by(col(Install.status))
    counts = {status.value: 0 for status in InstallStatus}
    for status, count in await session.execute(stmt):
        counts[status] = count
    return counts


async def insert_many(
    session: AsyncSession, keyring: KeyRing, installs: list[dict[str, Any]]
) -> None:
    """Bulk-create installs (benchmarks, imports): each dict has store_id, store_domain,
    auth_method, secret, and optionally user/billing; sealed exactly like `upsert`."""
    now = utcnow()
    rows = [
        _active_row(
            keyring,
            store_id=item["store_id"],
            store_domain=item["store_domain"],
            auth_method=item["auth_method"],
            secret=item["secret"],
            scope=item.get("scope"),
            timezone=item.get("timezone"),
            user=item.get("user"),
            billing=item.get("billing"),
            now=now,
        )
        for item in installs
    ]
    await session.execute(insert(Install), rows)
