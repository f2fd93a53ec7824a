"""The passthrough pipeline both doors to Neto share (`/invoke` and the Neto-compatible
endpoint): the store and action checks, the capped request body, the store's usable
credentials, the revoke fence, the upstream call under the store's limits, and what a
refusal of the credentials means for the store (confirmed by the install service before
the store is flagged). A door only decides how the caller, the action and the body
arrive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from service.access import fields
from service.errors import (
    BrokerError,
    StoreNotFound,
    StoreReauthRequired,
    StoreRevoked,
    UnknownAction,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnreachable,
)
from service.idempotency import store as idempotency
from service.installs.models import InstallStatus
from service.installs.service import require_client
from service.neto.actions import ALL_ACTIONS, is_write
from service.neto.credentials import StoreCredentials
from service.neto.upstream import JSON_MEDIA, StoreChanged, UpstreamResponse
from service.security.callers import Caller
from service.services import services
from service.web.body_limit import read_capped
from service.web.deps import request_id


async def usable_store(request: Request, store_id: str, caller: Caller) -> StoreCredentials:
    """The store's opened credentials, or the error that says why it cannot be used. The
    caller's `apps` claim is checked before the store's status is told."""
    request.state.store_id = store_id
    creds = await services(request).store_cache.get(store_id)
    if creds is None:
        raise StoreNotFound()
    caller.require_app(creds.app)
    require_client(creds)
    if creds.status == InstallStatus.revoked:
        raise StoreRevoked()
    if creds.status == InstallStatus.reauth_required:
        raise StoreReauthRequired()
    return creds


def check_action(request: Request, caller: Caller, store_id: str, action: str) -> None:
    """Exact action names only, decided before anything else upstream-related; then the
    caller's grants for the store and the action."""
    if action not in ALL_ACTIONS:
        raise UnknownAction()
    request.state.action = action
    caller.require_store(store_id)
    caller.require_action(action, is_write=is_write(action))


def capped_body(request: Request) -> Callable[[], Awaitable[bytes]]:
    """The request body, read only when `forward` asks for it (after the store is found
    usable) and refused with 413 past BROKER_MAX_REQUEST_BYTES."""

    async def read() -> bytes:
        limit = services(request).settings.max_request_bytes
        body = await read_capped(request.headers, request.receive, limit)
        if body is None:
            raise ClientDisconnect()
        return body

    return read


class StoreFence:
    """The revoke fence of one call (neto/upstream.Fence): if this replica saw the store
    change since the call read it (a revoke, a reinstall), it is read again, so a revoked
    store is never called after its revoke answered here (410), and a reinstalled one is
    called with its new token. Checked before each attempt and at the hand-off."""

    __slots__ = ("_cache", "_caller", "_creds", "_request", "_seen", "_store_id")

    def __init__(self, request: Request, store_id: str, caller: Caller) -> None:
        self._request = request
        self._store_id = store_id
        self._caller = caller  # a re-read checks its `apps` claim again (a reinstall moves)
        self._cache = services(request).store_cache
        self._seen = 0
        self._creds: StoreCredentials | None = None  # not read yet

    async def read(self) -> StoreCredentials:
        # The version is read before the credentials, so a change during the read counts;
        # and again until it holds still across a read: a read that overlapped a change
        # may have seen the row from before it.
        while self._creds is None or self._cache.version(self._store_id) != self._seen:
            self._seen = self._cache.version(self._store_id)
            self._creds = await usable_store(self._request, self._store_id, self._caller)
        return self._creds

    __call__ = read  # before each attempt

    def check(self) -> None:
        if self._cache.version(self._store_id) != self._seen:
            raise StoreChanged()


