"""Each store's notification URL token: issued by the broker (Neto lets the merchant
choose the URL but not the `NETOAPI_KEY` it sends, so the secret lives in the URL),
kept as its SHA-256 only, compared in constant time, replaced by a rotation, dead once
the install is revoked."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.audit.writer import record
from service.db import utcnow
from service.errors import StoreRevoked
from service.inbound.models import NotifyToken
from service.installs import repository
from service.installs.models import Install, InstallStatus

PREFIX = "nt_"
# A token is PREFIX + 43 url-safe characters; anything much longer is not one.
MAX_TOKEN_CHARS = 128
# Compared with when the store has no token, so an unknown store costs the same.
_NO_HASH = "0" * 64


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def url_of(public_url: str, store_id: str, token: str) -> str:
    return f"{public_url}/neto-notify/{store_id}/{token}"


class Verdict(Enum):
    OK = "ok"
    WRONG = "wrong"  # no token, another one, or no such store: 401
    REVOKED = "revoked"  # the right token of a revoked install: 410


async def check_many(
    session: AsyncSession, items: Sequence[tuple[str, str | None]]
) -> list[Verdict]:
    """Whether each (store id, token) opens the store's URL, in one query. Only the holder
    of the right token learns that the store was revoked; anyone else gets the same answer
    for every store."""
    stores = _padded(list({store_id for store_id, _ in items}))
    rows = {
        row.store_id: row
        for row in await session.execute(
            select(col(NotifyToken.store_id), col(NotifyToken.token_hash),
                   col(NotifyToken.revoked_at), col(Install.status))
            .join(Install, col(Install.store_id) == col(NotifyToken.store_id), isouter=True)
            .where(col(NotifyToken.store_id).in_(stores))
        )
    }  # fmt: skip
    return [_verdict(rows.get(store_id), token) for store_id, token in items]


def _padded(values: list[str]) -> list[str]:
    """`values` with the last repeated up to a power of two: IN lists of 1 to 100 stores are
    then 8 statements, not 100. PostgreSQL's driver prepares each distinct statement on
    each connection, a round trip: a cold burst's token checks were 50 prepares."""
    size = 1 << max(len(values) - 1, 0).bit_length()
    return values + values[-1:] * (size - len(values))


def _verdict(row: Row[str, str, datetime | None, str] | None, token: str | None) -> Verdict:
    given = digest(token) if token and len(token) <= MAX_TOKEN_CHARS else ""
    expected = row.token_hash if row is not None else _NO_HASH
    if not hmac.compare_digest(given.encode(), expected.encode()) or row is None:
        return Verdict.WRONG
    if row.status is None:  # the install row is gone: nothing to receive for
        return Verdict.WRONG
    if row.revoked_at is not None or row.status == InstallStatus.revoked:
        return Verdict.REVOKED
    return Verdict.OK


@dataclass(frozen=True, slots=True)
class TokenState:
    store_id: str
    issued_at: datetime | None
    issued_by: str | None
    revoked_at: datetime | None

    @property
    def live(self) -> bool:
        return self.issued_at is not None and self.revoked_at is None


async def state(session: AsyncSession, store_id: str) -> TokenState:
    """The store's URL as operators see it (never the token); 404 for no install."""
    await repository.require(session, store_id)
    row = (
        await session.execute(select(NotifyToken).where(col(NotifyToken.store_id) == store_id))
    ).scalar_one_or_none()
    if row is None:
        return TokenState(store_id, None, None, None)
    return TokenState(store_id, row.issued_at, row.issued_by, row.revoked_at)


async def issue(
    session: AsyncSession, store_id: str, *, actor: str, request_id: str | None = None
) -> tuple[TokenState, str]:
    """A new token for the store's URL, in clear this once; the previous one (if any)
    stops working when this commits. Audited (`notifications.token_issued`)."""
    install = await repository.require(session, store_id)
    if install.status == InstallStatus.revoked:
        raise StoreRevoked("The install was revoked: a URL for it would receive nothing.")
    token, now = new_token(), utcnow()
    stmt = select(NotifyToken).where(col(NotifyToken.store_id) == store_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # two rotations at once: one after the other
    row = (await session.execute(stmt)).scalar_one_or_none()
    replaced = row is not None
    if row is None:
        row = NotifyToken(store_id=store_id, token_hash=digest(token), issued_at=now,
                          issued_by=actor)  # fmt: skip
        session.add(row)
    else:
        row.token_hash, row.issued_at, row.issued_by, row.revoked_at = (
            digest(token),
            now,
            actor,
            None,
        )
    await session.flush()
    record(session, "notifications.token_issued", actor=actor, store_id=store_id,
           request_id=request_id, replaced=replaced)  # fmt: skip
    return TokenState(store_id, now, actor, None), token


async def kill(session: AsyncSession, store_id: str) -> None:
    """The install is being revoked (in its transaction): its URL answers 410 from now
    on, and stays dead after a reinstall until an operator issues a new one."""
    await session.execute(
        update(NotifyToken)
        .where(col(NotifyToken.store_id) == store_id, col(NotifyToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
