"""The hot routes (bundles, `/invoke`, the Neto door) served as plain Starlette routes.

For a route this small FastAPI's request handling (dependency solving, parameter
validation through pydantic, response handling) costs more than the route's own work; a
plain Starlette route skips it (docs/performance.md). Everything else is unchanged: the
same application, middleware, error handlers and envelope, access log and metrics. The
FastAPI declarations of these routes stay registered behind the lean ones: they are what
the OpenAPI document describes and the one implementation the lean routes call, with the
parameters checked here exactly as FastAPI checks them (same order, same 422 detail).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from service.errors import ValidationFailed
from service.neto.credentials import STORE_ID_MAX_LENGTH, STORE_ID_PATTERN, is_store_id

Endpoint = Callable[[Request], Awaitable[Response]]


class LeanRoute(Route):
    """A Starlette route that names itself in the scope as FastAPI's routes do (the access
    log and metrics label requests by route template), and answers only the methods it is
    given (Starlette would add HEAD to GET; FastAPI does not)."""

    def __init__(self, path: str, endpoint: Endpoint, method: str) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.methods = {method}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def store_id(request: Request) -> str:
    """The `store_id` path parameter, refused as FastAPI refuses a `StoreId` (422)."""
    value: str = request.path_params["store_id"]
    if is_store_id(value):
        return value
    if len(value) > STORE_ID_MAX_LENGTH:
        message = f"String should have at most {STORE_ID_MAX_LENGTH} characters"
    else:
        message = f"String should match pattern '{STORE_ID_PATTERN}'"
    raise ValidationFailed(f"path.store_id: {message}")


def install(app: FastAPI, routes: list[tuple[str, str, Endpoint]]) -> None:
    """Serve each (method, path, endpoint) ahead of every other route."""
    lean: list[Any] = [LeanRoute(path, endpoint, method) for method, path, endpoint in routes]
    app.router.routes[0:0] = lean
