"""Request and response models: the API's shapes, kept apart from the tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# Whole-object examples: Swagger UI shows them as the response's "Example Value".
_CURSOR = "WyIyMDI2LTAxLTAyVDAzOjA0OjA1KzAwOjAwIiwiTjEyMzQ1Il0"
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "store_id": "N12345",
    "store_domain": "shop.example.com.au",
    "auth_method": "oauth",
    "status": "active",
    "installed_at": "2026-01-02T03:04:05Z",
    "updated_at": "2026-01-02T03:04:05Z",
    "last_used_at": "2026-01-05T09:30:00Z",
}
_DETAIL_EXAMPLE: dict[str, Any] = {
    **_SUMMARY_EXAMPLE,
    "scope": "api user address",
    "timezone": "Australia/Brisbane",
    "user": {"id": "42", "first_name": "Mia", "last_name": "Merchant", "email": "mia@shop.au"},
    "billing_address": {
        "street1": "123 Sample St",
        "city": "Brisbane",
        "state": "Queensland",
        "post_code": "4000",
        "country_code": "AU",
    },
    "revoked_at": None,
    "token_fingerprint": "sha256:9f86d081884c7d65",
}
_STARTED_EXAMPLE: dict[str, Any] = {
    "authorize_url": "https://apps.getneto.com/oauth/v2/auth?client_id=...&response_type=code"
    "&redirect_uri=...&store_domain=shop.example.com.au&state=...",
    "state_expires_at": "2026-01-02T03:14:05Z",
}
_BUNDLE_EXAMPLE: dict[str, Any] = {
    "bundle_id": "bnd_3q2x9yS0c8VbqkzE5l0wXg",
    "store_id": "N12345",
    "store_domain": "shop.example.com.au",
    "auth_method": "oauth",
    "api_url": "https://shop.example.com.au/do/WS/NetoAPI",
    "headers": {"X_ACCESS_KEY": "<client id>", "X_SECRET_KEY": "<access token>"},
    "issued_at": "2026-01-02T03:04:05Z",
    "expires_at": "2026-01-02T03:09:05Z",
}
_AUDIT_EXAMPLE: dict[str, Any] = {
    "id": 42,
    "at": "2026-01-02T03:04:05Z",
    "event": "bundle.issued",
    "actor": "orders-service",
    "store_id": "N12345",
    "request_id": "req_5f2a9c0e1b7d4a3f9e8c7b6a",
    "details": {"bundle_id": "bnd_3q2x9yS0c8VbqkzE5l0wXg"},
}


class ErrorBody(BaseModel):
    error: str = Field(examples=["store_not_found"])
    detail: str = Field(examples=["No install exists for this store."])
    request_id: str = Field(examples=["req_5f2a9c0e1b7d4a3f9e8c7b6a"])


class InstallStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_domain: str = Field(max_length=1024, examples=["shop.example.com.au"])
    return_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where the merchant lands after the install; must be under an allowed "
        "prefix (BROKER_RETURN_URL_PREFIXES).",
        examples=["https://app.example.com/neto/installed"],
    )


class InstallStarted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_STARTED_EXAMPLE]})
    authorize_url: str = Field(
        examples=["https://apps.getneto.com/oauth/v2/auth?client_id=...&state=..."]
    )
    state_expires_at: datetime


class ApiKeyInstall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    store_domain: str = Field(max_length=1024, examples=["shop.example.com.au"])
    # Both travel as HTTP header values (NETOAPI_USERNAME / NETOAPI_KEY): printable ASCII
    # only, so a stored value can never break or inject a header upstream.
    username: str = Field(
        min_length=1, max_length=256, pattern=r"^[!-~](?:[ -~]*[!-~])?$", examples=["api-user"]
    )
    api_key: SecretStr = Field(min_length=1, max_length=1024)

    @field_validator("api_key")
    @classmethod
    def _header_safe(cls, value: SecretStr) -> SecretStr:
        # The message must not quote the key: validation errors reach the caller.
        if not all("!" <= ch <= "~" for ch in value.get_secret_value()):
            raise ValueError("must be printable ASCII without spaces")
        return value


class InstallSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})
    store_id: str = Field(examples=["N12345"])
    store_domain: str = Field(examples=["shop.example.com.au"])
    auth_method: Literal["oauth", "api_key"]
    status: Literal["active", "reauth_required", "revoked"]
    installed_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None


class InstallDetail(InstallSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [_DETAIL_EXAMPLE]})
    scope: str | None = Field(default=None, examples=["api user address"])
    timezone: str | None = Field(default=None, examples=["Australia/Brisbane"])
    user: dict[str, Any] | None = Field(
        default=None,
        examples=[{"id": "42", "first_name": "Neto", "last_name": "User", "email": "m@shop.au"}],
    )
    billing_address: dict[str, Any] | None = None
    revoked_at: datetime | None = None
    token_fingerprint: str | None = Field(
        default=None,
        description="sha256 prefix of the stored token or API key; never the secret itself.",
        examples=["sha256:9f86d081884c7d65"],
    )
    secret_readable: bool = Field(
        default=True,
        description="False when a sealed column of this install does not open with the "
        "configured keys (tampered with, copied from another store's row, or sealed under a "
        "key that is no longer configured). Bundles and invokes then fail with "
        "`store_secret_unreadable`; the broker logs the store id at ERROR. Fix the key "
        "configuration, or reinstall / re-register the store.",
    )


class InstallPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_SUMMARY_EXAMPLE], "next_cursor": _CURSOR}]}
    )
    items: list[InstallSummary]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )


class Bundle(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_BUNDLE_EXAMPLE]})
    bundle_id: str = Field(examples=["bnd_3q2x9yS0c8VbqkzE5l0wXg"])
    store_id: str
    store_domain: str
    auth_method: Literal["oauth", "api_key"]
    api_url: str = Field(examples=["https://shop.example.com.au/do/WS/NetoAPI"])
    headers: dict[str, str] = Field(
        examples=[{"X_ACCESS_KEY": "client-id", "X_SECRET_KEY": "access-token"}]
    )
    issued_at: datetime
    expires_at: datetime


class VerifyResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "store_id": "N12345",
                    "ok": True,
                    "status": "active",
                    "upstream_status": 200,
                    "detail": "Neto accepted the stored credentials (GetCurrencySettings).",
                }
            ]
        }
    )
    store_id: str
    ok: bool
    status: Literal["active", "reauth_required", "revoked"]
    upstream_status: int | None = Field(default=None, examples=[200])
    detail: str


class AuditEventOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_AUDIT_EXAMPLE]})
    id: int
    at: datetime
    event: str = Field(examples=["bundle.issued"])
    actor: str = Field(examples=["orders-service"])
    store_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any]


class AuditPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_AUDIT_EXAMPLE], "next_cursor": "WzQxXQ"}]}
    )
    items: list[AuditEventOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )
