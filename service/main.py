"""The application factory. `service.main:app` is built on first access, not at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI

from service import tracing
from service.access import bundles, invoke, neto_door
from service.audit import routes as audit_routes
from service.config import Settings, load_settings
from service.events import routes as event_routes
from service.inbound import routes as inbound_routes
from service.installs import routes as install_routes
from service.oauth import routes as oauth_routes
from service.services import StartupConfig, running
from service.web import docs, health, lean, openapi
from service.web.body_limit import JsonBodyMiddleware
from service.web.handlers import install_error_handlers
from service.web.middleware import RequestContextMiddleware
from service.web.tracing import TracingMiddleware

DESCRIPTION = """
Keeps every merchant's Neto by Maropost credentials and brokers access to them.

* **Merchants** install through `/oauth/install` (from Neto) or `/installs/start` (from
  the company's app) and return through `/oauth/callback`.
* **Internal services** present a caller JWT and either fetch a short-lived bundle
  (`/credentials/{store_id}`) or call Neto through `/invoke/{store_id}/{action}`, or
  keep their Neto client and point it at `/neto/{store_id}/do/WS/NetoAPI`.
* **Operators** inspect, verify and revoke installs under `/installs` and read `/audit`.
* **Internal services** follow install changes through `/events` (long polling) or
  webhooks (`/webhooks`).

Press **Authorize** and paste a token from `broker token mint`.
"""

VERSION = version("neto-token-broker")


def create_app(settings: Settings | None = None) -> FastAPI:
    # Parsed now: a bad key or URL template fails start-up, and no request parses a key.
    config = StartupConfig.load(settings or load_settings())
    # OTLP export when the standard OTEL_* variables ask for it (service/tracing.py).
    tracing.configure_from_environment(VERSION)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with running(config) as services:
                app.state.services = services
                yield
        finally:
            tracing.flush()  # the last requests' spans leave before the process does

    app = lean.LeanApp(
        title="Neto Token Broker",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs is served by service.web.docs from packaged assets, never a CDN.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        openapi_tags=docs.TAGS,
        # No 307 to the slash-less path: its Location is built from the Host header (an
        # open redirect) and it is not the envelope. A trailing slash is a plain 404.
        redirect_slashes=False,
        # The broker exports Prometheus metrics itself; FastAPI's native OpenTelemetry
        # hook would otherwise look up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.add_middleware(JsonBodyMiddleware, max_bytes=config.settings.max_json_bytes)
    app.add_middleware(RequestContextMiddleware)
    if tracing.ENABLED:  # outermost, so the access line is written inside the span
        app.add_middleware(TracingMiddleware)
    for router in (
        bundles.router,
        invoke.router,
        neto_door.router,
        health.router,
        oauth_routes.router,
        install_routes.router,
        audit_routes.router,
        event_routes.router,
        inbound_routes.router,
        inbound_routes.admin_router,
        docs.router,
    ):
        app.include_router(router)
    # The hot routes, answered ahead of FastAPI's request handling (service/web/lean.py).
    app.serve_lean(
        [
            ("GET", bundles.PATH, bundles.serve),
            ("POST", invoke.PATH, invoke.serve),
            ("POST", neto_door.PATH, neto_door.serve),
            ("POST", inbound_routes.PATH_WITH_TOKEN, inbound_routes.serve_with_path_token),
            ("POST", inbound_routes.PATH, inbound_routes.serve_with_header_token),
        ],
    )
    openapi.install(app)
    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # `service.main:app` for uvicorn, built on first access so importing this module
    # never reads settings or opens anything.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
