"""A store's budget as every replica sees it, for operators: what the broker allows itself
for the store now (the configured budget, or what Neto's last 429 taught and how far it
has grown back since) and when Neto last answered 429. Read from `store_pauses` with the
database's clock, so any replica answers the same, one that never called the store too."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.neto.limits import probed
from service.replicas.heartbeat import database_clock
from service.replicas.models import StorePause


@dataclass(frozen=True, slots=True)
class StoreBudget:
    per_minute: float  # all replicas together
    learned: bool
    last_rate_limited_at: datetime | None
    paused_until: datetime | None


async def store_budget(session: AsyncSession, store_id: str, configured: int) -> StoreBudget:
    row = (
        await session.execute(
            select(
                col(StorePause.seconds),
                col(StorePause.per_minute),
                col(StorePause.at),
                database_clock(session),
            ).where(col(StorePause.store_id) == store_id)
        )
    ).first()
    if row is None:  # never paused
        return StoreBudget(float(configured), False, None, None)
    seconds, per_minute, at, now = row
    if at is None:  # paused by an older release, which says nothing of when
        return StoreBudget(float(configured), False, None, None)
    began = datetime.fromtimestamp(float(at), UTC)
    until = began + timedelta(seconds=seconds)
    rate = float(configured)
    if per_minute is not None:
        rate = probed(per_minute, now - at - seconds, configured)
    return StoreBudget(
        per_minute=round(rate, 1),
        learned=rate < configured,
        last_rate_limited_at=began,
        paused_until=until if now < at + seconds else None,
    )
