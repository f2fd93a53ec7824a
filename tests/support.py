"""Helpers the tests share that are not fixtures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import uvicorn
from alembic import command
from alembic.config import Config
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.security.crypto import generate_key

ROOT = Path(__file__).resolve().parents[1]

# The test deployment's keys and names, shared by fixtures, helpers and subprocesses.
HS_KID, HS_SECRET = "hs1", "test-hs256-secret-" + "s" * 32
ENC_KEY = generate_key()
AUDIENCE = "neto-token-broker"
CLIENT_ID, CLIENT_SECRET = "fake-client-id", "fake-client-secret-" + "c" * 24
RETURN_PREFIX = "https://app.example.com/neto/"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    url: str, alive: Callable[[], bool], seconds: float, logs: Callable[[], str]
) -> None:
    """Polls `url`/readyz until it answers 200. Fails at once when `alive()` says the
    server exited, or after `seconds`; either way with `logs()`, its output."""
    deadline = time.monotonic() + seconds
    while True:
        if not alive():
            raise AssertionError(f"{url} exited before it was ready:\n{logs()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}/readyz not 200 after {seconds} s:\n{logs()}")
        time.sleep(0.1)


def broker_env(
    *,
    database_url: str,
    neto_url: str,
    public_url: str = "http://broker.test",
    encryption_keys: str = f"k1:{ENC_KEY}",
    **extra: str,
) -> dict[str, str]:
    """The environment a `broker` subprocess reads: the test deployment, production mode,
    pointed at the fake Neto; `extra` adds or overrides BROKER_ variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BROKER_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        BROKER_ENV="production",
        BROKER_DATABASE_URL=database_url,
        BROKER_PUBLIC_URL=public_url,
        BROKER_NETO_CLIENT_ID=CLIENT_ID,
        BROKER_NETO_CLIENT_SECRET=CLIENT_SECRET,
        BROKER_NETO_OAUTH_URL=f"{neto_url}/oauth/v2",
        BROKER_NETO_API_URL_TEMPLATE=f"{neto_url}/{{store_domain}}/do/WS/NetoAPI",
        BROKER_ENCRYPTION_KEYS=encryption_keys,
        BROKER_JWT_HS256_KEYS=f"{HS_KID}:{HS_SECRET}",
        BROKER_EGRESS_ALLOW_PRIVATE="true",
        BROKER_RETURN_URL_PREFIXES=RETURN_PREFIX,
        # The sweep would verify every install against the fake Neto on its own (and
        # flag the ones it does not know): tests that want it turn it on.
        BROKER_HEALTH_SWEEP_HOURS="0",
    )
    env.update(extra)
    return env


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


async def reset_database(url: str) -> None:
    """PostgreSQL: drop and recreate the public schema, so the run starts from empty."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


async def recreate_database(url: str, name: str) -> None:
    """PostgreSQL: (re)create the empty database `name` beside the one `url` names (for
    migrations that must start below head)."""
    engine = create_async_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def start_install(
    client: httpx.AsyncClient, domain: str = "shop.example.com"
) -> dict[str, str]:
    """Neto-initiated start; returns the authorise URL's query (state, redirect_uri...)."""
    response = await client.get("/oauth/install", params={"store_domain": domain})
    assert response.status_code == 302, response.text
    return query_of(response.headers["location"])


async def install_store(
    client: httpx.AsyncClient, neto: Any, domain: str = "shop.example.com", **grant: Any
) -> dict[str, Any]:
    """A whole merchant install through both OAuth routes; returns the grant used."""
    query = await start_install(client, domain)
    grant.setdefault("store_id", "N1001")
    code = neto.authorize(domain, **grant)
    response = await client.get("/oauth/callback", params={"code": code, "state": query["state"]})
    assert response.status_code == 200, response.text
    return {
        "code": code,
        "state": query["state"],
        "store_id": grant["store_id"],
        "access_token": neto.credentials[domain]["x_secret_key"],
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: Any, *, key: bytes | None = None, **header: Any) -> str:
    """An HS256 token with exactly this header and payload (a None header value drops
    it), MAC'd by hand with `key` (default: the test HS256 key)."""

    key = HS_SECRET.encode() if key is None else key
    head = {"alg": "HS256", "typ": "JWT", "kid": HS_KID, **header}
    head = {k: v for k, v in head.items() if v is not None}
    signing_input = b64(json.dumps(head).encode()) + "." + b64(json.dumps(claims).encode())
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the broker's error envelope with this status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}, body
    assert body["error"] == code, body
    assert response.headers["x-broker-error"] == code
    return body


