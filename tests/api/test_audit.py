"""GET /audit: who did what to which store, newest first, filtered, paged."""

from __future__ import annotations

from tests.support import install_store, register_api_key_store

READ = "installs:read"


async def register(client, auth, store_id, sub="ops-bob"):
    await register_api_key_store(
        client, auth("installs:admin", sub=sub), store_id, api_key="audit-test-key-" + "a" * 16
    )


async def events(client, auth, **params):
    response = await client.get("/audit", params=params, headers=auth(READ))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


async def test_a_full_story_is_in_the_log_newest_first_without_secrets(client, neto, auth):
    got = await install_store(client, neto, "shop.example.com", store_id="N1001")
    bundle = await client.get(
        "/credentials/N1001", headers=auth("credentials:read", sub="orders", stores=["N1001"])
    )
    assert bundle.status_code == 200
    await client.delete("/installs/N1001", headers=auth("installs:admin", sub="ops-alice"))

    body = await events(client, auth)
    story = [(e["event"], e["actor"], e["store_id"]) for e in body["items"]]
    assert story == [
        ("install.revoked", "ops-alice", "N1001"),
        ("bundle.issued", "orders", "N1001"),
        ("install.created", "neto", "N1001"),
    ]
    ids = [e["id"] for e in body["items"]]
    assert ids == sorted(ids, reverse=True)
    assert body["items"][1]["details"]["bundle_id"] == bundle.json()["bundle_id"]
    assert body["items"][1]["request_id"] == bundle.headers["x-request-id"]
    assert body["next_cursor"] is None
    for secret in (got["access_token"], got["code"], got["state"]):
        assert secret not in str(body)


async def test_filters_by_store_actor_and_event(client, auth):
    await register(client, auth, "A1", sub="ops-bob")
    await register(client, auth, "B2", sub="ops-carol")
    await client.delete("/installs/A1", headers=auth("installs:admin", sub="ops-carol"))

    by_store = await events(client, auth, store_id="A1")
    assert [e["event"] for e in by_store["items"]] == ["install.revoked", "install.created"]
    by_actor = await events(client, auth, actor="ops-carol")
    assert [(e["event"], e["store_id"]) for e in by_actor["items"]] == [
        ("install.revoked", "A1"),
        ("install.created", "B2"),
    ]
    by_event = await events(client, auth, event="install.created")
    assert [e["store_id"] for e in by_event["items"]] == ["B2", "A1"]
    both = await events(client, auth, event="install.created", actor="ops-carol")
    assert [e["store_id"] for e in both["items"]] == ["B2"]
    assert (await events(client, auth, actor="nobody"))["items"] == []


async def test_pages_stay_exact_while_events_are_written(client, auth):
    for n in range(5):
        await register(client, auth, f"P{n}")
    first = await events(client, auth, limit=2)
    assert [e["store_id"] for e in first["items"]] == ["P4", "P3"]
    for n in range(5, 8):  # newer events arrive between the pages
        await register(client, auth, f"P{n}")
    rest, cursor = [], first["next_cursor"]
    while cursor:
        page = await events(client, auth, limit=2, cursor=cursor)
        rest += [e["store_id"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert rest == ["P2", "P1", "P0"]


async def test_bad_cursor_and_limits_use_the_envelope(client, auth):
    for params, status in (
        ({"cursor": "%%%"}, 400),
        # A cursor, but a position no audit row can have (tests/api/test_cursors_trust4.py).
        ({"cursor": "WyJ4Il0"}, 422),  # ["x"]
        ({"cursor": "WzBd"}, 422),  # [0]
        ({"cursor": "W3RydWVd"}, 422),  # [true]
        ({"limit": 500}, 422),
    ):
        response = await client.get("/audit", params=params, headers=auth(READ))
        assert response.status_code == status, (params, response.text)
        assert response.json()["error"] == "validation_error"


async def test_audit_needs_installs_read(client, auth):
    assert (await client.get("/audit")).status_code == 401
    response = await client.get("/audit", headers=auth("credentials:read invoke"))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert (await client.get("/audit", headers=auth("installs:admin"))).status_code == 200
