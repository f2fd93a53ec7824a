"""Dependencies shared by the routers: app state, the verified caller, scope checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.config import Settings
from service.errors import Unauthorized
from service.security.callers import Caller, TokenVerifier
from service.security.crypto import KeyRing

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="CallerJWT",
    description="A caller JWT (`broker token mint` prints one for operators).",
)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_keyring(request: Request) -> KeyRing:
    keyring: KeyRing = request.app.state.keyring
    return keyring


async def get_http(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.http
    return client


async def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return maker


SettingsDep = Annotated[Settings, Depends(get_settings)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http)]
SessionMakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]


def authenticate(request: Request, scope: str) -> Caller:
    """Verify the caller's bearer token and require `scope`.

    A plain function so the hot routes (bundles, invoke) can call it without a chain of
    dependencies; `require_scope` wraps it for every other route.
    """
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.verifier
    try:
        caller = verifier.verify(token.strip())
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


def request_id(request: Request) -> str:
    return str(request.state.request_id)
