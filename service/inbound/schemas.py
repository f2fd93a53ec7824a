"""Shapes of the receiver's answer and of the operators' view of a store's URL."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Received(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [
            {"received": True, "duplicate": False, "event_id": "evt_Hq3v9yS0c8VbqkzE5l0wXg"}
        ]}
    )  # fmt: skip
    received: bool = True
    duplicate: bool = Field(
        description="The same notification was accepted before: no second event."
    )
    event_id: str | None = Field(
        default=None, description="The event it became (null for a duplicate)."
    )


class NotificationUrl(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{
            "store_id": "N12345", "issued": True,
            "url": "https://broker.example.com/neto-notify/N12345/nt_…",
            "issued_at": "2026-01-02T03:04:05Z", "issued_by": "ops-alice", "revoked_at": None,
        }]}
    )  # fmt: skip
    store_id: str
    issued: bool = Field(description="A URL was issued and still works.")
    url: str | None = Field(
        default=None,
        description="The URL to paste into Neto (Settings & Tools → API Settings). Shown in "
        "full only when issued; otherwise its token is `…`.",
        examples=["https://broker.example.com/neto-notify/N12345/nt_…"],
    )
    issued_at: datetime | None = None
    issued_by: str | None = None
    revoked_at: datetime | None = Field(
        default=None,
        description="The install was revoked: the URL answers 410 until a new one is issued.",
    )
