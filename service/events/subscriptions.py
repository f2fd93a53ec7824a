"""Webhook subscriptions: created with a fresh signing secret (sealed like a store's
token, shown once), listed, removed, re-enabled. The admin API and the CLI both call
these, and each change records its audit event here, so neither door can skip it; each
runs in the transaction its caller gives it."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.audit.writer import record
from service.db import utcnow
from service.errors import BadRequest, NotFound
from service.events import deliveries
from service.events.models import EVENT_TYPES, Webhook, WebhookAttempt, WebhookDelivery
from service.events.signing import new_secret
from service.keys.rotation import SealedTable
from service.security.crypto import Context, KeyRing


def _ctx(webhook_id: str) -> Context:
    return Context("webhooks", "secret_sealed", webhook_id)


# How `broker keys rotate | check` (service/keys/rotation.py) sees the signing secrets: a
# secret left under a key that is later removed could no longer sign a delivery.
ROTATION = SealedTable.of(
    Webhook, "webhook secrets", row_id="id", sealed=("secret_sealed",), bound=(),
    context=lambda webhook_id, _bound, _column: _ctx(webhook_id),
)  # fmt: skip


def check_url(url: str) -> str:
    """http(s), a host, no credentials in it (they would show in listings and logs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("The webhook URL must be an absolute http or https URL.")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("The webhook URL must not carry credentials.")
    return url


def redacted_url(url: str) -> str:
    """The receiver URL as every read shows it (the API, the audit log, the CLI's list):
    no user info and no query string, where receivers often take a token (`?…` marks that
    one was there), so reading subscriptions never teaches how to call a receiver."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:  # not from the API (it checks the URL): no port shown
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def check_types(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise BadRequest(f"Unknown event types: {', '.join(unknown)}.")
    return sorted(set(event_types))


async def create(
    session: AsyncSession,
    keyring: KeyRing,
    *,
    url: str,
    event_types: list[str],
    description: str | None,
    actor: str,
    request_id: str | None = None,
) -> tuple[Webhook, str]:
    """The new subscription and its secret in clear (returned this once, never stored),
    audited as `webhook.created`."""
    webhook_id = "wh_" + secrets.token_urlsafe(12)
    secret = new_secret()
    webhook = Webhook(
        id=webhook_id, url=check_url(url), event_types=check_types(event_types),
        description=description, secret_sealed=keyring.seal(secret.encode(), _ctx(webhook_id)),
        key_id=keyring.primary, status="active", created_at=utcnow(), created_by=actor,
    )  # fmt: skip
    session.add(webhook)
    await session.flush()
    record(session, "webhook.created", actor=actor, request_id=request_id,
           webhook_id=webhook_id, url=redacted_url(webhook.url))  # fmt: skip
    return webhook, secret


def open_secret(keyring: KeyRing, webhook: Webhook) -> str:
    return keyring.open(webhook.secret_sealed, _ctx(webhook.id)).decode()


async def listing(session: AsyncSession) -> list[Webhook]:
    return list(
        (await session.execute(select(Webhook).order_by(col(Webhook.created_at)))).scalars()
    )


async def require(session: AsyncSession, webhook_id: str) -> Webhook:
    webhook = await session.get(Webhook, webhook_id, populate_existing=True)
    if webhook is None:
        raise NotFound("No such webhook subscription.")
    return webhook


async def remove(
    session: AsyncSession, webhook_id: str, *, actor: str, request_id: str | None = None
) -> None:
    """The subscription, what it was still owed, and its delivery log (`webhook.removed`)."""
    await require(session, webhook_id)
    for table in (WebhookAttempt, WebhookDelivery):
        await session.execute(delete(table).where(col(table.webhook_id) == webhook_id))
    await session.execute(delete(Webhook).where(col(Webhook.id) == webhook_id))
    record(session, "webhook.removed", actor=actor, request_id=request_id,
           webhook_id=webhook_id)  # fmt: skip


async def enable(
    session: AsyncSession, webhook_id: str, *, actor: str, request_id: str | None = None
) -> Webhook:
    """Active again (`webhook.enabled`)."""
    await require(session, webhook_id)
    await deliveries.reenable(session, webhook_id, await deliveries.database_now(session))
    record(session, "webhook.enabled", actor=actor, request_id=request_id,
           webhook_id=webhook_id)  # fmt: skip
    return await require(session, webhook_id)
