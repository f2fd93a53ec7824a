"""Reading the event outbox, and pruning it by age."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.events.models import Event


async def after(
    session: AsyncSession, after_seq: int, limit: int, stores: frozenset[str] | None = None
) -> list[Event]:
    """Events past `after_seq`, in commit order (`seq` is assigned in commit order), that a
    caller with the `stores` claim `stores` may read: without the claim every event; with
    `["*"]` every store's; otherwise only those stores'. An event of no store (empty
    `store_id`) is only for callers without the claim: a limited token sees nothing that
    is not about one of its stores."""
    stmt = select(Event).where(col(Event.seq) > after_seq)
    if stores is not None:
        if "*" in stores:
            stmt = stmt.where(col(Event.store_id) != "")
        else:
            stmt = stmt.where(col(Event.store_id).in_(sorted(stores)))
    stmt = stmt.order_by(col(Event.seq)).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def last_seq(session: AsyncSession) -> int:
    seq = await session.execute(select(col(Event.seq)).order_by(col(Event.seq).desc()).limit(1))
    return int(seq.scalar_one_or_none() or 0)


async def get_many(session: AsyncSession, seqs: list[int]) -> dict[int, Event]:
    rows = (await session.execute(select(Event).where(col(Event.seq).in_(seqs)))).scalars()
    return {row.seq: row for row in rows if row.seq is not None}
