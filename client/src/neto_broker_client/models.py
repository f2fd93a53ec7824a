"""Typed answers of the broker.

`Bundle`, `Event`, `EventPage` and `ErrorBody` mirror the schemas of the same purpose in
the broker's openapi/openapi.json (`Bundle`, `EventOut`, `EventPage`, `ErrorBody`);
tests/client/test_models.py fails when their field names or required fields drift.
Unknown fields are ignored, so a newer broker that adds one does not break old callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Bundle(_Model):
    """A short-lived credential bundle: call `api_url` with `headers` until `expires_at`.
    `headers` holds the store's secret, so it is left out of the repr."""

    bundle_id: str
    store_id: str
    store_domain: str
    auth_method: Literal["oauth", "api_key"]
    api_url: str
    headers: dict[str, str] = Field(repr=False)
    issued_at: datetime
    expires_at: datetime


class EventData(_Model):
    """What an event says of its install; never a secret, a user or an address. Fields
    that other event types carry (the broker's newer kinds) are kept as extra attributes
    (`model_extra`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    store_id: str | None = None
    store_domain: str | None = None
    auth_method: str | None = None
    status: str | None = None
    actor: str | None = None


class Event(_Model):
    """An install lifecycle event (`install.created`, `install.revoked`, ...)."""

    id: str
    type: str
    timestamp: datetime
    data: EventData


class EventPage(_Model):
    """One answer of the feed; pass `next_cursor` as `after` to go on."""

    events: list[Event]
    next_cursor: str


class ErrorBody(_Model):
    """The broker's error envelope."""

    error: str
    detail: str
    request_id: str


@dataclass(frozen=True)
class RateLimit:
    """The store's budget for the caller's lane, from `RateLimit-Policy` (`quota` calls a
    `window` seconds) and `RateLimit` (`remaining` now, full again in `reset` seconds),
    the IETF draft's fields as the broker sends them."""

    policy: str
    quota: int | None = None
    window: int | None = None
    remaining: int | None = None
    reset: int | None = None


@dataclass(frozen=True)
class InvokeResult:
    """Neto's answer through `/invoke`: its status and body, unchanged. Neto often
    reports a failure as 200 with `"Ack": "Error"`, so check `body["Ack"]` too.
    `replayed`: the broker answered a repeated idempotency key with the first answer."""

    status: int
    body: Any  # the parsed JSON, or None when Neto's answer was not JSON
    content: bytes = field(repr=False)
    headers: httpx.Headers = field(repr=False)
    rate_limit: RateLimit | None
    replayed: bool
    request_id: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300
