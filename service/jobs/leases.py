"""Leases: one replica at a time runs each background job.

A lease is a row (name, holder, expires_at). `hold()` takes it when it is free or
expired, or renews it when this holder already has it, in one conditional
INSERT … ON CONFLICT DO UPDATE … WHERE (SQLite and PostgreSQL alike): the database
decides, so two replicas racing for a lease cannot both win. A holder that dies is
replaced once its lease expires; a holder that stops hands the lease back at once.
The expiry uses each replica's clock, so the time to live must exceed any clock skew
between replicas plus the longest pause between renewals.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import Table, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import run_transaction, utcnow
from service.jobs.models import Lease

LEASES: Table = Lease.__table__  # type: ignore[attr-defined]


def holder_name() -> str:
    """Names this process in the `leases` table (host, pid and a random part)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper:
    """The lease named `name`, held for `ttl_seconds` at a time by `holder`."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        name: str,
        *,
        ttl_seconds: float,
        holder: str | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.name = name
        self.holder = holder or holder_name()
        self._ttl = timedelta(seconds=ttl_seconds)

    async def hold(self) -> bool:
        """Take or renew the lease; True while this holder has it."""

        async def work(session: AsyncSession) -> bool:
            now = utcnow()
            dialect = session.get_bind().dialect.name
            dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
            table = LEASES
            stmt = dialect_insert(table).values(
                name=self.name, holder=self.holder, expires_at=now + self._ttl
            )
            upsert = stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
                # Only if the lease is ours already, or its holder let it lapse.
                where=(table.c.holder == self.holder) | (table.c.expires_at < now),
            ).returning(table.c.holder)
            won: str | None = (await session.execute(upsert)).scalar_one_or_none()
            return won == self.holder

        return await run_transaction(self._sessionmaker, work)

    async def release(self) -> None:
        """Hand the lease back (if this holder has it), so another replica needn't wait."""

        async def work(session: AsyncSession) -> None:
            await session.execute(
                delete(LEASES).where(LEASES.c.name == self.name, LEASES.c.holder == self.holder)
            )

        await run_transaction(self._sessionmaker, work)
