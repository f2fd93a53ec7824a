"""Shapes of the audit log as operators read it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_AUDIT_EXAMPLE: dict[str, Any] = {
    "id": 42,
    "at": "2026-01-02T03:04:05Z",
    "event": "bundle.issued",
    "actor": "orders-service",
    "store_id": "N12345",
    "request_id": "req_5f2a9c0e1b7d4a3f9e8c7b6a",
    "details": {"bundle_id": "bnd_3q2x9yS0c8VbqkzE5l0wXg"},
}


class AuditEventOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_AUDIT_EXAMPLE]})
    id: int
    at: datetime
    event: str = Field(examples=["bundle.issued"])
    actor: str = Field(examples=["orders-service"])
    store_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any]


class AuditPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_AUDIT_EXAMPLE], "next_cursor": "WzQxXQ"}]}
    )
    items: list[AuditEventOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )
