"""The admin API's shapes for installs (kept apart from the table model)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from service.installs.models import AuthMethodName, StatusName
from service.neto.apps import APP_NAME_MAX_LENGTH, APP_NAME_PATTERN
from service.neto.credentials import STORE_ID_MAX_LENGTH, STORE_ID_PATTERN

# Whole-object examples: Swagger UI shows them as the response's "Example Value".
_CURSOR = "WyIyMDI2LTAxLTAyVDAzOjA0OjA1KzAwOjAwIiwiTjEyMzQ1Il0"
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "store_id": "N12345",
    "store_domain": "shop.example.com.au",
    "auth_method": "oauth",
    "status": "active",
    "app": "default",
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


class ApiKeyInstall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_id: str = Field(min_length=1, max_length=STORE_ID_MAX_LENGTH, pattern=STORE_ID_PATTERN)
    store_domain: str = Field(max_length=1024, examples=["shop.example.com.au"])
    # Both travel as HTTP header values (NETOAPI_USERNAME / NETOAPI_KEY): printable ASCII
    # only, so a stored value can never break or inject a header upstream.
    username: str = Field(
        min_length=1, max_length=256, pattern=r"^[!-~](?:[ -~]*[!-~])?$", examples=["api-user"]
    )
    api_key: SecretStr = Field(min_length=1, max_length=1024)
    app: str | None = Field(
        default=None,
        max_length=APP_NAME_MAX_LENGTH,
        pattern=APP_NAME_PATTERN,
        description="The add-on the store counts under for tokens' `apps` claims (an API "
        "key carries no client id): `default` when absent; any other name must be in "
        "BROKER_NETO_APPS.",
        examples=["default"],
    )

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
    auth_method: AuthMethodName
    status: StatusName
    app: str = Field(
        default="default",
        description="The Neto add-on the store installed (BROKER_NETO_APPS; `default`: "
        "the add-on of BROKER_NETO_CLIENT_ID). Its client id goes with the token.",
        examples=["default"],
    )
    installed_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None


class StoreBudgetView(BaseModel):
    rate_per_minute: float = Field(
        description="Calls a minute the broker allows itself to this store now, across all "
        "replicas: BROKER_STORE_RATE_PER_MINUTE, or less after Neto answered 429 (the budget "
        "is shared with the merchant's other add-ons): then what was sent in the minute "
        "before, less 5 %, growing back 3 % a quiet minute.",
        examples=[450.0],
    )
    learned: bool = Field(description="True while below the configured budget after a 429.")
    last_rate_limited_at: datetime | None = Field(
        default=None, description="When Neto last answered 429 for this store."
    )
    paused_until: datetime | None = Field(
        default=None, description="Set while calls to the store are paused after that 429."
    )


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
    budget: StoreBudgetView | None = None


class InstallPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_SUMMARY_EXAMPLE], "next_cursor": _CURSOR}]}
    )
    items: list[InstallSummary]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )


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
    status: StatusName
    upstream_status: int | None = Field(default=None, examples=[200])
    detail: str
