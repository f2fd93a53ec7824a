"""Shapes of the app-initiated install start."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STARTED_EXAMPLE: dict[str, Any] = {
    "authorize_url": "https://apps.getneto.com/oauth/v2/auth?client_id=...&response_type=code"
    "&redirect_uri=...&store_domain=shop.example.com.au&state=...",
    "state_expires_at": "2026-01-02T03:14:05Z",
}


class InstallStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_domain: str = Field(max_length=1024, examples=["shop.example.com.au"])
    return_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where the merchant lands after the install; must be under an allowed "
        "prefix (BROKER_RETURN_URL_PREFIXES).",
        examples=["https://app.example.com/neto/installed"],
    )


class InstallStarted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_STARTED_EXAMPLE]})
    authorize_url: str = Field(
        examples=["https://apps.getneto.com/oauth/v2/auth?client_id=...&state=..."]
    )
    state_expires_at: datetime
