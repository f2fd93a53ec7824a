"""The hot routes (bundles, `/invoke`, the Neto door) served ahead of FastAPI's own
request handling.

For a route this small FastAPI's and Starlette's request handling costs more than the
route's own work: dependency solving and parameter validation through pydantic, and
about a dozen layers every request passes through twice, on the way in and at every
resume of its coroutine (server errors, telemetry, body limits, exception mapping, exit
stacks, routing, the endpoint wrapper; docs/performance.md). `LeanApp` answers a request
that one of its lean routes matches in full (path and method) through the application's
own middleware (the request id, access log and metrics, the JSON body rule) and its own
exception handlers (the same envelope), and everything else through FastAPI's stack
unchanged. The FastAPI declarations of these routes stay registered: they are what the
OpenAPI document describes, the one implementation the lean endpoints call (with the
parameters checked here exactly as FastAPI checks them: same order, same 422 detail),
and what answers the requests a lean route does not take (HEAD, a wrong method).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, HTTPExceptionHandler, Receive, Scope, Send

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


class LeanApp(FastAPI):
    """FastAPI, with `lean_routes` answered ahead of its request handling."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lean_routes: list[LeanRoute] = []

    def serve_lean(self, routes: list[tuple[str, str, Endpoint]]) -> None:
        """Serve each (method, path, endpoint) ahead of every other route."""
        self.lean_routes = [LeanRoute(path, endpoint, method) for method, path, endpoint in routes]
        self.middleware_stack = None  # built again, with these, on the next request

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if not self.lean_routes:
            return stack
        lean: ASGIApp = _Endpoints(self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            lean = cls(lean, *args, **kwargs)
        return _Switch(self.lean_routes, lean, stack)


class _Switch:
    """A request a lean route matches in full goes the lean way; anything else (other
    paths, a lean path with another method, the lifespan) goes through FastAPI.

    Paths are compared without the `root_path` the server was given (`uvicorn
    --root-path`, a proxy mounting the broker under a prefix puts it in front of
    `path`): the path Starlette's routes match, by Starlette's own function, so a hot
    request behind a prefix still goes the lean way."""

    def __init__(self, routes: list[LeanRoute], lean: ASGIApp, rest: ASGIApp) -> None:
        self.routes = routes
        self.prefixes = tuple(route.path.split("{", 1)[0] for route in routes)
        self.lean = lean
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and get_route_path(scope).startswith(self.prefixes):
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self.lean(scope, receive, send)
                    return
        await self.rest(scope, receive, send)


class _Endpoints:
    """Calls the matched lean endpoint; an exception becomes the answer of the handler the
    application registered for it (looked up along the exception's classes, as
    Starlette's exception middleware does), or goes on up to the request middleware."""

    def __init__(self, handlers: Mapping[Any, HTTPExceptionHandler]) -> None:
        self.handlers = {key: h for key, h in handlers.items() if isinstance(key, type)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await scope["endpoint"](request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            answer = handler(request, exc)  # the broker's handlers are all async
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> HTTPExceptionHandler | None:
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None
