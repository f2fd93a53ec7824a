"""The backstop under the per-field checks: text PostgreSQL cannot store (a NUL byte:
SQLSTATE 22021, asyncpg's CharacterNotInRepertoireError), or no driver can encode (half a
surrogate pair), reaching the database through a field nobody checked is a 422 with the
envelope, never a 500, and the value is never logged.

Every field of today's routes is checked before the database (test_control_characters),
so the test mounts a route of its own on the real app, behind the real middleware and
exception handlers, whose one field goes to a real query on the installs table unchecked,
as a future field might. SQLite has no NUL error (it stores and compares a NUL like any
other character), so there that request is an ordinary answer; half a surrogate pair is
refused by both drivers."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import Request
from pydantic import BaseModel
from sqlalchemy import text

from tests.support import assert_error

NUL_TEXT = "shop\x00secret-value"
# JSON's escape for half a surrogate pair: json.loads (FastAPI's parser) accepts it.
SURROGATE_BODY = b'{"store_domain": "shop\\ud800secret-value"}'


class Lookup(BaseModel):
    store_domain: str  # deliberately no pattern: the field a future route forgot


async def count_by_domain(request: Request, lookup: Lookup) -> dict[str, int]:
    async with request.app.state.services.sessionmaker() as session:
        found = await session.execute(
            text("SELECT count(*) FROM installs WHERE store_domain = :domain"),
            {"domain": lookup.store_domain},
        )
        return {"installs": int(found.scalar_one())}


def mount(app: Any) -> None:
    app.add_api_route("/test-only/lookup", count_by_domain, methods=["POST"])


def assert_refused(r: Any, caplog: pytest.LogCaptureFixture) -> None:
    body = assert_error(r, 422, "validation_error")
    assert body["request_id"] == r.headers["x-request-id"]
    assert "cannot store" in body["detail"]
    assert "secret-value" not in r.text
    assert "secret-value" not in caplog.text, "the refused value is never logged"
    assert "the database refused a text value" in caplog.text


async def test_text_the_database_cannot_store_is_a_422_with_the_envelope(
    app, client, database_url, caplog
):
    mount(app)
    with caplog.at_level(logging.INFO, logger="broker"):
        r = await client.post("/test-only/lookup", json={"store_domain": NUL_TEXT})
    if database_url.startswith("sqlite"):
        # No such refusal on SQLite: the NUL is compared like any character.
        assert r.status_code == 200, r.text
        assert r.json() == {"installs": 0}
    else:
        assert_refused(r, caplog)
    # The connection it failed on is not left broken: the next request is answered.
    ok = await client.post("/test-only/lookup", json={"store_domain": "shop.example.com"})
    assert ok.status_code == 200 and ok.json() == {"installs": 0}, ok.text


async def test_half_a_surrogate_pair_is_a_422_on_both_databases(app, client, caplog):
    mount(app)
    with caplog.at_level(logging.INFO, logger="broker"):
        r = await client.post(
            "/test-only/lookup",
            content=SURROGATE_BODY,
            headers={"content-type": "application/json"},
        )
    assert_refused(r, caplog)
    ok = await client.post("/test-only/lookup", json={"store_domain": "shop.example.com"})
    assert ok.status_code == 200 and ok.json() == {"installs": 0}, ok.text


async def test_an_encoding_error_of_the_brokers_own_is_still_a_500(app, client, caplog):
    """Only a caller's half surrogate pair is the caller's fault: any other encoding
    error is the broker's own, the request middleware's 500 (and logged there)."""

    async def broken() -> dict[str, str]:
        "café".encode("ascii")
        return {}

    app.add_api_route("/test-only/broken", broken, methods=["GET"])
    with caplog.at_level(logging.INFO, logger="broker"):
        r = await client.get("/test-only/broken")
    assert_error(r, 500, "internal_error")
    assert "unhandled error" in caplog.text
