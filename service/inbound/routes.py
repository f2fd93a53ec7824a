"""`POST /neto-notify/{store_id}/{token}`, where Neto posts a store's notifications, and
the operators' view of each store's URL under `/installs/{store_id}/notifications`.

The receiver answers as soon as the notification and its event are committed (Neto
times out and counts a slow answer as undelivered); webhooks go out after, from the
delivery worker. Nothing is written for a request that is refused."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import Headers

from service.errors import (
    BadRequest,
    BrokerError,
    PayloadTooLarge,
    RateLimited,
    StoreRevoked,
    Unauthorized,
)
from service.inbound import tokens
from service.inbound.normalise import parse
from service.inbound.schemas import NotificationUrl, Received
from service.neto.credentials import STORE_ID_MAX_LENGTH, STORE_ID_PATTERN
from service.oauth.throttle import address_prefix, client_address
from service.services import Services, services
from service.web import metrics
from service.web.api import ERRORS, NOT_FOUND, Responses, StoreId, error, no_store
from service.web.deps import Caller, SessionDep, request_id, require_scope
from service.web.responses import FastJSONResponse

router = APIRouter(tags=["notifications"])
admin_router = APIRouter(prefix="/installs", tags=["installs"], dependencies=[Depends(no_store)])

PATH_WITH_TOKEN = "/neto-notify/{store_id}/{token}"  # noqa: S105  (a path template)
PATH = "/neto-notify/{store_id}"
TOKEN_HEADER = "netoapi_key"  # noqa: S105  (a header name)
_REFUSED: Responses = {
    400: error("Not a notification: malformed, or XML with a DTD or entities"),
    401: error("No token, or not this store's"),
    410: error("The store's install was revoked"),
    413: error("The body is over BROKER_NOTIFY_MAX_BYTES"),
    429: error("Too many from this address, or for this store; Retry-After says when"),
}
_REASONS = {
    Unauthorized: "unauthorized",
    StoreRevoked: "revoked",
    BadRequest: "invalid",
    PayloadTooLarge: "too_large",
    RateLimited: "rate_limited",
}
_STORE_ID_RE = re.compile(STORE_ID_PATTERN)


def _refused(exc: BrokerError) -> BrokerError:
    reason = next((name for kind, name in _REASONS.items() if isinstance(exc, kind)), "other")
    metrics.series(metrics.NOTIFICATIONS_REFUSED, reason).inc()
    return exc


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` (by Content-Length before reading)."""
    declared = Headers(scope=request.scope).get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"The notification is larger than {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The notification is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _receive(request: Request, store_id: str, token: str | None) -> Received:
    app = services(request)
    gate = app.notify_gate
    prefix = address_prefix(client_address(request, app.settings.trusted_proxies))
    key = store_id[: STORE_ID_MAX_LENGTH + 1]
    try:
        gate.arrive(prefix, key)
    except RateLimited as exc:
        raise _refused(exc) from None
    try:
        body = await _body(request, app.settings.notify_max_bytes)
    except PayloadTooLarge as exc:
        gate.refused(prefix, key)
        raise _refused(exc) from None
    with app.notify_writer.handling():  # the webhook worker lets it go first
        return await _accept(request, app, store_id, token, body, (prefix, key))


async def _accept(
    request: Request,
    app: Services,
    store_id: str,
    token: str | None,
    body: bytes,
    sender: tuple[str, str],
) -> Received:
    """`sender`: the (address prefix, store key) a refusal is counted against."""
    gate = app.notify_gate
    try:
        verdict = tokens.Verdict.WRONG
        if len(store_id) <= STORE_ID_MAX_LENGTH and _STORE_ID_RE.match(store_id):
            verdict = await app.notify_writer.check(store_id, token)
        if verdict is tokens.Verdict.WRONG:
            raise Unauthorized("This is not the store's notification URL (or its token).")
        if verdict is tokens.Verdict.REVOKED:
            raise StoreRevoked()
        note = parse(body, request.headers.get("content-type"))
    except (Unauthorized, BadRequest) as exc:
        gate.refused(*sender)
        raise _refused(exc) from None
    except BrokerError as exc:
        raise _refused(exc) from None
    request.state.store_id = store_id
    try:
        with gate.store(store_id):
            done = await app.notify_writer.write(store_id, note, body)
    except RateLimited as exc:
        raise _refused(exc) from None
    outcome = "duplicate" if done.duplicate else "accepted"
    metrics.series(metrics.NOTIFICATIONS, note.event_type, outcome).inc()
    return Received(duplicate=done.duplicate, event_id=done.event_id)


