"""OpenTelemetry tracing: off unless the standard OTEL_* variables ask for an OTLP export.

Hand-made spans, not the ASGI, aiohttp and SQLAlchemy instrumentations: the hot routes
bypass most of FastAPI (web/lean.py), the aiohttp instrumentation would inject
`traceparent` into every call to Neto (a third party: it must not learn the callers'
trace ids), and FastAPI's own span records the query string (an OAuth `code`, a state).
Off, nothing is installed: no middleware, no engine listener, and each place that would
start a span checks one module-level boolean (`ENABLED`).

On: the caller's `traceparent`/`tracestate` is continued (the propagators of
OTEL_PROPAGATORS, W3C Trace Context by default); each request has a server span
(web/tracing.py) with children for the database statements, a store cache miss, a wait
for the store's budget and each upstream attempt. Attributes are ids, names and numbers
only: never a secret, a URL path (a notification URL holds a token) or a body, and an
exception is recorded by its class name, never its message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind as SpanKind
from opentelemetry.trace import StatusCode as StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine

# True while a tracer provider is installed; read on the hot path instead of a lookup.
ENABLED = False
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()

NAME = "neto-token-broker"
FLUSH_MILLIS = 5000


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for an OTLP trace export."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if "otlp" not in {e.strip() for e in exporters.split(",")}:
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure_from_environment(version: str) -> bool:
    """Install an OTLP/HTTP exporting provider if the environment asks for one and none is
    installed yet. The SDK reads every other OTEL_* variable itself (headers, timeout,
    compression, sampler, batch sizes, resource attributes, service name)."""
    if ENABLED or not wanted():
        return ENABLED
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str] = {"service.version": version}
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = NAME
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return True


def install(provider: TracerProvider) -> None:
    """Trace through `provider` (the environment's exporter, or a test's in-memory one).
    Not the global provider: FastAPI's native telemetry and other libraries would pick
    that up."""
    global ENABLED, _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(NAME)
    ENABLED = True


def uninstall() -> None:
    """Stop tracing: what is batched is exported, the exporter's thread stopped."""
    global ENABLED, _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    ENABLED = False
    _provider = None
    _tracer = trace.NoOpTracer()


def flush() -> None:
    """Export what is batched (at shutdown: the last requests' spans are not lost), for at
    most FLUSH_MILLIS: a collector that is down must not hold up the pod's shutdown."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=FLUSH_MILLIS)


def tracer() -> trace.Tracer:
    return _tracer


def current_trace_id() -> str | None:
    """The current trace's id as 32 hex digits, or None outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


@contextmanager
def span(
    name: str, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[trace.Span]:
    """A child span of the current one. An exception marks it failed by its class name
    only (its message may name a URL or a value)."""
    with _tracer.start_as_current_span(
        name, kind=kind, attributes=attributes, record_exception=False,
        set_status_on_exception=False,
    ) as current:  # fmt: skip
        try:
            yield current
        except BaseException as exc:
            current.set_attribute("error.type", type(exc).__name__)
            current.set_status(StatusCode.ERROR)
            raise


def watch_engine(engine: AsyncEngine) -> None:
    """One span per statement inside a traced request (background work, with no span of
    its own, starts none). The statement's first word only: the text is long, and the
    parameters, bound separately, are never read."""
    from sqlalchemy import event

    system = engine.dialect.name

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
               executemany: bool) -> None:  # fmt: skip
        if not trace.get_current_span().is_recording():
            return
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        current = _tracer.start_span(
            f"db {operation}".strip(), kind=SpanKind.CLIENT,
            attributes={"db.system.name": system, "db.operation.name": operation},
        )  # fmt: skip
        context._broker_span = current

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:  # fmt: skip
        current = getattr(context, "_broker_span", None)
        if current is not None:
            current.end()
            context._broker_span = None

    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        current = getattr(context, "_broker_span", None) if context is not None else None
        if current is not None:
            current.set_attribute("error.type", type(exception_context.original_exception).__name__)
            current.set_status(StatusCode.ERROR)
            current.end()
            context._broker_span = None

    sync = engine.sync_engine
    event.listen(sync, "before_cursor_execute", before)
    event.listen(sync, "after_cursor_execute", after)
    event.listen(sync, "handle_error", failed)
