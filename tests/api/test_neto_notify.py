"""Neto's notifications through the app (issue 24): a notification in Neto's XML shape,
posted as Neto posts it, becomes one event in the feed and one signed webhook delivery
(verified with the `standardwebhooks` library); the same notification again is no
second event; a wrong or missing token, a revoked store, a DTD or entity, an oversized
body are refused with nothing written; a caller limited to one store never reads
another's events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.support import assert_error, metric_or_none, register_api_key_store

FAST = {"events_poll_seconds": 0.1, "webhook_timeout_seconds": 1}


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(**FAST))


def order_xml(event_id: int | None = 123, order_id: str = "N10154",
              status: str = "Dispatched", kind: str = "Order") -> bytes:  # fmt: skip
    """A notification as Neto's "Order Notifications" page shows it."""
    event = f"<EventID>{event_id}</EventID>" if event_id is not None else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        "<Event>"
        "<CurrentTime>2026-12-07 14:03:09</CurrentTime>"
        f"{event}<EventType>{kind}</EventType>"
        f"<{kind}><{kind}ID>{order_id}</{kind}ID><{kind}Status>{status}</{kind}Status></{kind}>"
        "</Event>"
    ).encode()


# Neto's own headers: its type, and the store's Webhook Verify Token (Neto's, not ours).
NETO_HEADERS = {
    "Content-Type": "text/xml; charset=utf-8",
    "NETO_NOTIFICATION": "Order",
    "NETOAPI_KEY": "the-merchants-neto-verify-token",
    "User-Agent": "Neto-Notifications",
}


async def issue_url(client, auth, store_id: str) -> str:
    r = await client.post(
        f"/installs/{store_id}/notifications/rotate", headers=auth("installs:admin")
    )
    assert r.status_code == 200, r.text
    url: str = r.json()["url"]
    assert url.startswith(f"http://broker.test/neto-notify/{store_id}/nt_"), url
    return url


def path_of(url: str) -> str:
    return httpx.URL(url).path


async def post(client, url: str, body: bytes | None = None, **headers: str) -> httpx.Response:
    return await client.post(
        path_of(url), content=order_xml() if body is None else body,
        headers={**NETO_HEADERS, **headers},
    )  # fmt: skip