_DOC = """Where Neto posts one store's notifications (XML as Neto sends them, or the same
shape in JSON). The token is the broker's, issued per store (`broker notifications url`,
`POST /installs/{store_id}/notifications/rotate`); in the path, or, without it, in the
`NETOAPI_KEY` header (with a token in the path, `NETOAPI_KEY` is Neto's own and is not
read). Each notification becomes one event (`neto.order.updated`, or `neto.notification`
for another kind) in `/events` and the webhooks; the same one sent again (same
`EventID`) is answered 200 with `duplicate: true` and no second event. Refused, with
nothing written: a wrong token (401), a revoked install (410), a DTD or entity, bad
XML or JSON (400), a body over BROKER_NOTIFY_MAX_BYTES (413), too many (429)."""


@router.post(
    PATH_WITH_TOKEN,
    summary="Receive a Neto notification (token in the URL)",
    responses=_REFUSED,
    description=_DOC,
)
async def notify_with_path_token(request: Request, store_id: str, token: str) -> Received:
    return await _receive(request, store_id, token)


@router.post(
    PATH,
    summary="Receive a Neto notification (token in NETOAPI_KEY)",
    responses=_REFUSED,
    description=_DOC,
)
async def notify_with_header_token(request: Request, store_id: str) -> Received:
    return await _receive(request, store_id, request.headers.get(TOKEN_HEADER))


# A burst of notifications is the receiver's whole load, and FastAPI's request handling
# cost more than the route's own work: both routes are also served lean
# (service/web/lean.py). A store id that is not one is 401 there too, never 422.
async def serve_with_path_token(request: Request) -> Response:
    params = request.path_params
    received = await notify_with_path_token(request, params["store_id"], params["token"])
    return FastJSONResponse(received.model_dump())


async def serve_with_header_token(request: Request) -> Response:
    received = await notify_with_header_token(request, request.path_params["store_id"])
    return FastJSONResponse(received.model_dump())


def _view(request: Request, state: tokens.TokenState, token: str | None = None) -> NotificationUrl:
    public = services(request).settings.public_url
    url = None
    if state.issued_at is not None:
        url = tokens.url_of(public, state.store_id, token or tokens.PREFIX + "…")
    return NotificationUrl(
        store_id=state.store_id, issued=state.live, url=url, issued_at=state.issued_at,
        issued_by=state.issued_by, revoked_at=state.revoked_at,
    )  # fmt: skip


@admin_router.get(
    "/{store_id}/notifications",
    summary="The store's Neto notification URL",
    responses={**ERRORS, **NOT_FOUND},
)
async def notification_url(
    request: Request,
    store_id: StoreId,
    session: SessionDep,
    _: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> NotificationUrl:
    """Whether the store has a notification URL, when and by whom it was issued, and the
    URL with its token hidden (the broker keeps only a hash: the full URL is in the answer
    of the rotation that issued it). To get one, rotate."""
    return _view(request, await tokens.state(session, store_id))


@admin_router.post(
    "/{store_id}/notifications/rotate",
    summary="Issue the store's Neto notification URL (again)",
    responses={**ERRORS, **NOT_FOUND, 410: error("The install was revoked")},
)
async def rotate_notification_url(
    request: Request,
    store_id: StoreId,
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> NotificationUrl:
    """A new URL for the store, in full in this answer only: paste it into Neto's control
    panel (Settings & Tools → API Settings). The previous URL stops working at once (Neto
    resends what it could not deliver, when the merchant turned that on). Audited
    (`notifications.token_issued`)."""
    request.state.store_id = store_id
    state, token = await tokens.issue(session, store_id, actor=caller.sub,
                                      request_id=request_id(request))  # fmt: skip
    return _view(request, state, token)
