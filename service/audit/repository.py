"""Reading the audit log."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.audit.models import AuditEvent


async def page(
    session: AsyncSession,
    *,
    store_id: str | None,
    actor: str | None,
    event: str | None,
    before_id: int | None,
    limit: int,
) -> list[AuditEvent]:
    """Newest first by id: ids only grow, so events written while paging never shift a
    page (they sort before the cursor)."""
    stmt = select(AuditEvent)
    if store_id is not None:
        stmt = stmt.where(col(AuditEvent.store_id) == store_id)
    if actor is not None:
        stmt = stmt.where(col(AuditEvent.actor) == actor)
    if event is not None:
        stmt = stmt.where(col(AuditEvent.event) == event)
    if before_id is not None:
        stmt = stmt.where(col(AuditEvent.id) < before_id)
    stmt = stmt.order_by(col(AuditEvent.id).desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())
