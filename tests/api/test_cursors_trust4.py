"""Id cursors (`/events`, `/audit`, a webhook's delivery log) that no row can have: a
position past the 64-bit ids, negative, or not a whole number is 422 `validation_error`
in the envelope, never a 500 from the database driver; the largest id still pages."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.support import assert_error, register_api_key_store

MAX_ID = 2**63 - 1


def cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


OUT_OF_RANGE = [10**30, 2**63, -(2**63) - 1, -1, 1.5, 1e300, "7", True, None]


@pytest.fixture
async def hook_id(client, auth, neto) -> str:
    """A subscription (its receiver is never reached) and one install change."""
    admin = auth("installs:admin")
    r = await client.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=admin)
    assert r.status_code == 201, r.text
    await register_api_key_store(client, admin, "C1")
    webhook_id: str = r.json()["id"]
    return webhook_id


def routes(hook: str) -> list[tuple[str, str, str]]:
    return [
        ("/events", "after", "events:read"),
        ("/audit", "cursor", "installs:read"),
        (f"/webhooks/{hook}/deliveries", "cursor", "installs:read"),
    ]


@pytest.mark.parametrize("position", OUT_OF_RANGE, ids=repr)
async def test_a_position_no_row_can_have_is_422_not_500(client, auth, hook_id, position):
    for path, name, scope in routes(hook_id):
        r = await client.get(path, params={name: cursor(position)}, headers=auth(scope))
        body = assert_error(r, 422, "validation_error")
        assert str(MAX_ID) in body["detail"], (path, body)


async def test_zero_is_out_of_range_for_the_audit_log_only(client, auth, hook_id):
    r = await client.get("/events", params={"after": cursor(0)}, headers=auth("events:read"))
    assert r.status_code == 200, r.text  # the feed's start
    r = await client.get("/audit", params={"cursor": cursor(0)}, headers=auth("installs:read"))
    assert_error(r, 422, "validation_error")


async def test_the_largest_id_is_a_valid_position(client, auth, hook_id):
    r = await client.get("/events", params={"after": cursor(MAX_ID)}, headers=auth("events:read"))
    assert r.status_code == 200, r.text
    assert r.json()["events"] == []  # nothing past it
    r = await client.get("/audit", params={"cursor": cursor(MAX_ID)}, headers=auth("installs:read"))
    assert r.status_code == 200, r.text
    # Everything is before it: the subscription, then the install.
    assert [e["event"] for e in r.json()["items"]] == ["install.created", "webhook.created"]
    r = await client.get(
        f"/webhooks/{hook_id}/deliveries",
        params={"cursor": cursor(MAX_ID)},
        headers=auth("installs:read"),
    )
    assert r.status_code == 200, r.text


async def test_what_is_no_cursor_at_all_stays_400(client, auth, hook_id):
    for path, name, scope in routes(hook_id):
        not_a_list = base64.urlsafe_b64encode(b'{"seq":1}').decode()
        for bad in ("%%%", cursor(1, 2), not_a_list):
            r = await client.get(path, params={name: bad}, headers=auth(scope))
            assert_error(r, 400, "validation_error")
