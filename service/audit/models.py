"""The `audit_events` table: who did what to which store. Never holds a secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, String
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime, growing_id, utcnow


class AuditEvent(SQLModel, table=True):
    """Who did what to which store. Never holds a secret."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_store_id_id", "store_id", "id"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_event_id", "event", "id"),
        # No index on `at`: every bundle writes a row, and retention walks the primary key
        # (service/jobs/retention.py).
    )

    id: int | None = Field(default=None, sa_column=growing_id())
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    event: str = Field(sa_column=Column(String(64), nullable=False))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    store_id: str | None = Field(default=None, sa_column=Column(String(64)))
    request_id: str | None = Field(default=None, sa_column=Column(String(128)))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
