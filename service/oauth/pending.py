"""Pending OAuth installs: the `state` a merchant carries to Neto and back.

Only a SHA-256 of the state is stored. A callback *claims* the state, together with a
hash of its code, in a committed conditional UPDATE before it exchanges the code: of any
number of concurrent callbacks, on any number of replicas, exactly one wins. The claim
is *consumed* in the transaction that stores the install, or released when nothing was
stored, so a failure never burns the state (the merchant can approve again), while the
same code is never exchanged twice.

Every row carries a sealed *binding* (the `app_state_sealed` column): the app's opaque
`app_state` when it sent one, else nothing, sealed with associated data naming the row's
state hash (which the broker derives from a state it generated, so no caller picks it),
its return URL, store domain, initiator and Neto add-on (`app`; `default` is left out of
the associated data, so rows sealed before add-ons existed still open). A database
writer who changes any of them, removes the binding or copies another row's makes the
callback fail closed before the code is exchanged: the merchant is never sent somewhere
the broker did not check, the code never goes to another add-on's token endpoint, and the
app's state is never echoed to a place it was not sealed for.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.db import utcnow
from service.errors import BadRequest, InvalidState, StateExpired
from service.neto.apps import DEFAULT_APP
from service.oauth.models import PendingInstall
from service.security.callers import RESERVED_SUB
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


# A Neto-initiated (anonymous) row's initiator: `neto:` and a digest of the client's
# address prefix (oauth/throttle.py), so the shares can be counted in the database,
# across replicas, without storing the address itself. Written only by the anonymous
# route; callers cannot take these names (security/callers.py reserves them).
ANONYMOUS_ACTOR = RESERVED_SUB
_ANONYMOUS_PREFIX = ANONYMOUS_ACTOR + ":"


def anonymous_initiator(address_prefix: str) -> str:
    return _ANONYMOUS_PREFIX + digest(address_prefix)[:16]


def is_anonymous(initiated_by: str) -> bool:
    return initiated_by.startswith(_ANONYMOUS_PREFIX)


def actor_of(row: PendingInstall) -> str:
    """Who the audit names for this install: the caller, or `neto` for the anonymous
    route (never the address digest)."""
    return ANONYMOUS_ACTOR if is_anonymous(row.initiated_by) else row.initiated_by


def _binding_ctx(
    state_hash: str, return_url: str | None, store_domain: str, initiated_by: str, app: str
) -> Context:
    bound: tuple[str, ...] = (return_url or "", store_domain, initiated_by)
    if app != DEFAULT_APP:
        # The app decides whose secret exchanges the code: a row moved to another app in
        # the database must not open. `default` adds nothing, as before apps existed.
        bound = (*bound, app)
    return Context("pending_installs", "app_state_sealed", state_hash, bound)


def open_binding(keyring: KeyRing, row: PendingInstall) -> str | None:
    """The app's state (None when it sent none), once the row is proved to be as the
    broker wrote it; otherwise InvalidState, and operators hear it at ERROR.

    A binding that does not open means the row's return URL, store domain or initiator
    was changed, its binding removed or copied from another row, or it was sealed under a
    key removed while the install was in flight (docs/security.md).
    """
    ctx = _binding_ctx(row.state_hash, row.return_url, row.store_domain, row.initiated_by, row.app)
    try:
        if row.app_state_sealed is None:
            raise SealError("the row has no binding")
        value = keyring.open(row.app_state_sealed, ctx).decode()
    except SealError as exc:
        log.error(
            "a pending install does not match its sealed binding: its return URL, store "
            "domain, initiator, app or app_state was changed in the database, or it was sealed "
            "under a key that is not configured; the install is refused",
            extra={"fields": {"pending_id": row.id, "reason": str(exc)}},
        )
        raise InvalidState(
            "This install link cannot be completed. Start the install again from your "
            "Neto control panel."
        ) from None
    return value or None


async def create(
    session: AsyncSession,
    *,
    store_domain: str,
    return_url: str | None,
    initiated_by: str,
    ttl_seconds: int,
    keyring: KeyRing,
    app_state: str | None = None,
    app: str = DEFAULT_APP,
) -> tuple[str, PendingInstall]:
    if app_state == "":
        # The empty binding stands for "no app_state": an empty value could not come back.
        raise BadRequest("app_state must not be empty.")
    state = secrets.token_urlsafe(32)  # 256 bits
    state_hash = digest(state)
    now = utcnow()
    pending = PendingInstall(
        state_hash=state_hash,
        store_domain=store_domain,
        return_url=return_url,
        initiated_by=initiated_by,
        app=app,
        app_state_sealed=keyring.seal(
            (app_state or "").encode(),
            _binding_ctx(state_hash, return_url, store_domain, initiated_by, app),
        ),
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


def _live() -> list[ColumnElement[bool]]:
    return [
        col(PendingInstall.expires_at) > utcnow(),
        col(PendingInstall.consumed_at).is_(None),
    ]


def anonymous() -> ColumnElement[bool]:
    return col(PendingInstall.initiated_by).startswith(_ANONYMOUS_PREFIX, autoescape=True)


def initiated_by(value: str) -> ColumnElement[bool]:
    return col(PendingInstall.initiated_by) == value


def for_domain(store_domain: str) -> ColumnElement[bool]:
    return col(PendingInstall.store_domain) == store_domain


async def live_count(session: AsyncSession, cap: int, *where: ColumnElement[bool]) -> int:
    """How many unexpired, unused installs match `where`, counted up to `cap` (the count
    stops there, so a full table costs no more than the cap)."""
    live = select(col(PendingInstall.id)).where(*_live(), *where).limit(cap).subquery()
    return int((await session.execute(select(func.count()).select_from(live))).scalar_one())


async def largest_anonymous_origin(session: AsyncSession) -> tuple[str, int] | None:
    """The anonymous initiator (address prefix) holding the most live, unclaimed rows."""
    n = func.count().label("n")
    top = (
        select(col(PendingInstall.initiated_by), n)
        .where(*_live(), anonymous(), col(PendingInstall.claimed_at).is_(None))
        .group_by(col(PendingInstall.initiated_by))
        .order_by(n.desc())
        .limit(1)
    )
    row = (await session.execute(top)).first()
    return None if row is None else (str(row[0]), int(row[1]))


async def evict_oldest(session: AsyncSession, *where: ColumnElement[bool]) -> bool:
    """Delete the oldest live row matching `where` that no callback is completing; its
    merchant, if there is one, hears "unknown link" and starts again. False if none."""
    oldest = (
        select(col(PendingInstall.id))
        .where(*_live(), *where, col(PendingInstall.claimed_at).is_(None))
        .order_by(col(PendingInstall.id))
        .limit(1)
    )
    victim = (await session.execute(oldest)).scalar_one_or_none()
    if victim is None:
        return False
    result = await session.execute(
        delete(PendingInstall)
        .where(col(PendingInstall.id) == victim, col(PendingInstall.claimed_at).is_(None))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def claim(
    session: AsyncSession, state: str, code: str, app: str = DEFAULT_APP
) -> PendingInstall:
    """Claim the state for this code on `app`'s callback, or raise InvalidState /
    StateExpired. A state started for another app is refused before it is claimed: its
    code is never exchanged with this app's secret, and stays good for its own callback."""
    now = utcnow()
    state_hash, code_hash = digest(state), digest(code)
    result = await session.execute(
        update(PendingInstall)
        .where(
            col(PendingInstall.state_hash) == state_hash,
            col(PendingInstall.app) == app,
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
    if row.app != app:
        raise InvalidState(
            "This install link belongs to another add-on than the one Neto returned you "
            "for. Start the install again from your Neto control panel."
        )
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
