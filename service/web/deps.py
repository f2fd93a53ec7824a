"""Dependencies shared by the routers: the verified caller, scope checks, and the
request's database session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import Unauthorized
from service.security.callers import Caller
from service.services import services

__all__ = [
    "BEARER_SECURITY",
    "Caller",
    "SessionDep",
    "authenticate",
    "request_id",
    "require_scope",
    "verify_caller",
]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="CallerJWT",
    description="A caller JWT (`broker token mint` prints one for operators).",
)


def authenticate(request: Request, scope: str) -> Caller:
    """Verify the caller's bearer token and require `scope`.

    A plain function so the hot routes (bundles, invoke) can call it without a chain of
    dependencies; `require_scope` wraps it for every other route.
    """
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    return verify_caller(request, token.strip(), scope)


def verify_caller(request: Request, token: str, scope: str) -> Caller:
    """The caller a token names, with `scope` required; wherever the token came from."""
    try:
        caller = services(request).verifier.verify(token)
    except Unauthorized as exc:
        exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
        raise
    request.state.caller = caller.sub
    caller.require_scope(scope)
    return caller


# The OpenAPI security requirement of routes that call `authenticate` themselves.
BEARER_SECURITY: dict[str, Any] = {"security": [{"CallerJWT": []}]}


def require_scope(scope: str) -> Callable[..., Awaitable[Caller]]:
    async def dependency(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Caller:
        return authenticate(request, scope)

    return dependency


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session, for reads: commit on success, roll back on error."""
    async with services(request).sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": commit when the route returns, *before* the response is sent, so a
# failed commit becomes an error response instead of a success that was never stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def request_id(request: Request) -> str:
    return str(request.state.request_id)
