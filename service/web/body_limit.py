"""Request bodies of the broker's own JSON routes: capped before anything parses them,
and JSON only.

The body is read here, at most BROKER_MAX_JSON_BYTES of it (a declared Content-Length
over the cap is refused without reading), then handed on unchanged. A body that is not
`application/json` (or `application/*+json`) is refused with 415 before FastAPI tries to
make sense of it. `/invoke/` and `/neto/` are left alone: they stream larger bodies (XML
too, on `/neto/`) under BROKER_MAX_REQUEST_BYTES; `/neto-notify/` takes Neto's XML under
BROKER_NOTIFY_MAX_BYTES (service/inbound/routes.py).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BadRequest, BrokerError, PayloadTooLarge, UnsupportedMediaType
from service.web.responses import error_response

BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXEMPT_PREFIXES = ("/invoke/", "/neto/", "/neto-notify/")


def is_json(content_type: str | None) -> bool:
    """No Content-Type is read as JSON (FastAPI does too); anything else must say JSON."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in BODYLESS_METHODS
            or str(scope["path"]).startswith(EXEMPT_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            body = await read_capped(headers, receive, self.max_bytes)
            if body and not is_json(headers.get("content-type")):
                raise UnsupportedMediaType()
        except BrokerError as exc:
            await error_response(scope, exc)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def read_capped(headers: Headers, receive: Receive, limit: int) -> bytes | None:
    """The whole body, refused with 413 as soon as it passes `limit`: by its
    Content-Length up front, or while streaming (chunked), before it is all read.
    None when the client went away."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number.")
        if int(declared) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