async def forward(
    request: Request,
    caller: Caller,
    store_id: str,
    action: str,
    read_body: Callable[[], Awaitable[bytes]],
    media: Mapping[str, str] = JSON_MEDIA,
) -> UpstreamResponse:
    """Send the caller's body to the store's API (`check_action` has passed) and return
    Neto's answer, or raise the broker's error that says why there is none."""
    app = services(request)
    fence = StoreFence(request, store_id, caller)
    creds = await fence.read()
    body = await read_body()
    rid = request_id(request)

    async def disconnected() -> None:
        # The body is read: what the server says next is that the caller went away.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    ticket = None
    key = request.headers.get(idempotency.HEADER)
    if key is not None and is_write(action):
        digest = idempotency.request_digest(action, media, body)
        begun = await app.idempotency.begin(
            store_id, caller.sub, idempotency.parse_key(key), digest
        )
        if isinstance(begun, UpstreamResponse):  # a first try's answer
            return begun
        ticket = begun

    def send() -> Awaitable[UpstreamResponse]:
        return app.upstream.call(
            creds, action, body, request_id=rid, fence=fence, media=media,
            lane=caller.priority, caller=caller.sub, disconnected=disconnected,
        )  # fmt: skip

    try:
        if is_write(action):
            answer = await send()
        else:  # an identical read already out answers this one too (neto/flights.py)
            # In its own lane: an interactive call never waits behind a queued batch one.
            same = (store_id, caller.priority, action, body, *media.items())
            answer = await app.upstream.reads.share(same, creds, send)
    except BaseException as exc:
        if ticket is not None:
            if _maybe_sent(exc):
                await app.idempotency.unknown(ticket)
            else:
                await app.idempotency.abandon(ticket)
        raise
    if ticket is not None:
        if answer.status in (401, 403):  # refused, not done: a retry may go out
            await app.idempotency.abandon(ticket)
        else:
            await app.idempotency.done(ticket, answer)
    if answer.status in (401, 403):
        # The store is flagged only if a verify read with the same credentials is refused
        # too: one caller's refused request must not lock the store for everyone.
        await app.installs.confirm_refusal(
            creds, actor=caller.sub, request_id=rid, action=action, upstream_status=answer.status
        )
        raise UpstreamUnauthorized()
    return answer


def _maybe_sent(exc: BaseException) -> bool:
    """Whether a write that failed so may have reached Neto: only the broker's own refusals
    before sending (and a caller that left while queued) are known not to have."""
    if isinstance(exc, (UpstreamTimeout, UpstreamResponseTooLarge)):
        return True
    if isinstance(exc, UpstreamUnreachable):
        return exc.maybe_sent
    return not isinstance(exc, (BrokerError, ClientDisconnect))


async def answer(
    request: Request,
    caller: Caller,
    store_id: str,
    action: str,
    read_body: Callable[[], Awaitable[bytes]],
    media: Mapping[str, str] = JSON_MEDIA,
) -> Response:
    """`forward`, and Neto's answer as the caller gets it: its status, body and content
    type unchanged. The answer, or the broker's refusal, carries the store's RateLimit
    headers for the caller's lane (draft-ietf-httpapi-ratelimit-headers), so callers can
    pace themselves; only callers granted the store see them (`check_action` passed)."""
    limits = services(request).upstream.limits
    try:
        # A `fields` token: the body narrowed on the way up, the answer stripped on the
        # way back (access/fields.py); without the claim both pass byte for byte.
        grant = fields.grant(caller, action, media)
        if grant is not None:
            read_body = grant.reading(read_body)
        upstream = await forward(request, caller, store_id, action, read_body, media)
        body = upstream.body if grant is None else grant.strip(upstream.body)
    except BrokerError as exc:
        exc.headers.update(limits.rate_headers(store_id, caller.priority))
        raise
    headers = limits.rate_headers(store_id, caller.priority)
    if upstream.content_type:
        headers["content-type"] = upstream.content_type
    if upstream.replayed:
        headers[idempotency.REPLAYED] = "true"
    return Response(body, status_code=upstream.status, headers=headers)
