"""Every error becomes the contract's envelope: the broker's own errors, FastAPI's
validation errors, Starlette's 404/405, and database failures (503 when the database is
unavailable, 422 for text it cannot store, 500 otherwise, never a stack trace)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette._utils import get_route_path
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

# PostgreSQL's SQLSTATEs for text it cannot store: 22021 character_not_in_repertoire (a
# NUL byte, a byte sequence that is not UTF-8), 22P05 untranslatable_character (none in
# the database's encoding). asyncpg raises them as CharacterNotInRepertoireError and
# UntranslatableCharacterError; the SQLAlchemy error's `orig` carries the state.
_UNSTORABLE_TEXT_STATES = frozenset({"22021", "22P05"})


def _is_lone_surrogate(exc: BaseException) -> bool:
    """A string with half a UTF-16 pair (JSON's "\\ud800" decodes to one) cannot be
    encoded for any database: the driver refuses it before sending (asyncpg wraps the
    UnicodeEncodeError in its DataError, SQLite's driver raises it bare). Only a caller's
    text holds one; the broker never makes one."""
    return isinstance(exc, UnicodeEncodeError) and exc.reason == "surrogates not allowed"


def _is_unstorable_text(exc: BaseException) -> bool:
    """The database, or its driver, refused a text value the caller sent. Every field is
    checked before it gets there (control characters are refused with their own detail);
    this is the backstop for a field that is not, so the caller's mistake is a 422, not
    our 500. SQLite has no NUL refusal: it stores a NUL as any other character."""
    if isinstance(exc, DBAPIError) and (
        getattr(exc.orig, "sqlstate", None) in _UNSTORABLE_TEXT_STATES
    ):
        return True
    cause: BaseException | None = exc
    for _ in range(4):  # DBAPIError <- the dialect's error <- asyncpg's <- the encoding's
        if cause is None:
            return False
        if _is_lone_surrogate(cause):
            return True
        cause = cause.__cause__
    return False


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
        # The route's path, without a `root_path` in front (as routes match it).
        if get_route_path(request.scope).startswith("/oauth/"):
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

    def unstorable_text(request: Request, exc: Exception) -> Response:
        # Never the error's text: it holds the value, which may be a secret. The access
        # log line of the same request id names the route.
        log.warning(
            "the database refused a text value of the request",
            extra={"fields": {"error_type": type(exc).__name__}},
        )
        return error_response(
            request.scope,
            ValidationFailed(
                "A text value holds a character the database cannot store "
                "(a NUL byte, half a surrogate pair, a sequence that is not UTF-8)."
            ),
        )

    async def encoding_error(request: Request, exc: Exception) -> Response:
        if _is_unstorable_text(exc):
            return unstorable_text(request, exc)
        raise exc  # the broker's own mistake: the request middleware's 500, logged there

    async def database_error(request: Request, exc: Exception) -> Response:
        if _is_unstorable_text(exc):
            return unstorable_text(request, exc)
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
    app.add_exception_handler(UnicodeEncodeError, encoding_error)
