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

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.events import deliveries
from service.events.models import EVENT_TYPES, Event, Webhook, WebhookDelivery
from service.installs.models import Install
from service.notifications import notify

CHANNEL = "broker_events"
# Any constant that no other advisory lock of this database uses ("evnt").
APPEND_LOCK = 0x65766E74


def new_event_id() -> str:
    return "evt_" + secrets.token_urlsafe(16)


def wants(webhook: Webhook, event_type: str) -> bool:
    return not webhook.event_types or event_type in webhook.event_types


async def emit(session: AsyncSession, event_type: str, install: Install, actor: str) -> Event:
    """Append the event for `install`'s change and owe it to the subscriptions. `data`
    carries no secret, user or address: only the store's name, method, status and who."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK})
    # The deliveries are due now by the database's clock, which the worker compares with:
    # a replica whose clock runs ahead would otherwise hold them back by its skew.
    now = await deliveries.database_now(session)
    event = Event(
        event_id=new_event_id(),
        type=event_type,
        store_id=install.store_id,
        occurred_at=now,
        data={
            "store_id": install.store_id,
            "store_domain": install.store_domain,
            "auth_method": install.auth_method,
            "status": install.status,
            "actor": actor,
        },
    )
    session.add(event)
    await session.flush()  # the seq is taken now, under the lock
    assert event.seq is not None
    for webhook in (await session.execute(select(Webhook))).scalars():
        if wants(webhook, event_type):
            session.add(
                WebhookDelivery(
                    webhook_id=webhook.id, seq=event.seq, store_id=install.store_id,
                    state="pending", next_attempt_at=now,
                )
            )  # fmt: skip
    await notify(session, CHANNEL, str(event.seq))
    return event
