"""The application factory. `service.main:app` is built on first access, not at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import openapi
from service.api import audit as audit_api
from service.api import credentials, docs, health, installs, invoke, oauth, verify
from service.audit import AuditWriter
from service.body_limit import JsonBodyMiddleware
from service.config import Settings, load_settings
from service.db import create_engine, create_sessionmaker, is_transient, is_unavailable
from service.errors import (
    BadRequest,
    BrokerError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from service.middleware import RequestContextMiddleware
from service.neto.upstream import UpstreamClient
from service.responses import error_response
from service.security.callers import TokenVerifier
from service.security.crypto import KeyRing
from service.security.egress import ApiUrlBuilder, create_http_client, create_session
from service.store_cache import StoreCache

log = logging.getLogger("broker")

DESCRIPTION = """
Keeps every merchant's Neto by Maropost credentials and brokers access to them.

* **Merchants** install through `/oauth/install` (from Neto) or `/installs/start` (from
  the company's app) and return through `/oauth/callback`.
* **Internal services** present a caller JWT and either fetch a short-lived bundle
  (`/credentials/{store_id}`) or call Neto through `/invoke/{store_id}/{action}`.
* **Operators** inspect, verify and revoke installs under `/installs` and read `/audit`.

Press **Authorize** and paste a token from `broker token mint`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    app.state.engine = engine
    app.state.sessionmaker = sessionmaker
    session = create_session(settings)
    app.state.http = create_http_client(session, settings)
    app.state.upstream = UpstreamClient(session, app.state.api_urls, settings)
    app.state.store_cache = StoreCache(
        sessionmaker,
        app.state.keyring,
        settings.neto_client_id,
        poll_seconds=settings.store_cache_seconds,
        max_entries=settings.store_cache_max_entries,
    )
    app.state.audit_writer = AuditWriter(sessionmaker)
    app.state.audit_writer.start()
    try:
        await app.state.store_cache.start(preload=settings.store_cache_preload)
    except Exception:  # the database may be down at start; the cache then stays cold
        log.warning("store cache could not start; serving from the database")
    try:
        yield
    finally:
        await app.state.store_cache.stop()
        await app.state.audit_writer.stop()
        await app.state.http.aclose()
        await engine.dispose()


def _validation_detail(exc: RequestValidationError) -> str:
    """Where and what, never the offending value (it may be a secret)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request is not valid."


def install_error_handlers(app: FastAPI) -> None:
    async def broker_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BrokerError)
        return error_response(request.scope, exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith("/oauth/"):
            return error_response(request.scope, BadRequest(_validation_detail(exc)))
        return error_response(request.scope, ValidationFailed(_validation_detail(exc)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        mapped: BrokerError
        if exc.status_code == 404:
            mapped = NotFound()
        elif exc.status_code == 405:
            mapped = MethodNotAllowed()
        elif exc.status_code >= 500:
            mapped = InternalError()
        else:
            mapped = BadRequest(str(exc.detail))
        return error_response(request.scope, mapped)

    async def database_error(request: Request, exc: Exception) -> Response:
        if is_transient(exc) or is_unavailable(exc) or not isinstance(exc, SQLAlchemyError):
            log.warning(
                "database unavailable",
                extra={"fields": {"error_type": type(exc).__name__}},
            )
            return error_response(request.scope, ServiceUnavailable())
        log.error("database error", exc_info=exc)
        return error_response(request.scope, InternalError())

    app.add_exception_handler(BrokerError, broker_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SQLAlchemyError, database_error)
    app.add_exception_handler(ConnectionError, database_error)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    if settings.encryption_keys is None:
        raise ValueError("BROKER_ENCRYPTION_KEYS is not set")
    app = FastAPI(
        title="Neto Token Broker",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs is served by service.api.docs from packaged assets, never a CDN.
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
    app.state.settings = settings
    # Parsed once here: a bad key fails start-up, and no request parses a key.
    app.state.keyring = KeyRing.parse(settings.encryption_keys.get_secret_value())
    app.state.verifier = TokenVerifier(settings)
    app.state.api_urls = ApiUrlBuilder(settings.neto_api_url_template)
    install_error_handlers(app)
    app.add_middleware(JsonBodyMiddleware, max_bytes=settings.max_json_bytes)
    app.add_middleware(RequestContextMiddleware)
    # The hot routes first: a request is matched against the routes in this order.
    for module in (credentials, invoke, health, oauth, installs, verify, audit_api, docs):
        app.include_router(module.router)
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
