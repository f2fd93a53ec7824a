"""Shapes of the events feed and the webhook admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.neto.credentials import STORE_ID_MAX_LENGTH, STORE_ID_PATTERN
from service.web.api import PLAIN_TEXT

EventTypeName = Literal[
    "install.created",
    "install.reinstalled",
    "install.reauth_required",
    "install.reactivated",
    "install.revoked",
    "neto.order.updated",
    "neto.notification",
]

_EVENT_EXAMPLE: dict[str, Any] = {
    "id": "evt_Hq3v9yS0c8VbqkzE5l0wXg",
    "type": "install.created",
    "timestamp": "2026-01-02T03:04:05.123456Z",
    "data": {
        "store_id": "N12345",
        "store_domain": "shop.example.com",
        "auth_method": "oauth",
        "status": "active",
        "actor": "neto",
    },
}


class EventOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})
    id: str
    type: str
    timestamp: str = Field(description="RFC 3339, UTC")
    data: dict[str, Any]


class EventPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"events": [_EVENT_EXAMPLE], "next_cursor": "WzQyXQ"}]}
    )
    events: list[EventOut]
    next_cursor: str = Field(
        description="Pass as `after` for the next call; the same cursor when nothing was new."
    )


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        max_length=2048, pattern=PLAIN_TEXT, examples=["http://sync.internal:8080/hooks/neto"]
    )
    event_types: list[EventTypeName] = Field(
        default_factory=list, max_length=16, description="Empty or absent: every event type."
    )
    description: str | None = Field(default=None, max_length=256, pattern=PLAIN_TEXT)
    stores: list[
        Annotated[str, Field(min_length=1, max_length=STORE_ID_MAX_LENGTH,
                             pattern=STORE_ID_PATTERN)]
    ] = Field(
        default_factory=list, max_length=100,
        description="Only these stores' events. Empty or absent: every store's (and the "
        "events of no store).",
    )  # fmt: skip
    include_raw: bool = Field(
        default=False,
        description="Neto notifications (`neto.*`) carry the body Neto sent, as text, in "
        "`data.raw`. Off: only the normalised fields.",
    )


_WEBHOOK_EXAMPLE: dict[str, Any] = {
    "id": "wh_3q2x9yS0c8VbqkzE",
    "url": "http://sync.internal:8080/hooks/neto",
    "event_types": ["install.created", "install.revoked"],
    "description": "catalogue sync",
    "status": "active",
    "created_at": "2026-01-02T03:04:05Z",
    "created_by": "ops-alice",
    "failing_since": None,
}
_ATTEMPT_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "event_id": "evt_Hq3v9yS0c8VbqkzE5l0wXg",
    "attempt": 2,
    "attempted_at": "2026-01-02T03:04:06Z",
    "status_code": 503,
    "latency_ms": 12,
    "error": "HTTP 503",
    "ok": False,
}


class WebhookOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_WEBHOOK_EXAMPLE]})
    id: str = Field(examples=["wh_3q2x9yS0c8VbqkzE"])
    url: str = Field(
        description="The receiver URL without user info or query string (where receivers "
        "often take a token); `?…` marks that it had one."
    )
    event_types: list[str]
    stores: list[str] = Field(default_factory=list, description="Empty: every store's events.")
    include_raw: bool = False
    description: str | None = None
    status: Literal["active", "failing"] = Field(
        description="`failing`: deliveries failed for the whole retry window; they wait "
        "until an operator re-enables the subscription (`POST /webhooks/{id}/enable`)."
    )
    created_at: datetime
    created_by: str
    failing_since: datetime | None = None
    previous_secret_until: datetime | None = Field(
        default=None,
        description="After a secret rotation: until when deliveries are signed with the "
        "replaced secret too.",
    )


class SecretRotationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap_seconds: int = Field(
        default=86400, ge=0, le=7 * 86400,
        description="How long deliveries carry the replaced secret's signature as well "
        "(0: not at all).",
    )  # fmt: skip


class WebhookCreated(WebhookOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [_WEBHOOK_EXAMPLE | {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]
        }
    )
    secret: str = Field(
        description="The signing secret (`whsec_...`): shown this once, store it now.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhookList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_WEBHOOK_EXAMPLE]}]})
    items: list[WebhookOut]


class AttemptOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ATTEMPT_EXAMPLE]})
    id: int
    event_id: str
    attempt: int = Field(description="1 for the first try of this event, then 2, 3...")
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer")
    latency_ms: int
    error: str | None = None
    ok: bool


class AttemptPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_ATTEMPT_EXAMPLE], "next_cursor": None}]}
    )
    items: list[AttemptOut]
    next_cursor: str | None = None
