"""The `pending_installs` table: OAuth installs in flight."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, String, Text
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime, growing_id, utcnow
from service.neto.apps import DEFAULT_APP


class PendingInstall(SQLModel, table=True):
    """An OAuth install in flight. Only a hash of the `state` is stored."""

    __tablename__ = "pending_installs"

    id: int | None = Field(default=None, sa_column=growing_id())
    state_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    store_domain: str = Field(sa_column=Column(String(253), nullable=False))
    return_url: str | None = Field(default=None, sa_column=Column(String(2048)))
    initiated_by: str = Field(sa_column=Column(String(256), nullable=False))
    # The add-on (service/neto/apps.py) the install is for: its client id went to Neto's
    # authorise page, and only its secret may exchange the code. Bound in the binding.
    app: str = Field(
        default=DEFAULT_APP,
        sa_column=Column(String(32), nullable=False, server_default=DEFAULT_APP),
    )
    # The app's opaque `app_state`, sealed and bound to this row's state hash
    # (oauth/pending.py): echoed on the return redirect, never stored in clear.
    app_state_sealed: str | None = Field(default=None, sa_column=Column(Text))
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
