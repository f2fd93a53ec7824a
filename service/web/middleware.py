"""The outermost layer of every request: request id, one access log line, metrics, and
the last-resort 500 envelope (a stack trace never reaches a caller)."""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InternalError
from service.web import metrics
from service.web.responses import PASSTHROUGH_HEADERS, PASSTHROUGH_PREFIXES, error_response

log = logging.getLogger("broker.access")
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        # A caller's id is echoed only if it is sane: no control characters, no injection.
        request_id = incoming if incoming and _SANE_REQUEST_ID.match(incoming) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        added = [(b"x-request-id", request_id.encode())]
        if str(scope.get("path", "")).startswith(PASSTHROUGH_PREFIXES):
            added += PASSTHROUGH_HEADERS

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The caller hung up mid-request: nobody to answer, nothing went wrong here.
            status = 499
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if not response_started:
                response = error_response(scope, InternalError())
                await response(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - started
            route = _route_template(scope)
            metrics.observe_request(scope["method"], route, status, duration)
            fields: dict[str, Any] = {
                "request_id": request_id,
                "method": scope["method"],
                "route": route,
                "status": status,
                "duration_ms": round(duration * 1000, 2),
            }
            for key in ("caller", "store_id", "action"):
                if key in state:
                    fields[key] = state[key]
            log.info("request", extra={"fields": fields})


def _route_template(scope: Scope) -> str:
    """The matched route's template, never the raw path (ids would explode metrics)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
