"""Accepting notifications: each one's dedupe row and its event in one transaction, so a
notification is in the outbox exactly once however often Neto sends it, and never half.

The dedupe rows are inserted first (`ON CONFLICT DO NOTHING`), each naming the event it
will become: of two copies arriving at once (on two replicas, or in one batch) only one
row goes in, and only its event is appended; the other copy waits on that row (another
replica's, until it commits) and is a duplicate. The events are owed to the subscriptions
by the same transaction (`outbox.append`); delivering them is the worker's, after the
answer to Neto. A batch is three statements, whatever its size (service/inbound/writer.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import utcnow
from service.events.outbox import NewEvent, append
from service.inbound.models import NotificationSeen
from service.inbound.normalise import Notification

SEEN = NotificationSeen.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str | None  # None: a copy of one accepted before
    duplicate: bool


async def accept(
    session: AsyncSession, notes: Sequence[tuple[str, Notification, bytes]]
) -> list[Accepted]:
    """Each (store id, notification, body Neto sent) accepted or found a duplicate, in
    order."""
    now = utcnow()
    events = [
        NewEvent(note.event_type, store_id, note.data(store_id),
                 raw=body.decode("utf-8", errors="replace"))
        for store_id, note, body in notes
    ]  # fmt: skip
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = (
        insert(SEEN)
        .on_conflict_do_nothing(index_elements=["store_id", "dedupe_key"])
        .returning(SEEN.c.event_id)
    )
    rows = [
        {"store_id": store_id, "dedupe_key": note.dedupe_key, "event_id": event.event_id,
         "received_at": now}
        for (store_id, note, _), event in zip(notes, events, strict=True)
    ]  # fmt: skip
    new = set((await session.execute(stmt, rows)).scalars())
    await append(session, [event for event in events if event.event_id in new])
    return [
        Accepted(event.event_id, False) if event.event_id in new else Accepted(None, True)
        for event in events
    ]
