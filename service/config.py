"""The one Settings object: every BROKER_ environment variable lives here."""

from __future__ import annotations

import json
import logging
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.neto.apps import DEFAULT_APP, AppsError, NetoApp, parse_apps

log = logging.getLogger("broker.config")

DEV_KEYS_FILE = Path("var") / "dev-keys.json"
# A scrape token is compared as is: long enough that guessing it is hopeless.
MIN_METRICS_TOKEN_CHARS = 32


def normalize_database_url(url: str) -> str:
    """Plain driver names are accepted and mapped to the async drivers we ship."""
    for plain, async_driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return async_driver + url[len(plain) :]
    return url


def kid_pairs(spec: str) -> list[tuple[str, str]]:
    """`kid:value,kid:value` (the form of every key setting) as pairs, in order. An entry
    without a colon gives an empty kid, which every caller refuses with its own message."""
    pairs = []
    for item in spec.split(","):
        item = item.strip()
        if item:
            kid, sep, value = item.partition(":")
            pairs.append((kid if sep else "", value.strip()))
    return pairs


class ConfigError(RuntimeError):
    """Raised when the settings cannot run the service safely; names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BROKER_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "production"] = "production"
    database_url: str = "sqlite+aiosqlite:///./var/broker.db"
    public_url: str = "http://localhost:8000"

    neto_client_id: str | None = None
    neto_client_secret: SecretStr | None = None
    neto_oauth_url: str = "https://apps.getneto.com/oauth/v2"
    # Several add-ons (service/neto/apps.py): a JSON object of app name -> client id,
    # secret (or its file) and OAuth URL, or the path of a file holding it. A SecretStr:
    # it may hold client secrets, and a settings repr must not show them.
    neto_apps: SecretStr | None = None
    neto_api_url_template: str = "https://{store_domain}/do/WS/NetoAPI"

    encryption_keys: SecretStr | None = None
    jwt_audience: str = "neto-token-broker"
    jwt_issuers: str = ""
    jwt_hs256_keys: SecretStr | None = None
    jwt_public_keys_file: Path | None = None
    jwt_cache_size: int = Field(10_000, ge=0)

    bundle_ttl_seconds: int = Field(300, ge=10, le=3600)
    state_ttl_seconds: int = Field(600, ge=60, le=3600)
    egress_allow_private: bool = False
    # Absolute URL prefixes a pending install may send the merchant back to.
    return_url_prefixes: str = ""

    # Upstream limits (the /invoke passthrough and the token exchange).
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Bytes of Neto answers being read at once, across the replica (neto/memory.py): a
    # call that finds it spent waits up to 1 s, then 503. The default keeps a replica
    # under the chart's 512 Mi with answers of BROKER_MAX_RESPONSE_BYTES.
    upstream_buffer_bytes: int = Field(128 * 1024 * 1024, ge=64 * 1024)
    token_response_max_bytes: int = Field(64 * 1024, ge=1024)
    upstream_connect_timeout_seconds: float = Field(5.0, gt=0)
    upstream_deadline_seconds: float = Field(60.0, gt=0)
    token_exchange_timeout_seconds: float = Field(15.0, gt=0)
    store_max_in_flight: int = Field(8, ge=1)
    store_rate_per_minute: int = Field(500, ge=1)
    rate_limit_pause_seconds: float = Field(60.0, ge=0)
    # A call that finds its store's bucket empty waits this long for a token (never past
    # its deadline) before 429; batch-lane calls leave this share's complement of each
    # bucket's burst to interactive ones (neto/limits.py).
    store_queue_seconds: float = Field(2.0, ge=0, le=60)
    batch_share: float = Field(0.5, ge=0, le=1)
    # A write sent with an Idempotency-Key is answered from its row this long (idempotency/).
    idempotency_ttl_hours: float = Field(24.0, gt=0, le=24 * 30)
    # The anonymous merchant routes (/oauth/install, /oauth/callback): requests a minute
    # per client address prefix (IPv4 address, IPv6 /64; per replica), how many proxies in
    # front append to X-Forwarded-For, and how many Neto-initiated installs may be pending
    # at once (no prefix or store domain holds more than an eighth: oauth/flow.py).
    install_rate_per_minute: int = Field(30, ge=1)
    trusted_proxies: int = Field(0, ge=0, le=10)
    max_pending_installs: int = Field(10_000, ge=1)
    # How often each replica beats in `broker_replicas`: the store budget is re-divided,
    # and other replicas' Neto pauses picked up, within a few of these. 0 turns the
    # heartbeat off: the whole budget is then this replica's (a single replica only).
    replica_heartbeat_seconds: float = Field(2.0, ge=0, le=30)
    upstream_max_retries: int = Field(2, ge=0, le=5)
    # How often each replica polls for changed installs: the revocation bound. 0 disables
    # the store cache (every bundle and invoke reads the database).
    store_cache_seconds: float = Field(1.0, ge=0, le=30)
    store_cache_max_entries: int = Field(100_000, ge=0)
    # A cached store is read again once it is this old, whatever the change feed said:
    # the bound on anything the feed and the notifications both missed.
    store_cache_max_age_seconds: float = Field(60.0, ge=1, le=3600)
    store_cache_preload: bool = True

    # Background jobs (service/jobs/). Each runs on one replica at a time (a lease).
    # Every active install is verified at most once per this many hours; 0 turns it off.
    health_sweep_hours: float = Field(24.0, ge=0)
    # Audit rows and events older than this many days are pruned; 0 keeps everything.
    audit_retention_days: int = Field(90, ge=0)
    event_retention_days: int = Field(90, ge=0)
    # Webhooks: receivers on these hosts (names or IPs, comma-separated, each with an
    # optional `:port`; `[v6]:port`) may sit on private addresses; a bare host admits only
    # its scheme's default port. Every other receiver is under the egress rules above.
    webhook_allowed_hosts: str = ""
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Retries: base * 2^(attempt-1) with jitter, capped; after the window the subscription
    # is marked failing until an operator re-enables it.
    webhook_retry_base_seconds: float = Field(5.0, gt=0)
    webhook_retry_max_seconds: float = Field(3600.0, gt=0)
    webhook_retry_window_seconds: float = Field(86400.0, gt=0)
    webhook_response_max_bytes: int = Field(4096, ge=0, le=1024 * 1024)
    # How often each replica's delivery worker and a waiting feed request look for new
    # events when no notification wakes them (SQLite, or a lost LISTEN connection).
    events_poll_seconds: float = Field(1.0, gt=0, le=30)
    # Neto's notifications (POST /neto-notify/..., service/inbound/limits.py): the body
    # cap; requests a minute per client address prefix (Neto sends every store's from a
    # few addresses); refusals a minute per address prefix and store; accepted
    # notifications a minute per store, and how many of one store are written at once.
    notify_max_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    notify_address_rate_per_minute: int = Field(6000, ge=1)
    notify_refusals_per_minute: int = Field(30, ge=1)
    notify_store_rate_per_minute: int = Field(1200, ge=1)
    notify_store_in_flight: int = Field(8, ge=1)

    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    db_statement_timeout_ms: int = Field(5000, ge=0)
    log_level: str = "INFO"
    # Swagger UI keeps the operator's token in the browser's localStorage across reloads
    # only when this is on: anything that can run script on the origin, or read the
    # browser profile, could take it from there.
    docs_persist_authorization: bool = False
    # When set, GET /metrics answers only `Authorization: Bearer <this>` (the scraper's
    # token; not a caller JWT). Unset: /metrics is open to whoever reaches the port.
    metrics_token: SecretStr | None = None
    # Cap on JSON request bodies of the broker's own routes (not /invoke), checked before
    # parsing.
    max_json_bytes: int = Field(64 * 1024, ge=1024, le=8 * 1024 * 1024)

    @field_validator("public_url", "neto_oauth_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_METRICS_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_METRICS_TOKEN_CHARS} characters")
        return value

    @field_validator("neto_api_url_template")
    @classmethod
    def _template_has_domain(cls, value: str) -> str:
        if "{store_domain}" not in value:
            raise ValueError("must contain {store_domain}")
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _webhook_hosts_parse(cls, value: str) -> str:
        for entry in value.split(","):
            if entry.strip():
                allowed_host(entry)  # a sentence at start-up, not at the first delivery
        return value

    @model_validator(mode="after")
    def _production_needs_keys(self) -> Settings:
        if self.env != "production":
            return self
        if not self.encryption_keys or not self.encryption_keys.get_secret_value().strip():
            raise ConfigError(
                "BROKER_ENCRYPTION_KEYS is required when BROKER_ENV=production "
                "(generate one with `broker keys generate`; to try the broker locally, set "
                "BROKER_ENV=development as `make run` does)"
            )
        if not self.jwt_hs256_keys and not self.jwt_public_keys_file:
            raise ConfigError(
                "BROKER_JWT_HS256_KEYS or BROKER_JWT_PUBLIC_KEYS_FILE is required when "
                "BROKER_ENV=production"
            )
        return self

    @model_validator(mode="after")
    def _apps_parse(self) -> Settings:
        _ = self.apps  # a sentence at start-up, not at the first install
        return self

    @cached_property
    def apps(self) -> dict[str, NetoApp]:
        """Every configured add-on by name: BROKER_NETO_CLIENT_ID/SECRET (with
        BROKER_NETO_OAUTH_URL) as `default`, then those BROKER_NETO_APPS declares."""
        apps: dict[str, NetoApp] = {}
        if self.neto_client_id and self.neto_client_secret:
            apps[DEFAULT_APP] = NetoApp(
                DEFAULT_APP, self.neto_client_id, self.neto_client_secret, self.neto_oauth_url
            )
        spec = self.neto_apps.get_secret_value() if self.neto_apps else ""
        if not spec.strip():
            return apps
        try:
            declared = parse_apps(spec, default_oauth_url=self.neto_oauth_url)
        except AppsError as exc:
            raise ConfigError(f"BROKER_NETO_APPS {exc}") from None
        if DEFAULT_APP in declared and DEFAULT_APP in apps:
            raise ConfigError(
                "BROKER_NETO_APPS declares the app 'default', which BROKER_NETO_CLIENT_ID and "
                "BROKER_NETO_CLIENT_SECRET already are: declare it in one place only"
            )
        clash = [a.name for a in declared.values() if a.client_id == self.neto_client_id]
        if DEFAULT_APP in apps and clash:
            raise ConfigError(
                f"BROKER_NETO_APPS app {clash[0]!r} has the client id of BROKER_NETO_CLIENT_ID "
                "(the app 'default'): one add-on cannot be two apps"
            )
        return {**apps, **declared}

    @property
    def oauth_configured(self) -> bool:
        return bool(self.apps)

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/oauth/callback"

    @cached_property
    def issuers(self) -> frozenset[str]:
        return frozenset(i.strip() for i in self.jwt_issuers.split(",") if i.strip())

    @cached_property
    def allowed_return_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.return_url_prefixes.split(",") if p.strip())

    @cached_property
    def webhook_hosts(self) -> frozenset[tuple[str, int | None]]:
        """(host, port) pairs; port None: the scheme's default port only."""
        return frozenset(
            allowed_host(h) for h in self.webhook_allowed_hosts.split(",") if h.strip()
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class DatabaseSettings(BaseSettings):
    """Just the database URL: what `broker migrate` needs, without requiring keys."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", env_file=".env", extra="ignore")
    database_url: str = Settings.model_fields["database_url"].default

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return normalize_database_url(value)


def allowed_host(entry: str) -> tuple[str, int | None]:
    """One `BROKER_WEBHOOK_ALLOWED_HOSTS` entry: `host`, `host:port`, `v6` or `[v6]:port`."""
    entry = entry.strip().lower()
    if entry.count(":") > 1 and not entry.startswith("["):
        return entry, None  # a bare IPv6 address
    parts = urlsplit("//" + entry)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname or port == 0 or parts.path or parts.username is not None:
        raise ValueError(f"not a host or host:port: {entry!r}")
    return parts.hostname, port


def _dev_keys() -> dict[str, str]:
    """Throw-away keys for development, generated once into ./var/ and reused."""
    if DEV_KEYS_FILE.exists():
        data: dict[str, str] = json.loads(DEV_KEYS_FILE.read_text())
        return data
    from service.security.crypto import generate_key

    data = {
        "encryption_keys": f"dev1:{generate_key()}",
        "jwt_hs256_keys": f"dev1:{secrets.token_urlsafe(48)}",
    }
    DEV_KEYS_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(DEV_KEYS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return data


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; development fills in throw-away keys from ./var/."""
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.env == "development":
        fill: dict[str, object] = {}
        if not settings.encryption_keys or not settings.jwt_hs256_keys:
            keys = _dev_keys()
            if not settings.encryption_keys:
                fill["encryption_keys"] = SecretStr(keys["encryption_keys"])
            if not settings.jwt_hs256_keys and not settings.jwt_public_keys_file:
                fill["jwt_hs256_keys"] = SecretStr(keys["jwt_hs256_keys"])
        if fill:
            log.warning(
                "development mode: using throw-away keys from %s for %s; never use them in "
                "production",
                DEV_KEYS_FILE,
                ", ".join(sorted(fill)),
            )
            settings = settings.model_copy(update=fill)
    return settings
