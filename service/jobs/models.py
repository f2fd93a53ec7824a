"""The `leases` table: which replica holds which background job, and until when."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, String
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime


class Lease(SQLModel, table=True):
    """One background job's lease. A holder keeps it by renewing before `expires_at`;
    after that any replica may take it over."""

    __tablename__ = "leases"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    holder: str = Field(sa_column=Column(String(128), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