async def subscribe(client, auth, url: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/webhooks", json={"url": url, **body}, headers=auth("installs:admin"))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def feed(client, auth, **claims: Any) -> list[dict[str, Any]]:
    r = await client.get("/events?limit=500", headers=auth("events:read", **claims))
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def neto_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"].startswith("neto.")]


async def written(database_url: str) -> tuple[int, int]:
    """(neto events in the outbox, dedupe rows): what a refused request must not change."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            events = await conn.scalar(text("SELECT COUNT(*) FROM events WHERE type LIKE 'neto.%'"))
            seen = await conn.scalar(text("SELECT COUNT(*) FROM neto_notifications"))
    finally:
        await engine.dispose()
    return int(events or 0), int(seen or 0)


async def test_an_order_notification_becomes_one_signed_delivery_and_one_feed_event(
    client, auth, receiver, database_url
):
    hook = await subscribe(client, auth, receiver.url, event_types=["neto.order.updated"])
    await register_api_key_store(client, auth("installs:admin"), "S1")
    url = await issue_url(client, auth, "S1")
    metrics_before = (await client.get("/metrics")).text

    r = await post(client, url)
    assert r.status_code == 200, r.text
    assert r.json()["duplicate"] is False and r.json()["event_id"].startswith("evt_")

    [got] = await receiver.wait_for(1)
    # The library the specification publishes verifies it (a wrong secret would raise).
    verified = StandardWebhook(hook["secret"]).verify(got.body, got.headers)
    assert verified == got.event
    assert got.event["id"] == r.json()["event_id"] == got.headers["webhook-id"]
    assert got.event["type"] == "neto.order.updated"
    assert got.event["data"] == {
        "store_id": "S1", "neto_type": "Order", "neto_event_id": "123",
        "neto_time": "2026-12-07 14:03:09", "status": "Dispatched", "entity_ids": ["N10154"],
    }  # fmt: skip
    assert "raw" not in got.event["data"], (
        "the body Neto sent went to a subscriber that did not ask"
    )
    [event] = neto_events(await feed(client, auth))
    assert event == got.event

    again = await post(client, url)
    assert again.status_code == 200 and again.json() == {
        "received": True, "duplicate": True, "event_id": None,
    }  # fmt: skip
    await asyncio.sleep(0.5)  # a second delivery would be out by now (poll 0.1 s)
    assert len(receiver.received) == 1, "the resent notification was delivered again"
    assert len(neto_events(await feed(client, auth))) == 1
    assert await written(database_url) == (1, 1)

    metrics_after = (await client.get("/metrics")).text
    for outcome in ("accepted", "duplicate"):
        name, labels = "broker_neto_notifications_total", {"type": "neto.order.updated",
                                                            "outcome": outcome}  # fmt: skip
        before = metric_or_none(metrics_before, name, **labels) or 0
        assert metric_or_none(metrics_after, name, **labels) == before + 1, outcome


async def test_the_token_in_netoapi_key_works_and_a_path_token_ignores_the_header(
    client, auth, database_url
):
    await register_api_key_store(client, auth("installs:admin"), "S1")
    url = await issue_url(client, auth, "S1")
    token = url.rsplit("/", 1)[1]
    # No token in the path: NETOAPI_KEY is the broker's token.
    r = await post(client, "http://broker.test/neto-notify/S1", order_xml(1), NETOAPI_KEY=token)
    assert r.status_code == 200, r.text
    # With the token in the path, NETOAPI_KEY is Neto's own (NETO_HEADERS): not compared.
    assert (await post(client, url, order_xml(2))).status_code == 200
    assert await written(database_url) == (2, 2)


async def test_a_wrong_or_missing_token_is_401_and_nothing_is_written(client, auth, database_url):
    await register_api_key_store(client, auth("installs:admin"), "S1")
    await register_api_key_store(client, auth("installs:admin"), "S2")
    url = await issue_url(client, auth, "S1")
    other = await issue_url(client, auth, "S2")
    token = url.rsplit("/", 1)[1]
    refused = [
        await post(client, url[:-2] + ("AA" if url[-2:] != "AA" else "BB")),  # one char off
        await post(client, "http://broker.test/neto-notify/S1/" + other.rsplit("/", 1)[1]),
        await post(client, "http://broker.test/neto-notify/S1"),  # NETOAPI_KEY is Neto's
        await post(client, "http://broker.test/neto-notify/S1", NETOAPI_KEY=""),
        await post(client, f"http://broker.test/neto-notify/NOPE/{token}"),  # no such store
        await post(client, "http://broker.test/neto-notify/S1/" + token + "x" * 200),
    ]
    for response in refused:
        assert_error(response, 401, "unauthorized")
        assert token not in response.text
    assert await written(database_url) == (0, 0)


async def test_a_revoked_store_is_410_and_stays_dead_after_a_reinstall(client, auth, database_url):
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, "S1")
    url = await issue_url(client, auth, "S1")
    assert (await client.delete("/installs/S1", headers=admin)).status_code == 200

    assert_error(await post(client, url), 410, "store_revoked")
    # Only the holder of the right token learns the store was revoked.
    assert_error(await post(client, url[:-3] + "zzz"), 401, "unauthorized")
    r = await client.post("/installs/S1/notifications/rotate", headers=admin)
    assert_error(r, 410, "store_revoked")
    view = await client.get("/installs/S1/notifications", headers=admin)
    assert view.json()["issued"] is False and view.json()["revoked_at"] is not None

    await register_api_key_store(client, admin, "S1")  # reinstalled: the old URL stays dead
    assert_error(await post(client, url), 410, "store_revoked")
    fresh = await issue_url(client, auth, "S1")
    assert (await post(client, fresh)).status_code == 200
    assert await written(database_url) == (1, 1)


@pytest.mark.parametrize(
    "body",
    [
        # Entity expansion ("billion laughs"), an external entity, a bare DTD.
        b'<?xml version="1.0"?><!DOCTYPE Event [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><Event><EventID>&b;</EventID></Event>',
        b'<?xml version="1.0"?><!DOCTYPE Event [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<Event><EventID>&x;</EventID></Event>",
        b'<?xml version="1.0"?><!DOCTYPE Event SYSTEM "http://127.0.0.1:9/event.dtd">'
        + order_xml().split(b"\n", 1)[1],
        b"<Event><EventID>1</EventID>",  # not well-formed
        b"<a>" * 40 + b"</a>" * 40,  # deeper than the cap
        b"<a>" * 8000 + b"</a>" * 8000,  # far deeper, within the size cap (no recursion)
        b'{"Event": ' * 40 + b"1" + b"}" * 40,  # the same in JSON
        b"",
    ],
    ids=[
        "entities",
        "external-entity",
        "dtd",
        "malformed",
        "deep-xml",
        "deeper-xml",
        "deep-json",
        "empty",
    ],
)
async def test_a_dtd_an_entity_or_a_broken_body_is_400_and_nothing_is_written(
    client, auth, database_url, body
):
    await register_api_key_store(client, auth("installs:admin"), "S1")
    url = await issue_url(client, auth, "S1")
    content_type = "application/json" if body.startswith(b"{") else "text/xml"
    assert_error(await post(client, url, body, **{"Content-Type": content_type}), 400,
                 "validation_error")  # fmt: skip
    assert await written(database_url) == (0, 0)


async def test_an_oversized_body_is_413_declared_or_streamed(
    app_factory, settings_factory, neto, auth, database_url
):
    app = await app_factory(settings_factory(**FAST, notify_max_bytes=4096))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        await register_api_key_store(client, auth("installs:admin"), "S1")
        url = await issue_url(client, auth, "S1")
        padding = b"<Note>" + b"x" * 5000 + b"</Note>"
        big = order_xml().replace(b"</Event>", padding + b"</Event>")
        assert_error(await post(client, url, big), 413, "payload_too_large")

        async def chunks():
            for _ in range(10):
                yield b"x" * 1000

        streamed = await client.post(path_of(url), content=chunks(), headers=NETO_HEADERS)
        assert_error(streamed, 413, "payload_too_large")
        # Just under the cap is taken.
        fits = order_xml().replace(b"</Event>", b"<Note>" + b"x" * 3500 + b"</Note></Event>")
        assert (await post(client, url, fits)).status_code == 200
    assert await written(database_url) == (1, 1)


async def test_a_caller_limited_to_store_a_never_sees_store_b_events(client, auth):
    admin = auth("installs:admin")
    for store in ("SA", "SB"):
        await register_api_key_store(client, admin, store)
        url = await issue_url(client, auth, store)
        for n in range(3):
            r = await post(client, url, order_xml(n, order_id=f"{store}-{n}"))
            assert r.status_code == 200, r.text
    limited = neto_events(await feed(client, auth, stores=["SA"]))
    assert [e["data"]["entity_ids"] for e in limited] == [["SA-0"], ["SA-1"], ["SA-2"]]
    assert {e["data"]["store_id"] for e in limited} == {"SA"}
    assert len(neto_events(await feed(client, auth, stores=["*"]))) == 6
    assert neto_events(await feed(client, auth, stores=["SC"])) == []


async def test_a_subscription_filtered_by_store_gets_only_its_store_and_the_raw_body(
    client, auth, receiver
):
    admin = auth("installs:admin")
    hook = await subscribe(client, auth, receiver.url, stores=["SB"], include_raw=True)
    assert hook["stores"] == ["SB"] and hook["include_raw"] is True
    urls = {}
    for store in ("SA", "SB"):
        await register_api_key_store(client, admin, store)
        urls[store] = await issue_url(client, auth, store)
    assert (await post(client, urls["SA"], order_xml(1))).status_code == 200
    body = order_xml(2, order_id="N2")
    assert (await post(client, urls["SB"], body)).status_code == 200

    # SB's install.created, then its notification; nothing of SA's.
    got = await receiver.wait_for(2)
    await asyncio.sleep(0.3)
    assert [(g.event["type"], g.event["data"]["store_id"]) for g in receiver.received] == [
        ("install.created", "SB"), ("neto.order.updated", "SB"),
    ]  # fmt: skip
    notification = got[1]
    StandardWebhook(hook["secret"]).verify(notification.body, notification.headers)
    assert notification.event["data"]["raw"] == body.decode()
    # The feed never shows the raw body.
    assert all("raw" not in e["data"] for e in await feed(client, auth))


async def test_an_unknown_kind_is_kept_under_its_name(client, auth):
    await register_api_key_store(client, auth("installs:admin"), "S1")
    url = await issue_url(client, auth, "S1")
    r = await post(client, url, order_xml(9, order_id="SKU-1", status="Low", kind="Stock"),
                   NETO_NOTIFICATION="Stock")  # fmt: skip
    assert r.status_code == 200, r.text
    [event] = neto_events(await feed(client, auth))
    assert event["type"] == "neto.notification"
    assert event["data"]["neto_type"] == "Stock" and event["data"]["entity_ids"] == ["SKU-1"]


async def test_the_same_shape_in_json_is_taken_too(client, auth):
    await register_api_key_store(client, auth("installs:admin"), "S1")
    url = await issue_url(client, auth, "S1")
    body = {
        "Event": {
            "EventID": 77,
            "EventType": "Order",
            "CurrentTime": "2026-12-07 01:02:03",
            "Order": [{"OrderID": "N1", "OrderStatus": "Pick"}, {"OrderID": "N2"}],
        }
    }
    r = await client.post(path_of(url), json=body)
    assert r.status_code == 200, r.text
    [event] = neto_events(await feed(client, auth))
    assert event["data"]["entity_ids"] == ["N1", "N2"] and event["data"]["neto_event_id"] == "77"


async def test_a_rotation_kills_the_previous_url_and_operators_never_see_the_token(client, auth):
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, "S1")
    view = await client.get("/installs/S1/notifications", headers=admin)
    assert view.status_code == 200 and view.json()["issued"] is False and view.json()["url"] is None
    first = await issue_url(client, auth, "S1")
    second = await issue_url(client, auth, "S1")
    assert_error(await post(client, first, order_xml(1)), 401, "unauthorized")
    assert (await post(client, second, order_xml(2))).status_code == 200
    view = await client.get("/installs/S1/notifications", headers=admin)
    shown = view.json()
    assert shown["issued"] is True and shown["url"] == "http://broker.test/neto-notify/S1/nt_…"
    assert second.rsplit("/", 1)[1] not in view.text
    assert view.headers["cache-control"] == "no-store"
    read_only = await client.get("/installs/S1/notifications", headers=auth("installs:read"))
    assert_error(read_only, 403, "forbidden")
    assert_error(await client.get("/installs/NOPE/notifications", headers=admin), 404,
                 "store_not_found")  # fmt: skip
    audit = await client.get("/audit?event=notifications.token_issued", headers=admin)
    assert len(audit.json()["items"]) == 2 and second.rsplit("/", 1)[1] not in audit.text


async def test_a_burst_is_checked_and_written_in_batches_with_each_answer_its_own(
    app, client, auth, database_url
):
    """32 notifications at once for 4 stores (8 each: as many as a store may have in
    flight), one store's with a wrong token: every right one is
    one event, each answer is its own, and the burst's token checks and writes are a few
    statements, not one session and one transaction each."""
    urls = {}
    for store in ("S1", "S2", "S3", "S4"):
        await register_api_key_store(client, auth("installs:admin"), store)
        urls[store] = await issue_url(client, auth, store)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = app.state.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    sends = [(store, n) for n in range(8) for store in urls]
    try:
        answers = await asyncio.gather(*(
            post(client, urls[store] if store != "S4" else urls[store] + "x",
                 order_xml(n, order_id=f"{store}-{n}"))
            for store, n in sends
        ))  # fmt: skip
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    for (store, _), r in zip(sends, answers, strict=True):
        assert r.status_code == (401 if store == "S4" else 200), (store, r.text)
    accepted = [r.json()["event_id"] for r in answers if r.status_code == 200]
    assert len(set(accepted)) == 24 and all(e.startswith("evt_") for e in accepted)
    events = neto_events(await feed(client, auth))
    assert {(e["data"]["store_id"], e["id"]) for e in events} == {
        (store, r.json()["event_id"])
        for (store, _), r in zip(sends, answers, strict=True)
        if r.status_code == 200
    }
    assert await written(database_url) == (24, 24)
    checks = [s for s in statements if "FROM neto_notify_tokens" in s]
    dedupes = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO NETO_NOTIF")]
    assert 1 <= len(checks) < 16, len(checks)  # 32 requests
    assert 1 <= len(dedupes) < 12, len(dedupes)  # 24 accepted


async def test_token_checks_of_any_batch_size_are_a_few_statement_texts(app, client, auth):
    """PostgreSQL's driver prepares each distinct statement text on each connection: the
    check of 1 to 9 stores at once is one of 5 texts (IN lists padded to a power of
    two), with every verdict still its own."""
    from service.inbound import tokens

    urls = {}
    for n in range(9):
        await register_api_key_store(client, auth("installs:admin"), f"S{n}")
        urls[f"S{n}"] = await issue_url(client, auth, f"S{n}")
    items = [(store, url.rsplit("/", 1)[1]) for store, url in urls.items()]
    items[4] = (items[4][0], items[4][1] + "x")  # a wrong token among them
    items.append(("S404", "nt_" + "a" * 43))  # no such store
    expected = [tokens.Verdict.OK] * 9 + [tokens.Verdict.WRONG]
    expected[4] = tokens.Verdict.WRONG
    statements: set[str] = set()

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.add(statement)

    engine = app.state.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        for size in range(1, len(items) + 1):
            async with app.state.services.sessionmaker() as session:
                verdicts = await tokens.check_many(session, items[:size])
            assert verdicts == expected[:size], size
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 5, statements  # 1, 2, 4, 8 and 16 stores


async def test_seen_notifications_are_pruned_with_their_events(app, client, auth, database_url):
    """Past BROKER_EVENT_RETENTION_DAYS a notification's dedupe row goes with its event
    (the table does not grow for ever); within it, a resend is still a duplicate."""
    from service.jobs import retention

    await register_api_key_store(client, auth("installs:admin"), "S1")
    url = await issue_url(client, auth, "S1")
    assert (await post(client, url, order_xml(1))).status_code == 200
    assert (await post(client, url, order_xml(2))).status_code == 200
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:  # the first one arrived 100 days ago
            old = {"old": datetime(2026, 1, 1, tzinfo=UTC)}
            await conn.execute(text(
                "UPDATE events SET occurred_at = :old WHERE event_id = (SELECT event_id "
                "FROM neto_notifications WHERE dedupe_key = 'id:1')"
            ), old)  # fmt: skip
            await conn.execute(text("UPDATE neto_notifications SET received_at = :old "
                                    "WHERE dedupe_key = 'id:1'"), old)  # fmt: skip
    finally:
        await engine.dispose()
    sessionmaker = app.state.services.sessionmaker
    for target in retention.targets(app.state.services.settings):
        await retention.prune(sessionmaker, target, pause_seconds=0)
    assert await written(database_url) == (1, 1)
    assert (await post(client, url, order_xml(2))).json()["duplicate"] is True
    resent = await post(client, url, order_xml(1))  # forgotten: an event again
    assert resent.status_code == 200 and resent.json()["duplicate"] is False
    assert await written(database_url) == (2, 2)


async def test_a_delivery_round_waits_for_the_receiver_but_not_for_ever(app, client, auth):
    """Neto's answer comes before the fan-out: a webhook round waits while notifications
    are being worked on, at most DEFER_SECONDS (a steady stream still gets deliveries);
    the receiver's count of them goes back to 0 after an answer and after a refusal."""
    import time

    from service.events import worker as worker_module

    services = app.state.services
    await register_api_key_store(client, auth("installs:admin"), "S1")
    url = await issue_url(client, auth, "S1")
    seen: list[int] = []
    real_write = services.notify_writer.write

    async def write(*args: Any) -> Any:
        seen.append(services.notify_writer.working)
        return await real_write(*args)

    services.notify_writer.write = write
    assert (await post(client, url, order_xml(7))).status_code == 200
    assert (await post(client, url + "x", order_xml(8))).status_code == 401
    assert seen == [1] and services.notify_writer.working == 0
    assert services.notify_writer.busy() is False

    webhooks = services.webhooks
    webhooks._busy = lambda: True  # the receiver never goes idle
    started = time.monotonic()
    await webhooks._defer()
    assert worker_module.DEFER_SECONDS - 0.05 <= time.monotonic() - started < 3
    until = time.monotonic() + 0.1
    webhooks._busy = lambda: time.monotonic() < until  # idle in 0.1 s
    started = time.monotonic()
    await webhooks._defer()
    assert 0.05 <= time.monotonic() - started < worker_module.DEFER_SECONDS - 0.1
