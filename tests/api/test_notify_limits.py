"""The bounds on `/neto-notify/` through the app, set by BROKER_NOTIFY_*: a flood on one
store's URL is 429 past the store's rate while another store's notifications from the
same address are written; wrong tokens past the refusal bound stop that store's URL from
that address and not another store's; every refused one is counted by reason and writes
nothing. The app trusts no proxy (BROKER_TRUSTED_PROXIES=0): every request of the test
client comes from one address, as Neto's come from its few."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_neto_notify import issue_url, order_xml, post, written
from tests.support import assert_error, metric_or_none, register_api_key_store

REFUSED = "broker_neto_notifications_refused_total"
# Slow refills (one token every 20 s or more), so that none comes back during a test.
LIMITS = {
    "notify_store_rate_per_minute": 3,
    "notify_refusals_per_minute": 3,
    "notify_address_rate_per_minute": 1000,
}


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(**LIMITS))


async def refused_counts(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    return {
        reason: metric_or_none(text, REFUSED, reason=reason) or 0
        for reason in ("rate_limited", "unauthorized")
    }


def assert_rate_limited(response: httpx.Response, retry_after: int) -> None:
    """429 with the contract's envelope and a Retry-After of when a token is back: `retry_after`
    seconds after the token was taken, rounded up (a second less on a slow machine)."""
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) in (retry_after - 1, retry_after), response.headers


async def two_stores(client: httpx.AsyncClient, auth: Any) -> tuple[str, str]:
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, "SA")
    await register_api_key_store(client, admin, "SB")
    return await issue_url(client, auth, "SA"), await issue_url(client, auth, "SB")


async def test_a_flood_on_one_store_is_429_past_its_rate_and_another_store_is_written(
    client, auth, database_url
):
    url_a, url_b = await two_stores(client, auth)
    before = await refused_counts(client)

    answers_a, answers_b = [], []
    for n in range(9):  # interleaved, from the one address: B's come amid A's flood
        answers_a.append(await post(client, url_a, order_xml(100 + n, order_id=f"A{n}")))
        if n % 3 == 2:
            answers_b.append(await post(client, url_b, order_xml(200 + n, order_id=f"B{n}")))

    assert [r.status_code for r in answers_a] == [200] * 3 + [429] * 6
    for refused in answers_a[3:]:
        # 3 a minute: the next token is back in 20 s at most.
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 20, refused.headers
        assert "store" in refused.json()["detail"]
    # B's rate is B's own: its three (its whole rate) are all taken.
    assert [r.status_code for r in answers_b] == [200] * 3, [r.text for r in answers_b]
    assert all(r.json()["duplicate"] is False for r in answers_a[:3] + answers_b)

    # Written: A's first three and B's three; nothing of A's refused six.
    assert await written(database_url) == (6, 6)
    r = await client.get("/events?limit=100", headers=auth("events:read"))
    orders = sorted(e["data"]["entity_ids"][0] for e in r.json()["events"]
                    if e["type"] == "neto.order.updated")  # fmt: skip
    assert orders == ["A0", "A1", "A2", "B2", "B5", "B8"]

    after = await refused_counts(client)
    assert after["rate_limited"] - before["rate_limited"] == 6
    assert after["unauthorized"] == before["unauthorized"]


async def test_a_duplicate_is_counted_against_the_store_rate_too(client, auth, database_url):
    """Neto resending one notification is still a write attempt on the store's behalf."""
    url_a, _ = await two_stores(client, auth)
    answers = [await post(client, url_a, order_xml(7)) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.json().get("duplicate") for r in answers[:3]] == [False, True, True]
    assert await written(database_url) == (1, 1)


async def test_wrong_tokens_past_the_refusal_bound_stop_that_store_not_another(
    client, auth, database_url
):
    url_a, url_b = await two_stores(client, auth)
    wrong_a = url_a[:-4] + ("zzzz" if not url_a.endswith("zzzz") else "yyyy")
    before = await refused_counts(client)

    for _ in range(3):
        assert_error(await post(client, wrong_a), 401, "unauthorized")
    for _ in range(4):
        # 3 refusals a minute for this address and store: one forgiven every 20 s.
        assert_rate_limited(await post(client, wrong_a), 20)
    # The bound is on the (address, store) pair, checked before the token: from this
    # address, store A's URL waits too, right token or not...
    blocked = await post(client, url_a, order_xml(1))
    assert_rate_limited(blocked, 20)
    # ...while another store's right token from the same address still works, and so do
    # its wrong ones up to its own bound.
    for n in range(3):
        r = await post(client, url_b, order_xml(10 + n, order_id=f"B{n}"))
        assert r.status_code == 200, r.text
    assert_error(await post(client, url_b[:-4] + "zzzz"), 401, "unauthorized")
    assert await written(database_url) == (3, 3)

    after = await refused_counts(client)
    assert after["unauthorized"] - before["unauthorized"] == 4
    assert after["rate_limited"] - before["rate_limited"] == 5


async def test_a_url_for_no_such_store_is_bounded_like_a_wrong_token(client, auth, database_url):
    await two_stores(client, auth)
    for _ in range(3):
        assert_error(await post(client, "http://broker.test/neto-notify/NOPE/nt_x"), 401,
                     "unauthorized")  # fmt: skip
    assert_rate_limited(await post(client, "http://broker.test/neto-notify/NOPE/nt_x"), 20)
    # A store id too long to be one is counted under one key, not one per id.
    long_ids = ["X" * 300 + str(n) for n in range(4)]
    statuses = [(await post(client, f"http://broker.test/neto-notify/{s}/nt_x")).status_code
                for s in long_ids]  # fmt: skip
    assert statuses == [401, 401, 401, 429]
    assert await written(database_url) == (0, 0)


async def test_the_address_rate_bounds_every_store_from_one_address(
    app_factory, settings_factory, neto, auth, database_url
):
    app = await app_factory(settings_factory(notify_address_rate_per_minute=4))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        url_a, url_b = await two_stores(client, auth)
        answers = [
            await post(client, url_a, order_xml(1)),
            await post(client, url_b, order_xml(2)),
            await post(client, url_a[:-4] + "zzzz"),  # a refused one is a request too
            await post(client, url_b, order_xml(3)),
            await post(client, url_a, order_xml(4)),
            await post(client, url_b, order_xml(5)),
        ]
        assert [r.status_code for r in answers] == [200, 200, 401, 200, 429, 429]
        for refused in answers[4:]:
            assert_rate_limited(refused, 15)  # 4 a minute: one back every 15 s
            assert "address" in refused.json()["detail"]
    assert await written(database_url) == (3, 3)
