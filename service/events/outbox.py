"""Writing an install event: in the change's own transaction, so an event exists exactly
for the changes that committed.

Appends are serialised, so `seq` grows in commit order and a reader that saw event N has
already seen every event before it: a plain sequence would hand N to one transaction and
N+1 to another that commits first, and a reader past N+1 would skip N for ever. On
PostgreSQL a transaction-scoped advisory lock, taken right before the insert, holds every
other append back until this transaction commits or rolls back; SQLite has one writer at
a time already. Install changes are short and the append comes last in each, so the lock
is held for a commit's time.

The same insert owes the event to every subscription that wants it (`webhook_deliveries`),
so a delivery can never be lost or sent for a change that rolled back, and a failing
subscription keeps what it missed for its replay.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.events import deliveries
from service.events.models import EVENT_TYPES, Event, Webhook, WebhookDelivery
from service.installs.models import Install
from service.notifications import notify

CHANNEL = "broker_events"
# Core tables, not the models: a batch of rows through the ORM's bulk insert cost as much
# Python again as the statement.
EVENTS: Table = Event.__table__  # type: ignore[attr-defined]
OWED: Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
# Any constant that no other advisory lock of this database uses ("evnt").
APPEND_LOCK = 0x65766E74


def new_event_id() -> str:
    return "evt_" + secrets.token_urlsafe(16)


def wants(webhook: Webhook, event_type: str, store_id: str = "") -> bool:
    """The subscription takes this event: its type (none listed: every type) and its
    store (none listed: every store's, and those of no store)."""
    if webhook.event_types and event_type not in webhook.event_types:
        return False
    return not webhook.stores or store_id in webhook.stores


async def emit(session: AsyncSession, event_type: str, install: Install, actor: str) -> NewEvent:
    """Append the event for `install`'s change and owe it to the subscriptions. `data`
    carries no secret, user or address: only the store's name, method, status and who."""
    data = {
        "store_id": install.store_id,
        "store_domain": install.store_domain,
        "auth_method": install.auth_method,
        "status": install.status,
        "actor": actor,
    }
    event = NewEvent(event_type, install.store_id, data)
    await append(session, [event])
    return event


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. `raw` (a Neto notification's body) is kept with the event only
    when a subscription asks for it (`include_raw`); nothing else ever shows it."""

    type: str
    store_id: str
    data: dict[str, Any]
    raw: str | None = None
    event_id: str = field(default_factory=new_event_id)


async def append(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """Append `events` in this order and owe each to every subscription that wants it:
    one statement for the events and one for what is owed, however many (a batch of
    notifications takes the append lock once)."""
    if not events:
        return
    for new in events:
        if new.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {new.type}")
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK})
    # The deliveries are due now by the database's clock, which the worker compares with:
    # a replica whose clock runs ahead would otherwise hold them back by its skew.
    now = await deliveries.database_now(session)
    hooks = list((await session.execute(select(Webhook))).scalars())
    rows = []
    for new in events:
        raw = new.raw is not None and any(
            w.include_raw for w in hooks if wants(w, new.type, new.store_id)
        )
        rows.append({"event_id": new.event_id, "type": new.type, "store_id": new.store_id,
                     "occurred_at": now,
                     "data": {**new.data, "raw": new.raw} if raw else new.data})  # fmt: skip
    # The seqs are taken now, under the lock, in the rows' order.
    taken = await session.execute(
        insert(EVENTS).returning(EVENTS.c.seq, EVENTS.c.event_id, sort_by_parameter_order=True),
        rows,
    )
    seqs = {event_id: seq for seq, event_id in taken.all()}
    owed = [
        {"webhook_id": w.id, "seq": seqs[new.event_id], "store_id": new.store_id,
         "state": "pending", "attempts": 0, "next_attempt_at": now}
        for new in events for w in hooks if wants(w, new.type, new.store_id)
    ]  # fmt: skip
    if owed:
        await session.execute(insert(OWED), owed)
    await notify(session, CHANNEL, str(max(seqs.values())))
