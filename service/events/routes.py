"""The events feed (`GET /events`) and the webhook admin API (`/webhooks`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from service.events import deliveries, repository, subscriptions
from service.events.models import Webhook, WebhookAttempt
from service.events.schemas import (
    AttemptOut,
    AttemptPage,
    EventOut,
    EventPage,
    SecretRotationIn,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
)
from service.events.signal import EventSignal
from service.events.signing import event_json
from service.services import services
from service.web.api import ERRORS, Responses, error, no_store
from service.web.cursors import decode_id_cursor, encode_cursor, split_page
from service.web.deps import Caller, SessionDep, request_id, require_scope

router = APIRouter(dependencies=[Depends(no_store)])

WebhookId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^wh_[A-Za-z0-9_-]+$")]
NO_WEBHOOK: Responses = {404: error("No such webhook subscription")}
BAD_CURSOR: Responses = {400: error("A cursor not from this API")}


def _seq(cursor: str) -> int:
    return decode_id_cursor(cursor, 0)


@router.get(
    "/events",
    tags=["events"],
    summary="Install lifecycle events, in commit order",
    responses={**ERRORS, **BAD_CURSOR},
)
async def event_feed(
    request: Request,
    caller: Annotated[Caller, Depends(require_scope("events:read"))],
    after: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the "
                                       "previous answer; absent: from the oldest event")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    wait: Annotated[float, Query(ge=0, le=30, description="Seconds to hold an empty answer "
                                 "open until an event arrives (long polling)")] = 0,
) -> EventPage:  # fmt: skip
    """Install changes (`install.created`, `install.reinstalled`, `install.reauth_required`,
    `install.reactivated`, `install.revoked`) in the order they committed. Following
    `next_cursor` never skips an event, even one that committed late on another replica.
    With `wait`, an empty answer is held until an event commits on any replica (woken
    within a second) or the wait ends. A token with a `stores` claim reads only the events
    of those stores (`["*"]`: of every store). Events carry no secret, user or address."""
    svc = services(request)
    after_seq = _seq(after) if after else 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        woken = svc.event_signal.current()
        # A short session per look: a waiting request holds no database connection.
        async with svc.sessionmaker() as session:
            rows = await repository.after(session, after_seq, limit, caller.stores)
        remaining = deadline - loop.time()
        if rows or remaining <= 0:
            break
        await EventSignal.wait(woken, min(remaining, svc.settings.events_poll_seconds))
    last = rows[-1].seq if rows else after_seq
    return EventPage(
        events=[EventOut.model_validate(event_json(row)) for row in rows],
        next_cursor=encode_cursor(last),
    )


def _out(webhook: Webhook) -> WebhookOut:
    out = WebhookOut.model_validate(webhook, from_attributes=True)
    return out.model_copy(update={"url": subscriptions.redacted_url(webhook.url)})


@router.post(
    "/webhooks",
    tags=["webhooks"],
    status_code=201,
    summary="Subscribe a receiver",
    responses={**ERRORS, 400: error("Not an http(s) URL, or credentials in it")},
)
async def create_webhook(
    request: Request,
    body: WebhookIn,
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> WebhookCreated:
    """Deliver install events to `url`: a signed JSON POST per Standard Webhooks
    (`webhook-id`, `webhook-timestamp`, `webhook-signature`), at least once, in order per
    store, retried with backoff for at least 24 h. The signing `secret` is in this answer
    only. Receivers on private addresses need their host in
    `BROKER_WEBHOOK_ALLOWED_HOSTS`."""
    webhook, secret = await subscriptions.create(
        session, services(request).keyring, url=body.url, event_types=list(body.event_types),
        description=body.description, actor=caller.sub, request_id=request_id(request),
        stores=list(body.stores), include_raw=body.include_raw,
    )  # fmt: skip
    return WebhookCreated(**_out(webhook).model_dump(), secret=secret)


@router.get("/webhooks", tags=["webhooks"], summary="Webhook subscriptions", responses=ERRORS)
async def list_webhooks(
    session: SessionDep, _: Annotated[Caller, Depends(require_scope("installs:read"))]
) -> WebhookList:
    """Every subscription with its status; never a secret."""
    return WebhookList(items=[_out(w) for w in await subscriptions.listing(session)])


@router.get(
    "/webhooks/{webhook_id}",
    tags=["webhooks"],
    summary="One webhook subscription",
    responses={**ERRORS, **NO_WEBHOOK},
)
async def get_webhook(
    webhook_id: WebhookId,
    session: SessionDep,
    _: Annotated[Caller, Depends(require_scope("installs:read"))],
) -> WebhookOut:
    """The subscription and its status (`failing` once deliveries failed for 24 h)."""
    return _out(await subscriptions.require(session, webhook_id))


@router.delete(
    "/webhooks/{webhook_id}",
    tags=["webhooks"],
    status_code=204,
    summary="Remove a webhook subscription",
    responses={**ERRORS, **NO_WEBHOOK},
)
async def delete_webhook(
    request: Request,
    webhook_id: WebhookId,
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> Response:
    """Stops deliveries at once; what was still owed and the delivery log go with it."""
    await subscriptions.remove(session, webhook_id, actor=caller.sub,
                               request_id=request_id(request))  # fmt: skip
    return Response(status_code=204)


@router.post(
    "/webhooks/{webhook_id}/enable",
    tags=["webhooks"],
    summary="Re-enable a failing subscription",
    responses={**ERRORS, **NO_WEBHOOK},
)
async def enable_webhook(
    request: Request,
    webhook_id: WebhookId,
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> WebhookOut:
    """Active again: every event it missed while failing is delivered, in order, with a
    fresh retry window."""
    webhook = await subscriptions.enable(session, webhook_id, actor=caller.sub,
                                         request_id=request_id(request))  # fmt: skip
    return _out(webhook)


@router.post(
    "/webhooks/{webhook_id}/rotate-secret",
    tags=["webhooks"],
    summary="Replace the signing secret, with an overlap",
    responses={**ERRORS, **NO_WEBHOOK},
)
async def rotate_secret(
    request: Request,
    webhook_id: WebhookId,
    body: SecretRotationIn,
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> WebhookCreated:
    """A new signing `secret`, in this answer only. For `overlap_seconds` (default a day,
    at most 7 days) every delivery also carries a signature with the replaced secret, so
    the receiver can switch to the new one without rejecting a delivery; nothing owed is
    dropped. Rotating again during an overlap ends the earlier one."""
    webhook, secret = await subscriptions.rotate_secret(
        session, services(request).keyring, webhook_id, overlap_seconds=body.overlap_seconds,
        actor=caller.sub, request_id=request_id(request),
    )  # fmt: skip
    return WebhookCreated(**_out(webhook).model_dump(), secret=secret)


def _attempt_out(row: WebhookAttempt) -> AttemptOut:
    return AttemptOut(
        **row.model_dump(exclude={"webhook_id", "delivery_id"}),
        ok=row.status_code is not None and 200 <= row.status_code < 300,
    )


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    tags=["webhooks"],
    summary="Delivery attempts, newest first",
    responses={**ERRORS, **NO_WEBHOOK, **BAD_CURSOR},
)
async def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    _: Annotated[Caller, Depends(require_scope("installs:read"))],
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AttemptPage:
    """Every attempt: the event, the receiver's status (null: no answer), latency, error."""
    await subscriptions.require(session, webhook_id)
    before = _seq(cursor) if cursor else None
    rows = await deliveries.attempts_page(session, webhook_id, before, limit + 1)
    page, next_cursor = split_page(rows, limit, lambda row: encode_cursor(row.id))
    return AttemptPage(items=[_attempt_out(r) for r in page], next_cursor=next_cursor)
