"""Webhook subscriptions: created with a fresh signing secret (sealed like a store's
token, shown once), listed, removed, re-enabled. The admin API and the CLI both call
these, and each change records its audit event here, so neither door can skip it; each
runs in the transaction its caller gives it."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
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
from service.security.crypto import Context, KeyRing, SealError


def _ctx(webhook_id: str, column: str = "secret_sealed") -> Context:
    return Context("webhooks", column, webhook_id)


# How `broker keys rotate | check` (service/keys/rotation.py) sees the signing secrets: a
# secret left under a key that is later removed could no longer sign a delivery.
ROTATION = SealedTable.of(
    Webhook, "webhook secrets", row_id="id",
    sealed=("secret_sealed", "previous_secret_sealed"), bound=(),
    context=lambda webhook_id, _bound, column: _ctx(webhook_id, column),
)  # fmt: skip
# The longest a replaced secret may keep signing: receivers switch within days, not weeks.
MAX_OVERLAP_SECONDS = 7 * 86400


def check_url(url: str) -> str:
    """http(s), a host, no credentials in it (they would show in listings and logs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("The webhook URL must be an absolute http or https URL.")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("The webhook URL must not carry credentials.")
    return url


DEFAULT_PORTS = {"http": 80, "https": 443}


def allow_listed(url: str, hosts: frozenset[tuple[str, int | None]]) -> bool:
    """The receiver is on `BROKER_WEBHOOK_ALLOWED_HOSTS` (`Settings.webhook_hosts`): its host
    with its port, or its host bare and the URL on its scheme's default port. Listing a
    receiver's host so admits that receiver, not every other service of the machine."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    default = DEFAULT_PORTS.get(parts.scheme)
    try:
        port = parts.port or default
    except ValueError:
        return False
    return (host, port) in hosts or ((host, None) in hosts and port == default)


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
    stores: list[str] | None = None,
    include_raw: bool = False,
) -> tuple[Webhook, str]:
    """The new subscription and its secret in clear (returned this once, never stored),
    audited as `webhook.created`. `stores`: only those stores' events (none: every
    store's); `include_raw`: Neto notifications carry the body Neto sent."""
    webhook_id = "wh_" + secrets.token_urlsafe(12)
    secret = new_secret()
    webhook = Webhook(
        id=webhook_id, url=check_url(url), event_types=check_types(event_types),
        description=description, stores=sorted(set(stores or [])), include_raw=include_raw,
        secret_sealed=keyring.seal(secret.encode(), _ctx(webhook_id)),
        key_id=keyring.primary, status="active", created_at=utcnow(), created_by=actor,
    )  # fmt: skip
    session.add(webhook)
    await session.flush()
    record(session, "webhook.created", actor=actor, request_id=request_id,
           webhook_id=webhook_id, url=redacted_url(webhook.url))  # fmt: skip
    return webhook, secret


def open_secret(keyring: KeyRing, webhook: Webhook) -> str:
    return keyring.open(webhook.secret_sealed, _ctx(webhook.id)).decode()


def open_previous(keyring: KeyRing, webhook: Webhook, now: datetime) -> list[str]:
    """The replaced secret while its overlap lasts at `now` (the database's clock)."""
    until, sealed = webhook.previous_secret_until, webhook.previous_secret_sealed
    if sealed is None or until is None or until <= now:
        return []
    return [keyring.open(sealed, _ctx(webhook.id, "previous_secret_sealed")).decode()]


async def rotate_secret(
    session: AsyncSession,
    keyring: KeyRing,
    webhook_id: str,
    *,
    overlap_seconds: int,
    actor: str,
    request_id: str | None = None,
) -> tuple[Webhook, str]:
    """A new signing secret, returned in clear this once (`webhook.secret_rotated`). For
    `overlap_seconds` deliveries are signed with the replaced secret too (a second `v1,`
    signature, as Standard Webhooks allows), so a receiver can switch without rejecting
    one; 0 drops the replaced secret at once. A secret replaced earlier whose overlap is
    still running is dropped now: at most two secrets sign."""
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise BadRequest(f"The overlap must be 0 to {MAX_OVERLAP_SECONDS} seconds.")
    stmt = select(Webhook).where(col(Webhook.id) == webhook_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # two rotations at once: one after the other
    webhook = (await session.execute(stmt.execution_options(populate_existing=True))).scalar()
    if webhook is None:
        raise NotFound("No such webhook subscription.")
    secret = new_secret()
    try:
        replaced = open_secret(keyring, webhook).encode() if overlap_seconds else None
    except SealError:  # it signs nothing already: the rotation is the way out
        replaced = None
    if replaced is not None:
        # Re-sealed under the primary key with the new one: the row's `key_id` names the
        # key of both (service/keys/rotation.py).
        webhook.previous_secret_sealed = keyring.seal(
            replaced, _ctx(webhook_id, "previous_secret_sealed")
        )
        now = await deliveries.database_now(session)
        webhook.previous_secret_until = now + timedelta(seconds=overlap_seconds)
    else:
        webhook.previous_secret_sealed = webhook.previous_secret_until = None
    webhook.secret_sealed = keyring.seal(secret.encode(), _ctx(webhook_id))
    webhook.key_id = keyring.primary
    await session.flush()
    record(session, "webhook.secret_rotated", actor=actor, request_id=request_id,
           webhook_id=webhook_id, overlap_seconds=overlap_seconds)  # fmt: skip
    return webhook, secret


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
