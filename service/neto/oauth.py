"""Neto's OAuth 2.0 authorisation-code flow: the authorise URL and the code exchange."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from pydantic import SecretStr

from service.config import Settings
from service.errors import (
    BrokerError,
    InvalidStoreDomain,
    StoreDomainMismatch,
    TokenExchangeFailed,
    UpstreamTimeout,
)
from service.neto.apps import DEFAULT_APP, NetoApp
from service.neto.credentials import is_store_id
from service.neto.upstream import egress_refused
from service.security.domains import normalize_store_domain
from service.security.egress import EgressRefused

_ERROR_CODE_RE = re.compile(r"[a-z_]{1,64}")


def redirect_uri(settings: Settings, app: NetoApp) -> str:
    """The callback URL registered for the app: `{BROKER_PUBLIC_URL}/oauth/callback`, with
    `?app=<name>` for any app but `default`, so the callback says which add-on Neto
    answers for, and a state is only ever completed on its own app's callback."""
    if app.name == DEFAULT_APP:
        return settings.redirect_uri
    return str(httpx.URL(settings.redirect_uri).copy_merge_params({"app": app.name}))


def authorize_url(settings: Settings, app: NetoApp, store_domain: str, state: str) -> str:
    url = httpx.URL(f"{app.oauth_url}/auth").copy_merge_params(
        {
            "client_id": app.client_id,
            "redirect_uri": redirect_uri(settings, app),
            "response_type": "code",
            "store_domain": store_domain,
            "state": state,
        }
    )
    return str(url)


@dataclass(repr=False)
class TokenGrant:
    """What Neto's token endpoint returned, validated. Secrets stay in SecretStr."""

    store_id: str
    store_domain: str
    access_token: SecretStr
    scope: str | None
    timezone: str | None
    user: dict[str, Any] | None
    billing_address: dict[str, Any] | None
    # Not documented today; kept (sealed) if Neto ever sends them rather than dropped.
    extra_secrets: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TokenGrant(store_id={self.store_id!r}, store_domain={self.store_domain!r})"


def _clean_user(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    return {
        "id": raw.get("id"),
        "first_name": raw.get("first_name", raw.get("firstName")),
        "last_name": raw.get("last_name", raw.get("lastName")),
        "email": raw.get("email"),
    }


def _safe_error_code(body: bytes) -> str:
    """Neto's `error` field if it is a plain code; never its free text (may echo input)."""
    try:
        value = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    return f" ({value})" if isinstance(value, str) and _ERROR_CODE_RE.fullmatch(value) else ""


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise TokenExchangeFailed("Neto's token response was larger than expected.")
        chunks.append(chunk)
    return b"".join(chunks)


def _unreachable(exc: BaseException) -> BrokerError:
    """Why no answer came. httpx-aiohttp reports every aiohttp connection error, a refused
    connection included, as httpx.ConnectTimeout: the cause says what really happened."""
    if egress_refused(exc):  # BROKER_NETO_OAUTH_URL points inside the network
        return TokenExchangeFailed(
            "Neto's token endpoint address is not one the broker may connect to."
        )
    connect_failed = isinstance(exc.__cause__, aiohttp.ClientConnectorError)
    if isinstance(exc, httpx.TimeoutException) and not connect_failed:
        return UpstreamTimeout("Neto's token endpoint did not answer in time.")
    return TokenExchangeFailed("Neto's token endpoint could not be reached.")


async def exchange_code(
    client: httpx.AsyncClient, settings: Settings, app: NetoApp, code: str, expected_domain: str
) -> TokenGrant:
    """POST the code to the app's token endpoint once, with that app's client id and
    secret (the app the install's state is bound to). Never retried: a code must not be
    exchanged twice."""
    form = {
        "client_id": app.client_id,
        "client_secret": app.client_secret.get_secret_value(),
        "redirect_uri": redirect_uri(settings, app),
        "grant_type": "authorization_code",
        # The docs name the field access_code; working clients send code. Send both.
        "access_code": code,
        "code": code,
    }
    timeout = httpx.Timeout(
        settings.token_exchange_timeout_seconds, connect=settings.upstream_connect_timeout_seconds
    )
    try:
        async with client.stream(
            "POST",
            f"{app.oauth_url}/token",
            data=form,
            headers={"Accept": "application/json"},
            timeout=timeout,
        ) as response:
            body = await _read_capped(response, settings.token_response_max_bytes)
    except (httpx.HTTPError, EgressRefused, OSError) as exc:
        raise _unreachable(exc) from None
    if response.status_code != 200:
        raise TokenExchangeFailed(
            f"Neto's token endpoint answered {response.status_code}{_safe_error_code(body)}."
        )
    try:
        data = json.loads(body)
    except ValueError:
        raise TokenExchangeFailed("Neto's token endpoint did not answer with JSON.") from None
    if not isinstance(data, dict):
        raise TokenExchangeFailed("Neto's token response is not a JSON object.")
    token = data.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise TokenExchangeFailed("Neto's token response carries no access token.")
    store_id = data.get("store_id")
    if isinstance(store_id, int) and not isinstance(store_id, bool):
        store_id = str(store_id)
    if not isinstance(store_id, str) or not is_store_id(store_id):
        raise TokenExchangeFailed("Neto's token response carries no usable store id.")
    try:
        domain = normalize_store_domain(data.get("store_domain") or "")
    except InvalidStoreDomain:
        raise StoreDomainMismatch(
            "Neto's token response names no valid store domain; the token was discarded."
        ) from None
    if domain != expected_domain:
        raise StoreDomainMismatch(
            "Neto issued the token for a different store than the install was started for; "
            "the token was discarded."
        )
    scope, tz = data.get("scope"), data.get("store_timezone")
    return TokenGrant(
        store_id=store_id,
        store_domain=domain,
        access_token=SecretStr(token),
        scope=scope[:512] if isinstance(scope, str) else None,
        timezone=tz[:64] if isinstance(tz, str) else None,
        user=_clean_user(data.get("user")),
        billing_address=data.get("billing_address")
        if isinstance(data.get("billing_address"), dict)
        else None,
        extra_secrets={k: data[k] for k in ("refresh_token", "expires_in") if k in data},
    )
