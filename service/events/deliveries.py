"""Queries of the delivery worker: claim due deliveries, record each attempt's outcome.

A claim moves the delivery's `next_attempt_at` past the attempt's longest duration (a
lease) and counts the attempt, in a short transaction: on PostgreSQL the candidates are
locked `FOR UPDATE SKIP LOCKED`, so two replicas never claim the same one, and the
`attempts` guard makes the claim safe on SQLite too. No transaction is open while the
receiver is called; a replica that dies mid-attempt leaves a lease that simply runs out.

Order per store and subscription: a delivery is due only when no earlier delivery of the
same store to the same subscription is still pending.

Every time a delivery is compared with or scheduled by (due, lease, retry, the retry
window) is the database's clock (`database_now`), as the revoke fence orders changes by
the database's numbers: a replica whose own clock ran behind by more than the lease would
otherwise take a delivery that another replica leased and is still sending (a duplicate,
and out of order with the store's next event), and one ahead would hold deliveries back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, func, insert, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from service.db import utcnow
from service.events.models import Webhook, WebhookAttempt, WebhookDelivery

D = WebhookDelivery


@dataclass(frozen=True, slots=True)
class Claim:
    delivery_id: int
    webhook_id: str
    seq: int
    attempt: int
    first_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def database_now(session: AsyncSession) -> datetime:
    """The database's clock, the one every replica's delivery times are compared with.
    SQLite runs inside this process: its clock is this machine's, which every replica
    sharing the file shares."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    # clock_timestamp(), not now(): the time of this statement, not of the transaction's
    # start.
    value: datetime = (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()
    return value.astimezone(UTC)


# Built once: an alias made per claim configured the mappers anew each time (a tenth of
# the worker's CPU in a burst).
_EARLIER = aliased(WebhookDelivery)


def _due(now: datetime) -> list[ColumnElement[bool]]:
    earlier = _EARLIER
    held_back = exists().where(
        col(earlier.webhook_id) == col(D.webhook_id),
        col(earlier.store_id) == col(D.store_id),
        col(earlier.state) == "pending",
        col(earlier.seq) < col(D.seq),
    )
    active = exists().where(col(Webhook.id) == col(D.webhook_id), col(Webhook.status) == "active")
    return [col(D.state) == "pending", col(D.next_attempt_at) <= now, active, ~held_back]


async def claim(session: AsyncSession, now: datetime, lease: timedelta, limit: int) -> list[Claim]:
    """Take what is due at `now` (the database's clock) for `lease`: one select, one
    update, whatever the batch (a statement each held the one writer of SQLite through
    as many turns of a busy event loop)."""
    stmt = select(col(D.id), col(D.attempts)).where(*_due(now)).order_by(col(D.seq)).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=D, skip_locked=True)
    due = [(row.id, row.attempts) for row in await session.execute(stmt)]
    if not due:
        return []
    # Each row only as it was selected (its attempts unchanged, still pending): on SQLite
    # another process may have claimed it in between.
    taken = await session.execute(
        update(D)
        .where(tuple_(col(D.id), col(D.attempts)).in_(due), col(D.state) == "pending")
        .values(attempts=col(D.attempts) + 1, next_attempt_at=now + lease,
                first_attempt_at=func.coalesce(col(D.first_attempt_at), now))
        .returning(col(D.id), col(D.webhook_id), col(D.seq), col(D.attempts),
                   col(D.first_attempt_at))
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    claims = [Claim(row.id, row.webhook_id, row.seq, row.attempts, row.first_attempt_at)
              for row in taken]  # fmt: skip
    return sorted(claims, key=lambda c: c.seq)


async def next_due(session: AsyncSession) -> datetime | None:
    """When the earliest pending delivery of an active subscription falls due."""
    active = exists().where(col(Webhook.id) == col(D.webhook_id), col(Webhook.status) == "active")
    stmt = select(func.min(D.next_attempt_at)).where(col(D.state) == "pending", active)
    # min() keeps the column's type, so the value comes back as an aware datetime.
    value: datetime | None = (await session.execute(stmt)).scalar_one_or_none()
    return value


async def record_attempts(
    session: AsyncSession, attempts: Sequence[tuple[Claim, str, datetime, Outcome]]
) -> None:
    """Each (claim, event id, when sent, outcome): one insert for all of them."""
    await session.execute(
        insert(WebhookAttempt),
        [
            {"webhook_id": claim.webhook_id, "delivery_id": claim.delivery_id,
             "event_id": event_id, "attempt": claim.attempt, "attempted_at": at,
             "status_code": outcome.status_code, "latency_ms": outcome.latency_ms,
             "error": outcome.error}
            for claim, event_id, at, outcome in attempts
        ],
    )  # fmt: skip


async def delivered(session: AsyncSession, delivery_ids: Sequence[int], at: datetime) -> None:
    if delivery_ids:
        await session.execute(
            update(D).where(col(D.id).in_(delivery_ids)).values(state="delivered", delivered_at=at)
        )


async def dropped(session: AsyncSession, delivery_id: int) -> None:
    """The event is gone (pruned by retention): nothing is left to deliver."""
    await session.execute(update(D).where(col(D.id) == delivery_id).values(state="expired"))


async def retry_at(session: AsyncSession, delivery_id: int, at: datetime) -> None:
    await session.execute(update(D).where(col(D.id) == delivery_id).values(next_attempt_at=at))


async def mark_failing(
    session: AsyncSession, webhook_id: str, delivery_id: int, now: datetime
) -> None:
    """The retry window ran out: the subscription stops until an operator re-enables it;
    its pending deliveries wait for the replay."""
    await session.execute(
        update(Webhook)
        .where(col(Webhook.id) == webhook_id, col(Webhook.status) == "active")
        .values(status="failing", failing_since=now)
    )
    await retry_at(session, delivery_id, now)


async def reenable(session: AsyncSession, webhook_id: str, now: datetime) -> bool:
    """Active again; what it missed is replayed in order, with a fresh retry window."""
    result = await session.execute(
        update(Webhook)
        .where(col(Webhook.id) == webhook_id)
        .values(status="active", failing_since=None)
    )
    await session.execute(
        update(D)
        .where(and_(col(D.webhook_id) == webhook_id, col(D.state) == "pending"))
        .values(next_attempt_at=now, first_attempt_at=None)
    )
    return bool(getattr(result, "rowcount", 0))


async def attempts_page(
    session: AsyncSession, webhook_id: str, before_id: int | None, limit: int
) -> list[WebhookAttempt]:
    """A subscription's attempts, newest first."""
    stmt = select(WebhookAttempt).where(col(WebhookAttempt.webhook_id) == webhook_id)
    if before_id is not None:
        stmt = stmt.where(col(WebhookAttempt.id) < before_id)
    stmt = stmt.order_by(col(WebhookAttempt.id).desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())
