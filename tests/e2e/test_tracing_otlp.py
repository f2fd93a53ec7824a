"""Tracing end to end: the broker under a real uvicorn, configured only by the standard
OTEL_* variables, exports its spans by OTLP/HTTP to a receiver on loopback, which decodes
them with opentelemetry-proto. The caller's trace id comes back in the exported spans."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service import tracing
from service.main import create_app
from tests.conftest import truncate
from tests.support import LiveBroker, register_api_key_store

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class OtlpReceiver:
    """POST /v1/traces: each export request decoded and kept."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def traces(self, request: web.Request) -> web.Response:
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(await request.read())
        self.requests.append(decoded)
        self.content_types.append(request.content_type)
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> list[Any]:
        return [
            span
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def service_names(self) -> set[str]:
        return {
            attr.value.string_value
            for request in self.requests
            for resource in request.resource_spans
            for attr in resource.resource.attributes
            if attr.key == "service.name"
        }

    async def start(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    receiver = await OtlpReceiver().start()
    yield receiver
    await receiver.stop()


async def test_spans_reach_a_real_otlp_receiver(
    otlp, settings_factory, neto, auth, database_url, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert not tracing.ENABLED
    neto.add_api_key_store("otlp.example.com", "api-user", "otlp-key-" + "k" * 30)
    try:
        app = create_app(settings_factory())
        assert tracing.ENABLED
        async with (
            LiveBroker(app) as broker,
            httpx.AsyncClient(base_url=broker.url, timeout=10) as client,
        ):
            await register_api_key_store(
                client, auth("installs:admin"), "O1", "otlp.example.com",
                api_key="otlp-key-" + "k" * 30,
            )  # fmt: skip
            r = await client.post(
                "/invoke/O1/GetItem", json={},
                headers={**auth("invoke", stores=["O1"]), "traceparent": TRACEPARENT},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.headers["traceresponse"].split("-")[1] == TRACE_ID
            # The batch processor exports every 50 ms; the server span ends last.
            async with asyncio.timeout(10):
                while not any(
                    s.trace_id.hex() == TRACE_ID and s.name.startswith("POST /invoke/")
                    for s in otlp.spans()
                ):
                    otlp.arrived.clear()
                    await otlp.arrived.wait()
        assert set(otlp.content_types) == {"application/x-protobuf"}
        assert "neto-token-broker" in otlp.service_names()
        ours = {s.name for s in otlp.spans() if s.trace_id.hex() == TRACE_ID}
        assert {"POST /invoke/{store_id}/{action:anytext}", "neto GetItem"} <= ours, ours
        assert all("traceparent" not in seen.headers for seen in neto.api_requests)
    finally:
        tracing.uninstall()
        await truncate(database_url)
