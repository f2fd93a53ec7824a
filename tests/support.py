"""Helpers the tests share that are not fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[1]


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
