"""The `installs` table: one merchant store each. Secrets here are sealed text only."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal, get_args

from sqlalchemy import BigInteger, Column, Index, Sequence, String, Text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime, utcnow
from service.neto.apps import DEFAULT_APP


class AuthMethod(StrEnum):
    oauth = "oauth"
    api_key = "api_key"


class InstallStatus(StrEnum):
    active = "active"
    reauth_required = "reauth_required"
    revoked = "revoked"


# The same names as API types (an enum would rename them in the OpenAPI document); the
# assertions keep the two spellings in step.
AuthMethodName = Literal["oauth", "api_key"]
StatusName = Literal["active", "reauth_required", "revoked"]
assert get_args(AuthMethodName) == tuple(AuthMethod)
assert get_args(StatusName) == tuple(InstallStatus)


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
        Index("ix_installs_updated_at", "updated_at"),
        # The health sweep picks the active installs swept longest ago.
        Index("ix_installs_status_last_swept_at", "status", "last_swept_at"),
        # The store caches' change feed polls this every second on every replica.
        Index("ix_installs_change_seq", "change_seq"),
        # GET /installs?app=: one add-on's installs, newest first.
        Index("ix_installs_app_installed_at_store_id", "app", "installed_at", "store_id"),
    )

    store_id: str = Field(sa_column=Column(String(64), primary_key=True))
    store_domain: str = Field(sa_column=Column(String(253), nullable=False, index=True))
    auth_method: str = Field(sa_column=Column(String(16), nullable=False))
    status: str = Field(sa_column=Column(String(24), nullable=False))
    # The add-on the store installed (service/neto/apps.py): its client id goes with the
    # token in bundles and calls. A store is one install: a reinstall under another app
    # moves it there. API-key stores name one too (`default` unless registered otherwise),
    # so an `apps` claim covers them.
    app: str = Field(
        default=DEFAULT_APP,
        sa_column=Column(String(32), nullable=False, server_default=DEFAULT_APP),
    )
    scope: str | None = Field(default=None, sa_column=Column(String(512)))
    timezone: str | None = Field(default=None, sa_column=Column(String(64)))
    # Sealed JSON: {"access_token", ...} for OAuth, {"username", "api_key"} for API keys.
    # Destroyed (NULL) on revoke, with the profile below (the merchant's user and address).
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
    # Assigned by the database on every change that matters to a cached copy (install,
    # reinstall, revoke, status): the change feed's order, independent of any replica's
    # clock. Never written from Python: `next_change_seq()`.
    change_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    # When the health sweep last checked this install (NULL: never). Bookkeeping of the
    # sweep, not install state: it does not move `updated_at` or the change feed.
    last_swept_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))

    def __repr__(self) -> str:
        # Sealed columns are ciphertext, but a repr has no business showing them at all.
        return (
            f"Install(store_id={self.store_id!r}, store_domain={self.store_domain!r}, "
            f"auth_method={self.auth_method!r}, status={self.status!r}, app={self.app!r})"
        )


class InstallUsage(SQLModel, table=True):
    """When bundles were last issued for a store (`installs.last_used_at` in the API), in a
    narrow table of its own: the background stamp writes tens of thousands of these every
    few seconds with 100,000 installs, and rewriting the wide install row for each (its
    sealed columns) was the largest cost the bundles' path still had (docs/performance.md).
    No row: never used."""

    __tablename__ = "install_usage"
    store_id: str = Field(sa_column=Column(String(64), primary_key=True))
    last_used_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# PostgreSQL hands out change numbers from a sequence (unique even for concurrent writers
# of one row); created with the tables and by the migration.
CHANGE_SEQUENCE = Sequence("installs_change_seq", metadata=SQLModel.metadata)


class next_change_seq(FunctionElement[int]):
    """The next change number, computed by the database inside the writing statement."""

    type = BigInteger()
    inherit_cache = True


@compiles(next_change_seq, "postgresql")
def _next_change_seq_pg(element: next_change_seq, compiler: SQLCompiler, **kw: object) -> str:
    return "nextval('installs_change_seq')"


@compiles(next_change_seq)
def _next_change_seq_default(element: next_change_seq, compiler: SQLCompiler, **kw: object) -> str:
    # SQLite: one writer at a time holds the database lock from this read to its commit,
    # so the largest number plus one is unique and in commit order.
    return "(SELECT COALESCE(MAX(change_seq), 0) + 1 FROM installs)"
