"""`POST /invoke/{store_id}/{action}`: call Neto through the broker, never seeing a token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor

from service.access.pipeline import answer, capped_body, check_action
from service.errors import UnsupportedMediaType
from service.neto.actions import READ_ACTIONS, WRITE_ACTIONS
from service.web.api import ERRORS, StoreId, error
from service.web.body_limit import is_json
from service.web.deps import Caller, authenticate, require_scope
from service.web.lean import store_id as lean_store_id

router = APIRouter(tags=["invoke"])
PATH = "/invoke/{store_id}/{action:anytext}"


class _AnyText(Convertor[str]):
    """Matches every remaining character, newlines and slashes included, so that any name
    a caller sends reaches the exact-name check (Starlette's `path` stops at a newline)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())


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


@router.post(
    PATH,
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
        400: error(
            "The request is not valid (`validation_error`), e.g. with a `fields` claim a body "
            "that is not a JSON object"
        ),
        403: error(
            "Missing scope, store, or action outside the token's `actions`, or whose "
            "entity its `fields` claim does not list"
        ),
        404: error("No install for this store, or not a Neto action (`unknown_action`)"),
        409: error(
            "The store must be re-authorised, or the first request with this "
            "Idempotency-Key is still out (`idempotency_key_in_flight`)"
        ),
        410: error("The install was revoked"),
        413: error("The request body is over BROKER_MAX_REQUEST_BYTES"),
        415: error("The request body is not JSON"),
        429: error(
            "The store's budget stayed spent for BROKER_STORE_QUEUE_SECONDS, or Neto paused "
            "it; see `Retry-After`"
        ),
        502: error(
            "Neto unreachable, refused the credentials (store marked `reauth_required`), "
            "redirected, answered over BROKER_MAX_RESPONSE_BYTES, or (to a `fields` "
            "token) answered what is not a JSON object"
        ),
        504: error(
            "No answer within BROKER_UPSTREAM_DEADLINE_SECONDS, or a write with this "
            "Idempotency-Key may have reached Neto unanswered (`upstream_outcome_unknown`)"
        ),
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

    A token with a `fields` claim (per Neto entity, the `OutputSelector` names it may
    read: `{"Item": ["SKU", "AvailableSellQuantity"]}`; `OrderLine.SKU` reaches into
    nested records) reads only those: a read's `Filter.OutputSelector` is set to them, or
    narrowed to the requested names they allow, and Neto's answer keeps `Ack`,
    `CurrentTime`, `Messages` and the allowed fields of the action's entity, nested lists
    and single objects included; every other key is removed. An action whose entity the
    claim does not list is 403 `action_not_allowed`, nothing sent; the body must be a
    JSON object (400); an answer that is not a JSON object is withheld (502). Without the
    claim, body and answer pass byte for byte.

    Every call needs the `invoke` scope and the store in `stores`. The `actions` claim
    decides which actions: absent, every read and no write; present, exactly the actions
    it lists (exact names or `Prefix*`), reads included, so `["GetItem"]` grants GetItem
    and nothing else. Reads are retried on connection failures
    and 5xx; writes never are once sent. Per store: BROKER_STORE_MAX_IN_FLIGHT calls at a
    time, BROKER_STORE_RATE_PER_MINUTE calls a minute (lower after Neto answers 429: the
    budget is shared with the merchant's other add-ons), and a pause of
    BROKER_RATE_LIMIT_PAUSE_SECONDS after that 429. A call that finds the store's budget
    spent waits for its turn up to BROKER_STORE_QUEUE_SECONDS, then 429 with
    `Retry-After`. The token's `priority` claim picks the lane: `interactive` (the
    default) is served first; `batch` gives way to it and never spends the last
    (1 - BROKER_BATCH_SHARE) of the store's burst. Callers of one lane take turns.
    Answers and refusals carry `RateLimit-Policy` and `RateLimit` (the IETF draft) for the
    store and lane, e.g. `"interactive";q=500;w=60` and `"interactive";r=41;t=6`.

    A write sent with `Idempotency-Key: "<key>"` reaches Neto at most once per store,
    caller and key (BROKER_IDEMPOTENCY_TTL_HOURS): a repeat gets the first answer with
    `Idempotent-Replayed: true`, waits while the first is out (409
    `idempotency_key_in_flight` past its deadline), is 422 `idempotency_key_reused` with
    another body, and 504 `upstream_outcome_unknown` when the first may have reached Neto
    unanswered."""
    check_action(request, caller, store_id, action)
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json(content_type):
        raise UnsupportedMediaType()
    return await answer(request, caller, store_id, action, capped_body(request))


async def serve(request: Request) -> Response:
    """`invoke` as a lean route (service/web/lean.py): the caller first, then the path, in
    FastAPI's order (a dependency before the parameters)."""
    caller = authenticate(request, "invoke")
    return await invoke(request, lean_store_id(request), request.path_params["action"], caller)
