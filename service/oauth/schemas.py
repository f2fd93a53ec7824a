"""Shapes of the app-initiated install start."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.neto.apps import APP_NAME_MAX_LENGTH, APP_NAME_PATTERN

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
    app_state: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=r"^[\x20-\x7e]+$",
        description="Opaque to the broker: stored sealed with the pending install and echoed "
        "as the `app_state` query parameter (URL-encoded) on the return redirect, so the app "
        "can tie the return to its own session. 1 to 512 printable ASCII characters "
        "(space to `~`). Needs `return_url`: without a redirect it could never come back, "
        "so it is refused (400 `validation_error`). Treat a return without it as untied: "
        "the merchant's browser carries the redirect and can drop it.",
        examples=["session-7f3a9c"],
    )
    app: str | None = Field(
        default=None,
        max_length=APP_NAME_MAX_LENGTH,
        pattern=APP_NAME_PATTERN,
        description="The Neto add-on to install (a name in BROKER_NETO_APPS); absent: "
        "`default`. A token with an `apps` claim may start installs of those apps only. "
        "An app that is not configured is refused (400 `validation_error`).",
        examples=["staging"],
    )


class InstallStarted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_STARTED_EXAMPLE]})
    authorize_url: str = Field(
        examples=["https://apps.getneto.com/oauth/v2/auth?client_id=...&state=..."]
    )
    state_expires_at: datetime
