"""Every error becomes the contract's envelope: the broker's own errors, FastAPI's
validation errors, Starlette's 404/405, and database failures (503 when the database is
unavailable, 500 otherwise, never a stack trace)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.db import is_transient, is_unavailable
from service.errors import (
    BadRequest,
    BrokerError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from service.web.responses import error_response

log = logging.getLogger("broker")


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
