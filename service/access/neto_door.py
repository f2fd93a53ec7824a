"""`POST /neto/{store_id}/do/WS/NetoAPI`: Neto's own API protocol in front of the same
pipeline as `/invoke`, so a client written for Neto moves behind the broker by changing
its endpoint and its key.

Only the way the request arrives differs from `/invoke`: the action comes in
`NETOAPI_ACTION`; the caller JWT in `NETOAPI_KEY`, `X_SECRET_KEY` or `Authorization:
Bearer` (the values of `NETOAPI_USERNAME` and `X_ACCESS_KEY` mean nothing here and go
nowhere); the body may be JSON or XML, and its `Content-Type` and `Accept` are forwarded so
Neto answers in the format asked for. The broker's own refusals on this path are rendered
in Neto's error shape by `web/responses.py`.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import Headers

from service.access.pipeline import answer, capped_body, check_action
from service.errors import BadRequest, Unauthorized, UnsupportedMediaType
from service.neto.actions import READ_ACTIONS, WRITE_ACTIONS
from service.web.api import ERRORS, StoreId, error
from service.web.body_limit import is_json
from service.web.deps import BEARER_SECURITY, verify_caller
from service.web.lean import store_id as lean_store_id

router = APIRouter(tags=["neto"])
PATH = "/neto/{store_id}/do/WS/NetoAPI"

# Where a Neto client puts its key, in the order Neto documents them.
TOKEN_HEADERS = ("netoapi_key", "x_secret_key")
# A forwarded media header is a short printable value; anything else is refused, not sent.
_SANE_MEDIA = re.compile(r"^[\x20-\x7e]{1,256}$")


def is_xml(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/xml", "text/xml") or (
        media.startswith(("application/", "text/")) and media.endswith("+xml")
    )


def caller_token(headers: Headers) -> str:
    """The one caller JWT the request carries, from any of Neto's key headers or a bearer
    header. Two different tokens are refused: which one would the caller mean?"""
    found = {v.strip() for name in TOKEN_HEADERS for v in headers.getlist(name) if v.strip()}
    for value in headers.getlist("authorization"):
        kind, _, token = value.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("The Authorization header is not a bearer token.")
        found.add(token.strip())
    if not found:
        raise Unauthorized(
            "No caller token: send it in NETOAPI_KEY, X_SECRET_KEY or Authorization: Bearer.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if len(found) > 1:
        raise Unauthorized("The request carries two different caller tokens.")
    return found.pop()


def requested_action(headers: Headers) -> str:
    actions = headers.getlist("netoapi_action")
    if len(actions) != 1:
        raise BadRequest("Send exactly one NETOAPI_ACTION header naming the Neto action.")
    return actions[0]


def media_headers(headers: Headers) -> dict[str, str]:
    """The caller's Content-Type (JSON when absent) and Accept, as Neto should see them."""
    content_type = headers.get("content-type")
    if content_type is None:
        content_type = "application/json"
    elif not (is_json(content_type) or is_xml(content_type)):
        raise UnsupportedMediaType("The request body must be JSON or XML, as Neto takes it.")
    media = {"Content-Type": content_type}
    accept = headers.get("accept")
    if accept is not None:
        media["Accept"] = accept
    for name, value in media.items():
        if not _SANE_MEDIA.match(value):
            raise BadRequest(f"The {name} header is not a plain media type.")
    return media


def _header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string", **schema}}  # fmt: skip


