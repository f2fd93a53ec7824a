"""`POST /invoke/{store_id}/{action}`: call Neto through the broker, never seeing a token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor

from service.api.credentials import usable_store
from service.api.deps import request_id, require_scope
from service.api.installs import ERRORS, StoreId
from service.errors import (
    BadRequest,
    PayloadTooLarge,
    UnknownAction,
    UnsupportedMediaType,
    UpstreamUnauthorized,
)
from service.neto.actions import ALL_ACTIONS, READ_ACTIONS, WRITE_ACTIONS, is_write
from service.neto.upstream import UpstreamClient
from service.schemas import ErrorBody
from service.security.callers import Caller
from service.store_cache import StoreCache
from service.store_status import mark_reauth_required
from service.stores import StoreCredentials, credentials_fingerprint

router = APIRouter(tags=["invoke"])


class _AnyText(Convertor[str]):
    """Matches every remaining character, newlines and slashes included, so that any name
    a caller sends reaches the exact-name check (Starlette's `path` stops at a newline)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


REQUEST_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {"type": "object", "additionalProperties": True},
            "examples": {
                "GetItem": {"value": {"Filter": {"SKU": ["ABC-1"], "OutputSelector": ["Name"]}}},
                "GetCurrencySettings": {"value": {}},
            },
        }
    },
}
ACTION_DOC = (
    "A Neto API action, spelled exactly. Reads: "
    + ", ".join(sorted(READ_ACTIONS))
    + ". Writes: "
    + ", ".join(sorted(WRITE_ACTIONS))
    + ". Without an `actions` claim a token may call every read and no write; with one, "
    "that list is the complete allow-list, reads included."
)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The caller's body, refused with 413 as soon as it passes `limit`: by its
    Content-Length up front, or while streaming (chunked), before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number.")
        if int(declared) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    return bytes(body)


@router.post(
    "/invoke/{store_id}/{action:anytext}",
    summary="Call a Neto API action for a store",
    response_class=Response,
    openapi_extra={"requestBody": REQUEST_BODY},
    responses={
        200: {
            "description": "Neto's answer: its status, body and content type, unchanged "
            "(no `X-Broker-Error`). Neto often reports errors as 200 with `Ack: Error`.",
            "content": {"application/json": {"example": {"Item": [], "Ack": "Success"}}},
        },
        **ERRORS,
        403: _error("Missing scope, store, or action outside the token's `actions`"),
        404: _error("No install for this store, or not a Neto action (`unknown_action`)"),
        409: _error("The store must be re-authorised"),
        410: _error("The install was revoked"),
        413: _error("The request body is over BROKER_MAX_REQUEST_BYTES"),
        415: _error("The request body is not JSON"),
        429: _error("The store's budget is used up or Neto paused it; see `Retry-After`"),
        502: _error(
            "Neto unreachable, refused the credentials (store marked `reauth_required`), "
            "redirected, or answered over BROKER_MAX_RESPONSE_BYTES"
        ),
        504: _error("No answer within BROKER_UPSTREAM_DEADLINE_SECONDS"),
    },
)
async def invoke(
    request: Request,
    store_id: StoreId,
    action: Annotated[str, Path(description=ACTION_DOC)],
    caller: Annotated[Caller, Depends(require_scope("invoke"))],
) -> Response:
    """Forwards the JSON body to the store's Neto API with `NETOAPI_ACTION` and the store's
    credentials, and returns Neto's status, body and content type unchanged. Only
    `X-Request-ID` of the caller's headers is forwarded.

    Every call needs the `invoke` scope and the store in `stores`. The `actions` claim
    decides which actions: absent, every read and no write; present, exactly the actions
    it lists (exact names or `Prefix*`), reads included, so `["GetItem"]` grants GetItem
    and nothing else. Reads are retried on connection failures
    and 5xx; writes never are once sent. Per store: BROKER_STORE_MAX_IN_FLIGHT calls at a
    time, BROKER_STORE_RATE_PER_MINUTE calls a minute, and a pause of
    BROKER_RATE_LIMIT_PAUSE_SECONDS after Neto answers 429."""
    # Exact names only, decided before anything else upstream-related.
    if action not in ALL_ACTIONS:
        raise UnknownAction()
    request.state.action = action
    caller.require_store(store_id)
    write = is_write(action)
    caller.require_action(action, is_write=write)
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaType()
    cache: StoreCache = request.app.state.store_cache
    seen = cache.version(store_id)  # read before the credentials: a change during counts
    creds = await usable_store(request, store_id)
    body = await read_body(request, request.app.state.settings.max_request_bytes)
    upstream: UpstreamClient = request.app.state.upstream
    rid = request_id(request)

    async def fence() -> StoreCredentials:
        # Before each attempt: if this replica saw the store change since it was read (a
        # revoke, a reinstall), read it again, so a revoked store is never called after
        # its revoke answered here (410), and a reinstalled one is called with its new token.
        nonlocal creds, seen
        if cache.version(store_id) != seen:
            seen = cache.version(store_id)
            creds = await usable_store(request, store_id)
        return creds

    answer = await upstream.call(creds, action, body, request_id=rid, fence=fence)
    if answer.status in (401, 403):
        await mark_reauth_required(
            request.app.state, store_id, actor=caller.sub, request_id=rid, action=action,
            upstream_status=answer.status, token_fingerprint=credentials_fingerprint(creds),
        )  # fmt: skip
        raise UpstreamUnauthorized()
    headers = {"content-type": answer.content_type} if answer.content_type else None
    return Response(answer.body, status_code=answer.status, headers=headers)
