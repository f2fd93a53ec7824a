"""The `events` outbox and the webhook tables. Nothing here holds a secret in clear: a
subscription's signing secret is sealed like a store's token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Index, Integer, String, Text, false, text
from sqlmodel import Field, SQLModel

from service.db import BIGINT, UTCDateTime, growing_id, utcnow

EVENT_TYPES = (
    "install.created",
    "install.reinstalled",
    "install.reauth_required",
    "install.reactivated",
    "install.revoked",
    # Neto's own notifications for a store (service/inbound/): an order's change, and any
    # other kind Neto sends, kept under its name.
    "neto.order.updated",
    "neto.notification",
)


class Event(SQLModel, table=True):
    """One install change, appended in the change's own transaction. `seq` is assigned
    while appends are serialised (`outbox.emit`), so it grows in commit order."""

    __tablename__ = "events"
    # Retention prunes by age (`service/jobs/retention.py`).
    __table_args__ = (Index("ix_events_occurred_at", "occurred_at"),)

    seq: int | None = Field(default=None, sa_column=growing_id())
    event_id: str = Field(sa_column=Column(String(40), nullable=False, unique=True))
    type: str = Field(sa_column=Column(String(64), nullable=False))
    store_id: str = Field(sa_column=Column(String(64), nullable=False))
    occurred_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Webhook(SQLModel, table=True):
    """A subscription: where to POST which events. `status` is `active` or `failing`
    (deliveries kept failing for the retry window; an operator re-enables it)."""

    __tablename__ = "webhooks"

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    url: str = Field(sa_column=Column(String(2048), nullable=False))
    # Empty: every event type.
    event_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Empty: every store's events (and those of no store).
    stores: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default=text("'[]'"))
    )
    # Neto notifications carry the body Neto sent (`data.raw`) to this subscription only.
    include_raw: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    description: str | None = Field(default=None, sa_column=Column(String(256)))
    secret_sealed: str = Field(sa_column=Column(Text, nullable=False))
    # The secret a rotation replaced, sealed under the same key as `secret_sealed`:
    # deliveries carry its signature too until `previous_secret_until`, so receivers can
    # switch secrets without rejecting a delivery.
    previous_secret_sealed: str | None = Field(default=None, sa_column=Column(Text))
    previous_secret_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    key_id: str = Field(sa_column=Column(String(64), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    created_by: str = Field(sa_column=Column(String(256), nullable=False))
    failing_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class WebhookDelivery(SQLModel, table=True):
    """One event owed to one subscription, written with the event. `pending` until a 2xx
    answer makes it `delivered`; the worker claims it by moving `next_attempt_at` ahead
    (a lease), so a replica that dies mid-attempt only delays it."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The worker's claim: due deliveries, and the earlier pending one of the same
        # store and subscription that holds a later one back.
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_id_store_id_seq", "webhook_id", "store_id", "seq"),
    )

    id: int | None = Field(default=None, sa_column=growing_id())
    webhook_id: str = Field(sa_column=Column(String(40), nullable=False))
    seq: int = Field(sa_column=Column(BIGINT, nullable=False))
    store_id: str = Field(sa_column=Column(String(64), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    first_attempt_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class WebhookAttempt(SQLModel, table=True):
    """One POST to a receiver: its answer's status (None: no answer), latency, error."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_webhook_id_id", "webhook_id", "id"),)

    id: int | None = Field(default=None, sa_column=growing_id())
    webhook_id: str = Field(sa_column=Column(String(40), nullable=False))
    delivery_id: int = Field(sa_column=Column(BIGINT, nullable=False))
    event_id: str = Field(sa_column=Column(String(40), nullable=False))
    attempt: int = Field(sa_column=Column(Integer, nullable=False))
    attempted_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    status_code: int | None = Field(default=None, sa_column=Column(Integer))
    latency_ms: int = Field(sa_column=Column(Integer, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(String(256)))
