"""Dependencies shared by the routers: app state, the verified caller, scope checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

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


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.verifier
    try:
        caller = verifier.verify(credentials.credentials)
    except Unauthorized as exc:
        exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
        raise
    request.state.caller = caller.sub
    return caller


def require_scope(scope: str) -> Callable[..., Awaitable[Caller]]:
    async def dependency(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        caller.require_scope(scope)
        return caller

    return dependency


def request_id(request: Request) -> str:
    return str(request.state.request_id)
