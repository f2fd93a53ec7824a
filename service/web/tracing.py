"""The server span of each request, installed outermost only when tracing is on
(service/tracing.py): off, requests never pass through here.

The caller's `traceparent`/`tracestate` is continued; the answer carries
`traceresponse` (W3C Trace Context level 2: version, trace id, the broker's span id,
flags), so a caller that sent none still learns the trace id. The span is named by the
route's template (never the raw path: a notification URL holds its token) and carries
the store, action and caller the request middleware recorded."""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing


class _Headers:
    """The propagators' getter over the ASGI header list (names are lower-case bytes)."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k == name]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _Headers()


def traceresponse(span: trace.Span) -> bytes:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}".encode()


class TracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent = propagate.extract(scope["headers"], getter=_GETTER)  # type: ignore[arg-type]
        method = scope["method"]
        span = tracing.tracer().start_span(
            method, context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": scope.get("scheme", "http")},
        )  # fmt: skip
        header = (b"traceresponse", traceresponse(span))
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            otel_context.detach(token)
            _finish(span, scope, status)


def _finish(span: trace.Span, scope: Scope, status: int) -> None:
    route = getattr(scope.get("route"), "path", None)
    attributes: dict[str, Any] = {}
    if isinstance(route, str):
        attributes["http.route"] = route
        span.update_name(f"{scope['method']} {route}")
    if status:
        attributes["http.response.status_code"] = status
    state = scope.get("state", {})
    for key, name in (("store_id", "broker.store_id"), ("action", "neto.action"),
                      ("caller", "broker.caller")):  # fmt: skip
        if key in state:
            attributes[name] = str(state[key])
    span.set_attributes(attributes)
    if status == 0 or status >= 500:
        span.set_status(StatusCode.ERROR)
    span.end()
