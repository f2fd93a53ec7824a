"""The tables of the notification receiver: each store's URL token (its hash only) and
one dedupe record per notification accepted.

The token table is keyed by a surrogate id with one live row per store (unique
`store_id`): when add-ons become several (`BROKER_NETO_APPS`), an `app` column joins it
and the unique index becomes (`store_id`, `app`), with no change of key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime, growing_id, utcnow


class NotifyToken(SQLModel, table=True):
    """The secret in one store's notification URL, as its SHA-256 (the token is 32
    random bytes: no slow hash is needed to keep a leaked table from giving it away).
    `revoked_at`: the install was revoked; the URL stays dead until an operator issues
    a new one (a reinstall does not bring an old URL back)."""

    __tablename__ = "neto_notify_tokens"
    __table_args__ = (UniqueConstraint("store_id", name="uq_neto_notify_tokens_store_id"),)

    id: int | None = Field(default=None, sa_column=growing_id())
    store_id: str = Field(sa_column=Column(String(64), nullable=False))
    token_hash: str = Field(sa_column=Column(String(64), nullable=False))
    issued_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    issued_by: str = Field(sa_column=Column(String(256), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))

    def __repr__(self) -> str:
        return f"NotifyToken(store_id={self.store_id!r}, issued_at={self.issued_at!r})"


class NotificationSeen(SQLModel, table=True):
    """One notification accepted for a store, written with its event: the same one sent
    again (Neto's redelivery) finds this row and appends nothing. Pruned with the events
    (BROKER_EVENT_RETENTION_DAYS)."""

    __tablename__ = "neto_notifications"
    __table_args__ = (
        UniqueConstraint("store_id", "dedupe_key", name="uq_neto_notifications_store_id"),
    )

    id: int | None = Field(default=None, sa_column=growing_id())
    store_id: str = Field(sa_column=Column(String(64), nullable=False))
    # `id:<Neto's EventID>`, or `sha256:<digest of the body>` for a body without one.
    dedupe_key: str = Field(sa_column=Column(String(80), nullable=False))
    # The event it became (`events.event_id`).
    event_id: str = Field(sa_column=Column(String(40), nullable=False))
    received_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
