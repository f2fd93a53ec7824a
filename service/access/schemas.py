"""The credential bundle's shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.installs.models import AuthMethodName

_BUNDLE_EXAMPLE: dict[str, Any] = {
    "bundle_id": "bnd_3q2x9yS0c8VbqkzE5l0wXg",
    "store_id": "N12345",
    "store_domain": "shop.example.com.au",
    "auth_method": "oauth",
    "api_url": "https://shop.example.com.au/do/WS/NetoAPI",
    "headers": {"X_ACCESS_KEY": "<client id>", "X_SECRET_KEY": "<access token>"},
    "issued_at": "2026-01-02T03:04:05Z",
    "expires_at": "2026-01-02T03:09:05Z",
}


class Bundle(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_BUNDLE_EXAMPLE]})
    bundle_id: str = Field(examples=["bnd_3q2x9yS0c8VbqkzE5l0wXg"])
    store_id: str
    store_domain: str
    auth_method: AuthMethodName
    api_url: str = Field(examples=["https://shop.example.com.au/do/WS/NetoAPI"])
    headers: dict[str, str] = Field(
        examples=[{"X_ACCESS_KEY": "client-id", "X_SECRET_KEY": "access-token"}]
    )
    issued_at: datetime
    expires_at: datetime