# Declared by hand (FastAPI would turn `_` into `-`), so Swagger UI's "Try it out" sends
# them as a Neto client does.
PARAMETERS = [
    {**_header("NETOAPI_ACTION", "The Neto action, spelled exactly.",
               enum=sorted(READ_ACTIONS | WRITE_ACTIONS)), "required": True},
    _header("NETOAPI_KEY", "A caller JWT (or use X_SECRET_KEY, or Authorize)."),
    _header("NETOAPI_USERNAME", "Ignored: accepted so Neto clients need no change."),
    _header("X_SECRET_KEY", "A caller JWT, as an OAuth add-on client sends its token."),
    _header("X_ACCESS_KEY", "Ignored: accepted so Neto clients need no change."),
    _header("Accept", "Forwarded to Neto: `application/json`, or XML (Neto's default)."),
]  # fmt: skip
REQUEST_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {"type": "object", "additionalProperties": True},
            "example": {"Filter": {"SKU": ["ABC-1"], "OutputSelector": ["Name"]}},
        },
        "application/xml": {
            "schema": {"type": "string"},
            "example": '<?xml version="1.0" encoding="utf-8"?>\n<GetItem><Filter><SKU>ABC-1'
            "</SKU><OutputSelector>Name</OutputSelector></Filter></GetItem>",
        },
    },
}


@router.post(
    PATH,
    summary="Neto's own API protocol, for existing Neto clients",
    response_class=Response,
    openapi_extra={"parameters": PARAMETERS, "requestBody": REQUEST_BODY, **BEARER_SECURITY},
    responses={
        200: {
            "description": "Neto's answer: its status, body and content type, unchanged "
            "(no `X-Broker-Error`).",
            "content": {"application/json": {"example": {"Item": [], "Ack": "Success"}},
                        "application/xml": {"example": "<GetItemResponse>...</GetItemResponse>"}},
        },
        **ERRORS,
        400: error(
            "NETOAPI_ACTION missing or repeated, a media header that is not plain, or (with a "
            "`fields` claim) a body that is not a JSON object"
        ),
        401: error("No caller token, an invalid one, or two different ones"),
        403: error("Missing scope, store or action grant, or an entity `fields` does not list"),
        404: error("No install for this store, or not a Neto action (`unknown_action`)"),
        409: error(
            "The store must be re-authorised, or the first request with this "
            "Idempotency-Key is still out (`idempotency_key_in_flight`)"
        ),
        410: error("The install was revoked"),
        413: error("The request body is over BROKER_MAX_REQUEST_BYTES"),
        415: error(
            "The request body is neither JSON nor XML; with a `fields` claim, the request "
            "or the answer asked for (`Accept`) is not JSON"
        ),
        429: error(
            "The store's budget stayed spent for BROKER_STORE_QUEUE_SECONDS, or Neto paused "
            "it; see `Retry-After`"
        ),
        502: error("Neto unreachable, refused the credentials, or answered too much"),
        504: error(
            "No answer within BROKER_UPSTREAM_DEADLINE_SECONDS, or a write with this "
            "Idempotency-Key may have reached Neto unanswered (`upstream_outcome_unknown`)"
        ),
    },
)  # fmt: skip
async def neto_api(request: Request, store_id: StoreId) -> Response:
    """Point a Neto client at `{broker}/neto/{store_id}/do/WS/NetoAPI` and give it a caller
    JWT as its key (`NETOAPI_KEY`, `X_SECRET_KEY` or `Authorization: Bearer`); nothing
    else changes. The broker checks the token (scope `invoke`, the store, the action) as
    on `/invoke`, then sends the body with the caller's `Content-Type` and `Accept` and the
    store's real credentials, and returns Neto's status, body and content type unchanged.

    The broker's own refusals keep their HTTP status and `X-Broker-Error`, with a body in
    Neto's error shape (`Ack: Error`), in XML when the caller asked for XML. Limits,
    retries, metrics and audit are those of `/invoke`, and so is a `fields` claim, JSON
    only: with it an XML body, or an answer asked for in XML (or with no `Accept`, which
    makes Neto answer XML), is refused with 415."""
    headers = request.headers
    caller = verify_caller(request, caller_token(headers), "invoke")
    action = requested_action(headers)
    check_action(request, caller, store_id, action)
    media = media_headers(headers)
    return await answer(request, caller, store_id, action, capped_body(request), media)


async def serve(request: Request) -> Response:
    """`neto_api` as a lean route (service/web/lean.py)."""
    return await neto_api(request, lean_store_id(request))
