"""Shared fixtures: every test runs on SQLite, and on PostgreSQL too when
BROKER_TEST_DATABASE_URL is set. Each run builds its databases with `alembic upgrade
head`, so migrations are exercised every time; tables are emptied after each test.
The app runs through its ASGI interface with its real lifespan; Neto is a real HTTP
fake on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk as jose_jwk
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.config import Settings, normalize_database_url
from service.main import create_app
from service.security.callers import mint
from tests.fakes.neto import FakeNeto, FakeNetoServer
from tests.fakes.receiver import Receiver
from tests.support import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    ENC_KEY,
    HS_KID,
    HS_SECRET,
    RETURN_PREFIX,
    migrate,
    reset_database,
)


def _backends() -> list[Any]:
    backends: list[Any] = ["sqlite"]
    if os.environ.get("BROKER_TEST_DATABASE_URL"):
        backends.append("postgresql")
    return backends


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="broker-tests-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session", params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_root: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_root}/broker.db"
    else:
        url = normalize_database_url(os.environ["BROKER_TEST_DATABASE_URL"])
        asyncio.run(reset_database(url))
    migrate(url)
    return url


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def jwks_file(tmp_root: Path, rsa_key: Any, ec_key: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    keys = []
    for kid, key, alg in (("rsa1", rsa_key, "RS256"), ("ec1", ec_key, "ES256")):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        entry = jose_jwk.construct(pem, alg).to_dict()
        entry["kid"] = kid
        keys.append(entry)
    path = tmp_root / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path


@pytest.fixture(scope="session")
def neto_server() -> Iterator[FakeNetoServer]:
    server = FakeNetoServer(FakeNeto(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)).start()
    yield server
    server.stop()


@pytest.fixture
def neto(neto_server: FakeNetoServer) -> Iterator[FakeNeto]:
    neto_server.fake.reset()
    yield neto_server.fake
    neto_server.fake.reset()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback: records each delivery, answers as scripted."""
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
def settings_factory(
    database_url: str, neto_server: FakeNetoServer, jwks_file: Path
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "production",
            "database_url": database_url,
            "public_url": "http://broker.test",
            "neto_client_id": CLIENT_ID,
            "neto_client_secret": CLIENT_SECRET,
            "neto_oauth_url": f"{neto_server.url}/oauth/v2",
            "neto_api_url_template": f"{neto_server.url}/{{store_domain}}/do/WS/NetoAPI",
            "encryption_keys": f"k1:{ENC_KEY}",
            "jwt_hs256_keys": f"{HS_KID}:{HS_SECRET}",
            "jwt_public_keys_file": jwks_file,
            "egress_allow_private": True,
            "return_url_prefixes": RETURN_PREFIX,
            "token_exchange_timeout_seconds": 2,
            "upstream_deadline_seconds": 5,
            # The sweep calls Neto on its own; tests that want it turn it on.
            "health_sweep_hours": 0,
            # Many tests run two apps on one database at once; with heartbeats each would
            # be the other's newcomer and hold its first calls. The division of the budget
            # is tested with heartbeats on (tests/api/test_replica_budget.py, replicas/).
            "replica_heartbeat_seconds": 0,
            # Every test client has one address; the limit is tested on its own
            # (tests/api/test_install_bounds.py).
            "install_rate_per_minute": 100_000,
            # The store budget's burst is a tenth of it: race tests fire more than 50 calls
            # at one store at once. Budget tests set their own (test_invoke, test_limits,
            # test_replica_budget, replicas/test_store_budget).
            "store_rate_per_minute": 100_000,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
async def app_factory(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Builds apps with their lifespan running; empties the tables afterwards."""
    stack: list[Any] = []

    async def build(settings: Settings) -> Any:
        app = create_app(settings)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        stack.append(ctx)
        return app

    yield build
    for ctx in reversed(stack):
        await ctx.__aexit__(None, None, None)
    await truncate(database_url)


async def truncate(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        tables = (
            "audit_events",
            "pending_installs",
            "installs",
            "install_usage",
            "leases",
            "broker_replicas",
            "store_pauses",
            "webhook_attempts",
            "webhook_deliveries",
            "webhooks",
            "events",
            "idempotency_keys",
            "neto_notify_tokens",
            "neto_notifications",
        )
        for table in tables:
            await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608
    await engine.dispose()


@pytest.fixture
async def app(app_factory: Callable[..., Any], settings: Settings, neto: FakeNeto) -> Any:
    return await app_factory(settings)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as c:
        yield c


@pytest.fixture
def token() -> Callable[..., str]:
    """Mint a caller token with the test HS256 key: token(scope=..., stores=[...])."""

    def build(
        scope: str = "",
        *,
        sub: str = "test-service",
        stores: list[str] | None = None,
        actions: list[str] | None = None,
        ttl: int = 600,
        priority: str | None = None,
    ) -> str:
        return mint(
            kid=HS_KID, secret=HS_SECRET, sub=sub, scope=scope, audience=AUDIENCE,
            ttl_seconds=ttl, stores=stores, actions=actions, priority=priority,
        )  # fmt: skip

    return build


@pytest.fixture
def auth(token: Callable[..., str]) -> Callable[..., dict[str, str]]:
    def build(scope: str = "", **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(scope, **kwargs)}"}

    return build