async def audit_rows(app: Any) -> list[dict[str, Any]]:
    """Every audit_events row, read from the table itself, oldest first."""
    async with app.state.services.sessionmaker() as session:
        result = await session.execute(
            text("SELECT event, actor, store_id, request_id, details FROM audit_events ORDER BY id")
        )
        rows = [dict(row._mapping) for row in result]
    for row in rows:  # JSON comes back as text on some drivers
        if isinstance(row["details"], str):
            row["details"] = json.loads(row["details"])
    return rows


async def register_api_key_store(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    store_id: str,
    domain: str | None = None,
    *,
    username: str = "api-user",
    api_key: str = "api-key-" + "k" * 24,
) -> dict[str, Any]:
    """Register an API-key store through the API (`headers`: an installs:admin token)."""
    response = await client.post(
        "/installs/api-key",
        json={
            "store_id": store_id,
            "store_domain": domain or f"{store_id.lower()}.example.com",
            "username": username,
            "api_key": api_key,
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def metric_or_none(text: str, name: str, **labels: str) -> float | None:
    """One series' value in a Prometheus exposition (`/metrics`), or None when it is not
    exported (a labelled counter has no series before its first increment)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def metric(text: str, name: str, **labels: str) -> float:
    """One series' value; fails when it is not exported, so that `== 0` proves a zero
    was exported rather than passing on a missing or renamed series."""
    value = metric_or_none(text, name, **labels)
    if value is None:
        exported = [
            sample.labels
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]
        raise AssertionError(f"no series {name} {labels} exported; {name} has {exported}")
    return value


class LiveBroker:
    """The broker under a real uvicorn server on loopback, in its own thread and event
    loop: requests arrive over TCP, as in production (so a synchronous client such as
    `requests` can call it, and a blocked loop or a starved worker shows in latency)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=1)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))

    async def __aenter__(self) -> LiveBroker:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the broker did not start")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 10)
        self.loop.close()
        self.sock.close()

    async def tasks(self) -> int:
        """Tasks alive in the broker's loop (besides the one counting)."""

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(count(), self.loop))


# -- the two doors to Neto ------------------------------------------------------------------

DOORS = ("invoke", "neto")


async def call_door(
    door: str,
    client: httpx.AsyncClient,
    store_id: str,
    action: str,
    headers: dict[str, str],
    **kwargs: Any,
) -> httpx.Response:
    """One call to Neto through `/invoke` or through the Neto-compatible endpoint, the
    latter as a Neto client sends it: the action in NETOAPI_ACTION, the caller JWT (from
    `headers`' bearer) in NETOAPI_KEY, a username that means nothing, Accept JSON."""
    if door == "invoke":
        return await client.post(f"/invoke/{store_id}/{action}", headers=headers, **kwargs)
    neto = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    bearer = headers.get("Authorization")
    if bearer is not None:
        neto["NETOAPI_KEY"] = bearer.removeprefix("Bearer ")
    neto.update({"NETOAPI_ACTION": action, "NETOAPI_USERNAME": "any-user",
                 "Accept": "application/json"})  # fmt: skip
    return await client.post(f"/neto/{store_id}/do/WS/NetoAPI", headers=neto, **kwargs)


def assert_refused(response: httpx.Response, status: int, code: str) -> str:
    """The broker's own refusal with this status and code, in whichever shape its door
    renders (the envelope, or Neto's error shape on /neto/); returns the detail."""
    assert response.status_code == status, f"expected {status} {code}: {response.text}"
    assert response.headers["x-broker-error"] == code, response.headers
    body = response.json()
    if response.request.url.path.startswith("/neto/"):
        assert set(body) == {"Ack", "Messages"}, body
        assert body["Ack"] == "Error", body
        [error] = body["Messages"]["Error"]
        assert error["SeverityCode"] == "Error", body
        assert error["Description"].startswith(f"{code} (request "), body
        return str(error["Message"])
    assert set(body) == {"error", "detail", "request_id"}, body
    assert body["error"] == code, body
    return str(body["detail"])


async def warm_store_cache(
    app: Any, read: Callable[[], Awaitable[Any]], copies: int = 1, within: float = 15.0
) -> None:
    """Calls `read` (a request for the stores) until the app's store cache holds `copies`
    copies that two more polls of its change feed have kept: the requests that follow are
    served from memory, the path a revoke must cut at once. (A copy read right after an
    install can be dropped by that install's own notification, arriving later.)"""
    cache = app.state.services.store_cache
    deadline = time.monotonic() + within
    while True:
        await read()
        if len(cache) == copies:
            target = cache.polls + 2  # the first may have begun before the read
            while cache.polls < target:
                assert time.monotonic() < deadline, f"the store cache did not poll in {within} s"
                await asyncio.sleep(0.01)
            if len(cache) == copies:
                return
        assert time.monotonic() < deadline, f"the cache holds {len(cache)} copies, not {copies}"
        await asyncio.sleep(0.05)
