"""`idempotency_keys`: one row per write a caller sent with an `Idempotency-Key`, so a
retry of it is answered from here instead of being sent to Neto again (idempotency/store.py).
Neto's answer may hold personal data: it is sealed like a store's token."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime, utcnow


class KeyState:
    IN_FLIGHT = "in_flight"  # sent, or about to be: a repeat waits for it
    DONE = "done"  # Neto answered: a repeat gets that answer
    UNKNOWN = "unknown"  # sent, and no answer came back: never sent again


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    # One write per store, caller and key, whichever replica takes it.
    __table_args__ = (
        UniqueConstraint("store_id", "caller", "key_digest", name="uq_idempotency_keys_scope"),
    )

    # Time-ordered (creation milliseconds, then random): retention deletes the oldest by it.
    id: str = Field(sa_column=Column(String(32), primary_key=True))
    store_id: str = Field(sa_column=Column(String(64), nullable=False))
    caller: str = Field(sa_column=Column(String(256), nullable=False))
    # sha256 of the caller's key (any text it chose) and of the request it came with.
    key_digest: str = Field(sa_column=Column(String(64), nullable=False))
    request_digest: str = Field(sa_column=Column(String(64), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    status: int | None = Field(default=None, sa_column=Column(Integer(), nullable=True))
    answer_sealed: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    key_id: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
