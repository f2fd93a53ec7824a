"""Pending OAuth installs: the `state` a merchant carries to Neto and back.

Only a SHA-256 of the state is stored. A callback *claims* the state, together with a
hash of its code, in a committed conditional UPDATE before it exchanges the code: of any
number of concurrent callbacks, on any number of replicas, exactly one wins. The claim
is *consumed* in the transaction that stores the install, or released when nothing was
stored, so a failure never burns the state (the merchant can approve again), while the
same code is never exchanged twice.

An app-initiated install may carry the app's opaque `app_state`: it is sealed, bound to
the row by its state hash (which the broker derives from a state it generated, so no
caller picks it), and opened only to be echoed on the return redirect.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.db import utcnow
from service.errors import InvalidState, StateExpired
from service.oauth.models import PendingInstall
from service.security.crypto import Context, KeyRing, SealError

log = logging.getLogger("broker.install")

# A claim older than this is abandoned (its request died); the state may be claimed again
# with a different code. Longer than any token exchange can take.
CLAIM_LEASE = timedelta(seconds=120)
# Expired pending installs are deleted this long after they expire (long enough for a
# late callback to hear "expired" rather than "unknown"), so the table holds at most a
# few state lifetimes of rows.
RETENTION = timedelta(minutes=10)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _app_state_ctx(state_hash: str) -> Context:
    return Context("pending_installs", "app_state_sealed", state_hash)


def open_app_state(keyring: KeyRing, row: PendingInstall) -> str | None:
    """The app's state, or None when there is none or it does not open.

    A value that does not open was tampered with, copied from another pending row, or
    sealed under a key removed since: operators hear it at ERROR. The install goes on
    without it (docs/security.md): the app already treats a return without its state as
    one it cannot tie to a session, since the merchant's browser can drop the parameter.
    """
    if row.app_state_sealed is None:
        return None
    try:
        return keyring.open(row.app_state_sealed, _app_state_ctx(row.state_hash)).decode()
    except SealError as exc:
        log.error(
            "a pending install's app_state cannot be opened: tampered with, copied from "
            "another row, or sealed under a key that is not configured; the return "
            "redirect goes without it",
            extra={"fields": {"pending_id": row.id, "reason": str(exc)}},
        )
        return None


async def create(
    session: AsyncSession,
    *,
    store_domain: str,
    return_url: str | None,
    initiated_by: str,
    ttl_seconds: int,
    keyring: KeyRing,
    app_state: str | None = None,
) -> tuple[str, PendingInstall]:
    state = secrets.token_urlsafe(32)  # 256 bits
    state_hash = digest(state)
    now = utcnow()
    pending = PendingInstall(
        state_hash=state_hash,
        store_domain=store_domain,
        return_url=return_url,
        initiated_by=initiated_by,
        app_state_sealed=None
        if app_state is None
        else keyring.seal(app_state.encode(), _app_state_ctx(state_hash)),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    session.add(pending)
    # Housekeeping on the write path keeps the table small without a scheduler.
    await session.execute(
        delete(PendingInstall).where(col(PendingInstall.expires_at) < now - RETENTION)
    )
    await session.flush()
    return state, pending


async def live_count(session: AsyncSession, cap: int, initiated_by: str) -> int:
    """How many unexpired, unused installs `initiated_by` has pending, counted up to
    `cap` (the count stops there, so a full table costs no more than the cap)."""
    live = (
        select(col(PendingInstall.id))
        .where(
            col(PendingInstall.expires_at) > utcnow(),
            col(PendingInstall.consumed_at).is_(None),
            col(PendingInstall.initiated_by) == initiated_by,
        )
        .limit(cap)
        .subquery()
    )
    return int((await session.execute(select(func.count()).select_from(live))).scalar_one())


async def claim(session: AsyncSession, state: str, code: str) -> PendingInstall:
    """Claim the state for this code, or raise InvalidState / StateExpired."""
    now = utcnow()
    state_hash, code_hash = digest(state), digest(code)
    result = await session.execute(
        update(PendingInstall)
        .where(
            col(PendingInstall.state_hash) == state_hash,
            col(PendingInstall.consumed_at).is_(None),
            col(PendingInstall.expires_at) > now,
            or_(
                col(PendingInstall.claimed_at).is_(None),
                col(PendingInstall.claimed_at) < now - CLAIM_LEASE,
            ),
            or_(
                col(PendingInstall.claim_code_hash).is_(None),
                col(PendingInstall.claim_code_hash) != code_hash,
            ),
        )
        .values(claimed_at=now, claim_code_hash=code_hash)
        .execution_options(synchronize_session=False)
    )
    row = (
        await session.execute(
            select(PendingInstall)
            .where(col(PendingInstall.state_hash) == state_hash)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if result.rowcount == 1 and row is not None:  # type: ignore[attr-defined]
        return row
    if row is None:
        raise InvalidState("This install link is unknown. Start the install again from Neto.")
    if row.consumed_at is not None:
        raise InvalidState("This install link was already used. Start the install again.")
    if row.expires_at <= now:
        raise StateExpired("This install link has expired. Start the install again.")
    raise InvalidState(
        "This install is already being completed, or this approval was already used. "
        "Start the install again."
    )


async def release(session: AsyncSession, pending_id: int) -> None:
    """Nothing was stored: let the state be claimed again (with a new code)."""
    await session.execute(
        update(PendingInstall)
        .where(col(PendingInstall.id) == pending_id, col(PendingInstall.consumed_at).is_(None))
        .values(claimed_at=None)
        .execution_options(synchronize_session=False)
    )


async def consume(session: AsyncSession, pending_id: int, store_id: str) -> None:
    await session.execute(
        update(PendingInstall)
        .where(col(PendingInstall.id) == pending_id)
        .values(consumed_at=utcnow(), store_id=store_id)
        .execution_options(synchronize_session=False)
    )
