"""SQLModel tables. API shapes live in schemas.py; secrets here are sealed text only."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, String, Text
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime, metadata, utcnow

SQLModel.metadata = metadata


class AuthMethod(StrEnum):
    oauth = "oauth"
    api_key = "api_key"


class InstallStatus(StrEnum):
    active = "active"
    reauth_required = "reauth_required"
    revoked = "revoked"


class Install(SQLModel, table=True):
    """One merchant store. Keyed by Neto's store id: the domain can change."""

    __tablename__ = "installs"
    __table_args__ = (
        # GET /installs: newest first, keyset on (installed_at, store_id), with or without
        # a status filter.
        Index("ix_installs_installed_at_store_id", "installed_at", "store_id"),
        Index("ix_installs_status_installed_at_store_id", "status", "installed_at", "store_id"),
        # `broker keys rotate` pages through one old key's rows by store id.
        Index("ix_installs_key_id_store_id", "key_id", "store_id"),
        # The store caches' change feed polls this every second on every replica.
        Index("ix_installs_updated_at", "updated_at"),
    )

    store_id: str = Field(sa_column=Column(String(64), primary_key=True))
    store_domain: str = Field(sa_column=Column(String(253), nullable=False, index=True))
    auth_method: str = Field(sa_column=Column(String(16), nullable=False))
    status: str = Field(sa_column=Column(String(24), nullable=False))
    scope: str | None = Field(default=None, sa_column=Column(String(512)))
    timezone: str | None = Field(default=None, sa_column=Column(String(64)))
    # Sealed JSON: {"access_token", ...} for OAuth, {"username", "api_key"} for API keys.
    # Destroyed (NULL) on revoke.
    secret_sealed: str | None = Field(default=None, sa_column=Column(Text))
    user_sealed: str | None = Field(default=None, sa_column=Column(Text))
    billing_sealed: str | None = Field(default=None, sa_column=Column(Text))
    # The key id that sealed the three columns above; lets rotation find old rows cheaply.
    key_id: str | None = Field(default=None, sa_column=Column(String(32)))
    token_fingerprint: str | None = Field(default=None, sa_column=Column(String(64)))
    installed_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    last_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))

    def __repr__(self) -> str:
        # Sealed columns are ciphertext, but a repr has no business showing them at all.
        return (
            f"Install(store_id={self.store_id!r}, store_domain={self.store_domain!r}, "
            f"auth_method={self.auth_method!r}, status={self.status!r})"
        )


class PendingInstall(SQLModel, table=True):
    """An OAuth install in flight. Only a hash of the `state` is stored."""

    __tablename__ = "pending_installs"

    id: int | None = Field(default=None, primary_key=True)
    state_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    store_domain: str = Field(sa_column=Column(String(253), nullable=False))
    return_url: str | None = Field(default=None, sa_column=Column(String(2048)))
    initiated_by: str = Field(sa_column=Column(String(256), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    # A callback claims the state (with a hash of its code) before it exchanges the code;
    # the claim is released if nothing was stored, and consumed_at is set in the same
    # transaction that stores the install.
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    claim_code_hash: str | None = Field(default=None, sa_column=Column(String(64)))
    consumed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    store_id: str | None = Field(default=None, sa_column=Column(String(64)))


class AuditEvent(SQLModel, table=True):
    """Who did what to which store. Never holds a secret."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_store_id_id", "store_id", "id"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_event_id", "event", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    event: str = Field(sa_column=Column(String(64), nullable=False))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    store_id: str | None = Field(default=None, sa_column=Column(String(64)))
    request_id: str | None = Field(default=None, sa_column=Column(String(128)))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
