"""Tracing (service/tracing.py): the caller's traceparent continued, the trace id in the
request's log lines, its audit row, its spans and the answer's `traceresponse`; nothing
sent to Neto; nothing at all when tracing is off. Spans are exported to the SDK's
in-memory exporter; tests/e2e/test_tracing_otlp.py exports them over OTLP for real."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.web.logs import JsonFormatter
from tests.fakes import neto as fake
from tests.support import audit_rows, register_api_key_store

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
API_KEY = "trace-key-" + "k" * 30
DOMAIN = "traced.example.com"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for the apps this test builds (before `app`)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The broker's JSON log lines, as `logs.configure` formats them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("broker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


def lines_of(out: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return [line for line in parsed if line.get("request_id") == request_id]


def hex_trace(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


async def api_key_store(client: Any, neto: Any, auth: Any, store_id: str = "T1") -> None:
    neto.add_api_key_store(DOMAIN, "api-user", API_KEY)
    await register_api_key_store(client, auth("installs:admin"), store_id, DOMAIN, api_key=API_KEY)


async def test_a_bundle_continues_the_callers_trace(spans, app, client, neto, auth, log_lines):
    await api_key_store(client, neto, auth)
    spans.clear()
    r = await client.get(
        "/credentials/T1",
        headers={**auth("credentials:read", stores=["T1"]), "traceparent": TRACEPARENT,
                 "tracestate": "vendor=1"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    version, trace_id, span_id, flags = r.headers["traceresponse"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")

    exported = spans.get_finished_spans()
    [server] = [s for s in exported if s.name == "GET /credentials/{store_id}"]
    assert hex_trace(server) == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
    assert format(server.context.span_id, "016x") == span_id
    assert server.context.trace_state.to_header() == "vendor=1"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["broker.store_id"] == "T1"
    assert "url.path" not in server.attributes
    names = {s.name for s in exported if hex_trace(s) == TRACE_ID}
    assert {"store_cache.miss", "audit.write"} <= names, names
    db = [s for s in exported if s.name.startswith("db ") and hex_trace(s) == TRACE_ID]
    assert db and all(s.attributes and s.attributes["db.system.name"] for s in db)

    [row] = [row for row in await audit_rows(app) if row["event"] == "bundle.issued"]
    assert row["details"]["trace_id"] == TRACE_ID

    lines = lines_of(log_lines, r.headers["x-request-id"])
    assert lines and all(line["trace_id"] == TRACE_ID for line in lines), lines
    secret = json.dumps([dict(s.attributes or {}) for s in exported])
    assert API_KEY not in secret


async def test_invoke_spans_each_attempt_and_sends_no_traceparent_to_neto(
    spans, app, client, neto, auth, log_lines
):
    await api_key_store(client, neto, auth)
    neto.api_responses.append(fake.answer(503, b'{"Ack":"Error"}', "application/json"))
    spans.clear()
    r = await client.post(
        "/invoke/T1/GetItem", json={"Filter": {"SKU": ["S1"]}},
        headers={**auth("invoke", stores=["T1"]), "traceparent": TRACEPARENT},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["traceresponse"].split("-")[1] == TRACE_ID

    assert len(neto.api_requests) == 2
    for seen in neto.api_requests:
        assert not {"traceparent", "tracestate", "traceresponse"} & set(seen.headers), seen.headers

    exported = spans.get_finished_spans()
    attempts = sorted(
        (s for s in exported if s.name == "neto GetItem"),
        key=lambda s: s.attributes["broker.retry"] if s.attributes else -1,
    )
    assert [dict(s.attributes or {}) for s in attempts] == [
        {"neto.action": "GetItem", "broker.store_id": "T1", "broker.retry": 0,
         "http.response.status_code": 503},
        {"neto.action": "GetItem", "broker.store_id": "T1", "broker.retry": 1,
         "http.response.status_code": 200},
    ]  # fmt: skip
    [server] = [s for s in exported if s.name == "POST /invoke/{store_id}/{action:anytext}"]
    assert all(hex_trace(s) == TRACE_ID for s in attempts)
    assert all(s.parent and s.parent.span_id == server.context.span_id for s in attempts)
    assert server.attributes and server.attributes["neto.action"] == "GetItem"
    lines = lines_of(log_lines, r.headers["x-request-id"])
    assert lines and all(line["trace_id"] == TRACE_ID for line in lines)
    text = json.dumps([dict(s.attributes or {}) for s in exported])
    assert API_KEY not in text and "S1" not in text  # no secret, no body


async def test_without_a_traceparent_a_new_trace_is_started_and_answered(spans, client):
    r = await client.get("/healthz")
    trace_id = r.headers["traceresponse"].split("-")[1]
    [server] = [s for s in spans.get_finished_spans() if s.name.startswith("GET")]
    assert hex_trace(server) == trace_id and server.parent is None


async def test_tracing_off_adds_nothing(app, client, neto, auth, log_lines):
    assert not tracing.ENABLED
    await api_key_store(client, neto, auth)
    r = await client.get(
        "/credentials/T1",
        headers={**auth("credentials:read", stores=["T1"]), "traceparent": TRACEPARENT},
    )
    assert r.status_code == 200
    assert "traceresponse" not in r.headers
    lines = lines_of(log_lines, r.headers["x-request-id"])
    assert lines and not any("trace_id" in line for line in lines)
    [row] = [row for row in await audit_rows(app) if row["event"] == "bundle.issued"]
    assert "trace_id" not in row["details"]


async def test_webhook_change_and_delivery_are_traced(
    spans, app_factory, settings_factory, neto, auth, receiver
):
    app = await app_factory(settings_factory(events_poll_seconds=0.1, webhook_timeout_seconds=1))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        r = await client.post(
            "/webhooks", json={"url": receiver.url},
            headers={**auth("installs:admin"), "traceparent": TRACEPARENT},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        hook = r.json()
        [row] = [row for row in await audit_rows(app) if row["event"] == "webhook.created"]
        assert row["details"]["trace_id"] == TRACE_ID
        await register_api_key_store(client, auth("installs:admin"), "W1")
        [got] = await receiver.wait_for(1)
    delivered: list[ReadableSpan] = []
    for _ in range(100):  # the span ends once the receiver's answer is read
        delivered = [s for s in spans.get_finished_spans() if s.name == "webhook.deliver"]
        if delivered:
            break
        await asyncio.sleep(0.05)
    [span] = delivered
    assert span.attributes is not None
    assert span.attributes["broker.webhook_id"] == hook["id"]
    assert span.attributes["broker.event_id"] == got.event["id"]
    assert span.attributes["http.response.status_code"] == 200
    assert hook["secret"] not in json.dumps(dict(span.attributes))
