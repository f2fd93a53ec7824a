"""Read queries over many installs: operators' pages and counts, the caches' preload and
change feed, and the health sweep's picks. One install's reads and every write are in
`repository.py`."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.installs.models import Install, InstallStatus, InstallUsage
from service.installs.repository import INSTALLS


async def active_page(session: AsyncSession, *, after: str, limit: int) -> list[Install]:
    """Active installs with store ids after `after`, in id order (the caches' preload)."""
    stmt = (
        select(Install)
        .where(col(Install.store_id) > after, col(Install.status) == InstallStatus.active.value)
        .order_by(col(Install.store_id))
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def changed_since(session: AsyncSession, after: int) -> list[tuple[str, int]]:
    """(store id, change_seq) of installs whose change number is above `after`: the
    caches' change feed. Core select of two columns: after a mass change this returns
    many rows."""
    table = INSTALLS
    result = await session.execute(
        select(table.c.store_id, table.c.change_seq).where(table.c.change_seq > after)
    )
    return [(row[0], row[1]) for row in result]


async def versions(session: AsyncSession, store_ids: list[str]) -> dict[str, tuple[int, str]]:
    """(change_seq, status) of each of these installs that exists: what the store cache
    compares its copies with to keep them without reading and opening them again."""
    table = INSTALLS
    result = await session.execute(
        select(table.c.store_id, table.c.change_seq, table.c.status).where(
            table.c.store_id.in_(store_ids)
        )
    )
    return {row[0]: (row[1], row[2]) for row in result}


async def last_change(session: AsyncSession) -> int:
    """The highest change number committed so far (0 on an empty table)."""
    result = await session.execute(select(func.coalesce(func.max(INSTALLS.c.change_seq), 0)))
    return int(result.scalar_one())


async def page(
    session: AsyncSession,
    *,
    status: str | None,
    q: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
    apps: Collection[str] | None = None,
) -> list[Install]:
    """Newest first by (installed_at, store_id): a keyset that new installs cannot shift
    (a reinstall keeps its first install time, so it does not move either). `apps`:
    only installs of these add-ons (None: every add-on)."""
    stmt = select(Install)
    if status:
        stmt = stmt.where(col(Install.status) == status)
    if apps is not None:
        stmt = stmt.where(col(Install.app).in_(sorted(apps)))
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


async def due_for_sweep(
    session: AsyncSession, *, swept_before: datetime, limit: int
) -> list[tuple[str, datetime | None, datetime]]:
    """(store id, last swept, installed) of active installs the health sweep should
    check next: never swept first, then those swept longest ago (before `swept_before`).
    Two index range reads on (status, last_swept_at) instead of one NULLS FIRST sort,
    which PostgreSQL's ascending index cannot serve."""
    table = INSTALLS
    columns = (table.c.store_id, table.c.last_swept_at, table.c.installed_at)
    active = table.c.status == InstallStatus.active.value
    never = select(*columns).where(active, table.c.last_swept_at.is_(None)).limit(limit)
    rows = [(r[0], r[1], r[2]) for r in await session.execute(never)]
    if len(rows) < limit:
        oldest = (
            select(*columns)
            .where(active, table.c.last_swept_at < swept_before)
            .order_by(table.c.last_swept_at)
            .limit(limit - len(rows))
        )
        rows += [(r[0], r[1], r[2]) for r in await session.execute(oldest)]
    return rows


async def count_active(session: AsyncSession) -> int:
    """How many installs are active (the health sweep's rate follows it)."""
    stmt = select(func.count()).where(INSTALLS.c.status == InstallStatus.active.value)
    return int((await session.execute(stmt)).scalar_one())


async def last_used(session: AsyncSession, store_ids: list[str]) -> dict[str, datetime]:
    """When bundles were last issued for these stores (absent: never)."""
    if not store_ids:
        return {}
    rows = await session.execute(
        select(col(InstallUsage.store_id), col(InstallUsage.last_used_at)).where(
            col(InstallUsage.store_id).in_(store_ids)
        )
    )
    return {sid: at for sid, at in rows.all()}
