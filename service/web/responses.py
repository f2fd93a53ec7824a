"""Rendering errors: the JSON envelope; an HTML page on merchant-facing OAuth routes; and
Neto's own error shape on the Neto-compatible endpoint (`/neto/`), so Neto clients
surface the broker's refusals as they would Neto's. The status and `X-Broker-Error` are
the same whatever the shape."""

from __future__ import annotations

import html
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import orjson
from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, JSONResponse, Response

from service.errors import BrokerError

# The callback URL carries the code and state: no referrer may leak it, no cache keep it.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}

# Every answer on the passthrough routes, Neto's and the broker's own errors alike: Neto's
# body is whatever the store sent, so no browser may sniff it into HTML or run anything
# in it, even if a caller opens the URL directly.
PASSTHROUGH_PREFIXES = ("/invoke/", "/neto/")
PASSTHROUGH_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'"),
]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;
color:#1f2933}}h1{{font-size:1.4rem}}.ok{{color:#0b6e4f}}.err{{color:#b42318}}
small{{color:#667085}}</style></head>
<body><h1 class="{css}">{title}</h1><p>{message}</p>{extra}</body></html>
"""


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: the same compact bytes as Starlette's `JSONResponse` for
    the plain dicts and strings the broker answers with, in a fraction of the time."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def html_page(title: str, message: str, *, ok: bool, extra: str = "") -> str:
    return _PAGE.format(
        title=html.escape(title),
        message=html.escape(message),
        css="ok" if ok else "err",
        extra=extra,
    )


def _request_id(scope: Any) -> str:
    state = scope.get("state") or {}
    return str(state.get("request_id", ""))


def error_response(scope: Any, exc: BrokerError) -> Response:
    request_id = _request_id(scope)
    headers = {"X-Broker-Error": exc.code, "Cache-Control": "no-store", **exc.headers}
    if str(scope.get("path", "")).startswith("/oauth/"):
        page = html_page(
            "The install could not be completed",
            exc.detail,
            ok=False,
            extra=f"<p><small>Error {html.escape(exc.code)} · request {html.escape(request_id)}"
            "</small></p>",
        )
        return HTMLResponse(page, status_code=exc.status, headers={**headers, **PAGE_HEADERS})
    if str(scope.get("path", "")).startswith("/neto/"):
        return neto_error(scope, exc, request_id, headers)
    body = {"error": exc.code, "detail": exc.detail, "request_id": request_id}
    return FastJSONResponse(body, status_code=exc.status, headers=headers)


def wants_xml(scope: Any) -> bool:
    """Did the caller ask for XML? Its Accept decides; without a preference there, the
    format of what it sent (Neto's own default answer is XML, but a JSON client that
    omits Accept still reads JSON best)."""
    headers = Headers(scope=scope)
    accept = headers.get("accept", "").lower()
    if "json" in accept:
        return False
    if "xml" in accept:
        return True
    return "xml" in headers.get("content-type", "").lower()


def neto_error(scope: Any, exc: BrokerError, request_id: str, headers: dict[str, str]) -> Response:
    description = f"{exc.code} (request {request_id})"
    if wants_xml(scope):
        # Neto names the root after the action (`GetItemResponse`) when there is one.
        action = str((scope.get("state") or {}).get("action", ""))
        root = f"{action}Response" if action.isalnum() else "Response"
        body = (
            f'<?xml version="1.0" encoding="utf-8"?>\n<{root}><Ack>Error</Ack><Messages><Error>'
            f"<Message>{xml_escape(exc.detail)}</Message><SeverityCode>Error</SeverityCode>"
            f"<Description>{xml_escape(description)}</Description></Error></Messages></{root}>"
        )
        return Response(body, status_code=exc.status, headers=headers,
                         media_type="application/xml")  # fmt: skip
    error = {"Message": exc.detail, "SeverityCode": "Error", "Description": description}
    neto = {"Ack": "Error", "Messages": {"Error": [error]}}
    return FastJSONResponse(neto, status_code=exc.status, headers=headers)
