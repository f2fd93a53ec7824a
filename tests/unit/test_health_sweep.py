"""The health sweep: verifies active installs through the install service, flags a store
Neto now refuses, stays behind callers' use of a store's budget, spreads its work."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from service.events.models import Event
from service.installs.models import Install
from service.jobs.sweep import ACTOR, HealthSweep
from service.neto.actions import VERIFY_ACTION
from service.neto.limits import StoreLimits
from service.services import Services
from tests.fakes import neto as fake
from tests.support import audit_rows

KEY = "sweep-api-key-" + "k" * 16


async def add_store(services: Services, neto: Any, store_id: str) -> str:
    domain = f"{store_id.lower()}.example.com"
    neto.add_api_key_store(domain, "api-user", KEY)
    await services.installs.register_api_key(
        store_id=store_id, store_domain=domain, username="api-user", api_key=KEY,
        actor="test", request_id=None,
    )  # fmt: skip
    return domain


def sweep_of(services: Services, *, period_hours: float = 1.0, tick_seconds: float = 3600.0):
    # One tick as long as the period: every due install is in the tick's quota.
    return HealthSweep(
        services.sessionmaker, services.installs, services.upstream.limits,
        period_hours=period_hours, tick_seconds=tick_seconds,
    )  # fmt: skip


def verifies_seen(neto: Any, domain: str) -> int:
    return sum(
        1
        for seen in neto.api_requests
        if seen.action == VERIFY_ACTION and f"/{domain}/" in seen.path
    )


async def installs(services: Services) -> dict[str, Install]:
    async with services.sessionmaker() as session:
        return {i.store_id: i for i in (await session.execute(select(Install))).scalars()}


async def test_sweep_flags_a_store_neto_now_refuses_and_audits_only_what_matters(app, neto):
    services: Services = app.state.services
    healthy = await add_store(services, neto, "S1")
    refused = await add_store(services, neto, "S2")
    del neto.credentials[refused]  # the merchant uninstalled: Neto answers 401
    version = services.store_cache.version("S2")

    await sweep_of(services).tick()

    rows = await installs(services)
    assert rows["S2"].status == "reauth_required"
    assert rows["S1"].status == "active"
    assert rows["S1"].last_swept_at is not None and rows["S2"].last_swept_at is not None
    assert services.store_cache.version("S2") > version, "not changed through the install service"
    assert verifies_seen(neto, healthy) == 1 and verifies_seen(neto, refused) == 1
    swept = [r for r in await audit_rows(app) if r["actor"] == ACTOR]
    # The refusal is audited; a healthy store that stayed healthy writes no row.
    assert [(r["event"], r["store_id"]) for r in swept] == [("install.verified", "S2")]
    assert swept[0]["details"]["changed"] is True
    assert swept[0]["details"]["upstream_status"] == 401
    # ...and the change emitted its event, as every install change does.
    async with services.sessionmaker() as session:
        events = (await session.execute(select(Event.type, Event.store_id, Event.data))).all()
    assert [(e.type, e.store_id, e.data["actor"]) for e in events if e.store_id == "S2"][-1] == (
        "install.reauth_required",
        "S2",
        ACTOR,
    )

    # Swept within the period: the next tick leaves both alone.
    await sweep_of(services).tick()
    assert verifies_seen(neto, healthy) == 1 and verifies_seen(neto, refused) == 1


async def test_sweep_flags_a_store_neto_answers_403_as_it_does_a_401(app, neto):
    services: Services = app.state.services
    await add_store(services, neto, "S1")
    # Neto's own refusal (its error envelope), not a page from something in front of it.
    forbidden = {"Ack": "Error", "Messages": {"Error": [{"Message": "Access denied"}]}}
    neto.api_responses.append(fake.answer(403, forbidden))

    await sweep_of(services).tick()

    assert (await installs(services))["S1"].status == "reauth_required"
    [swept] = [r for r in await audit_rows(app) if r["actor"] == ACTOR]
    assert swept["event"] == "install.verified"
    assert (swept["details"]["upstream_status"], swept["details"]["changed"]) == (403, True)
    async with services.sessionmaker() as session:
        events = (await session.execute(select(Event.type, Event.store_id, Event.data))).all()
    assert [(e.type, e.data["actor"]) for e in events if e.store_id == "S1"][-1] == (
        "install.reauth_required",
        ACTOR,
    )


async def test_sweep_leaves_flagged_and_revoked_installs_alone(app, neto):
    services: Services = app.state.services
    flagged = await add_store(services, neto, "S1")
    revoked = await add_store(services, neto, "S2")
    await services.installs.mark_reauth_required(
        "S1", actor="test", request_id=None, action="GetItem", upstream_status=401,
        token_fingerprint=None,
    )  # fmt: skip
    await services.installs.revoke("S2", actor="test", request_id=None)
    await sweep_of(services).tick()
    assert verifies_seen(neto, flagged) == 0 and verifies_seen(neto, revoked) == 0


async def test_sweep_spreads_the_period_over_ticks(app, neto):
    services: Services = app.state.services
    domains = [await add_store(services, neto, f"S{i}") for i in range(6)]
    # 6 installs, a period of 60 ticks of 10 s: at most one verify per tick.
    sweep = sweep_of(services, period_hours=600 / 3600, tick_seconds=10)
    await sweep.tick()
    await sweep.tick()
    assert sum(verifies_seen(neto, d) for d in domains) == 2
    swept = [i for i in (await installs(services)).values() if i.last_swept_at is not None]
    assert len(swept) == 2


async def test_sweep_never_spends_the_budget_callers_are_using(app_factory, settings_factory,
                                                              neto, auth):  # fmt: skip
    import httpx

    # A bucket of 10 (a tenth of the budget), refilling 1.5 a second.
    app = await app_factory(settings_factory(store_rate_per_minute=100))
    services: Services = app.state.services
    busy = await add_store(services, neto, "S1")
    idle = await add_store(services, neto, "S2")
    headers = auth("invoke", stores=["S1"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:

        async def invoke() -> int:
            response = await client.post("/invoke/S1/GetItem", json={}, headers=headers)
            return response.status_code

        # Callers have used 6 of the store's bucket of 10.
        assert [await invoke() for _ in range(6)] == [200] * 6
        await sweep_of(services).tick()
        # Under half the bucket left: the busy store is put off, the idle one is verified.
        assert verifies_seen(neto, busy) == 0
        assert verifies_seen(neto, idle) == 1
        assert (await installs(services))["S1"].last_swept_at is None, "deferred, still due"
        # Callers still get the rest of their bucket: the sweep took none of it.
        assert [await invoke() for _ in range(4)] == [200] * 4
    busy_requests = [seen for seen in neto.api_requests if f"/{busy}/" in seen.path]
    assert len(busy_requests) == 10
    assert verifies_seen(neto, busy) == 0


def test_headroom_counts_the_bucket_the_slots_and_the_pause():
    now = [0.0]
    # A bucket of 4 (a tenth of 40), refilling 0.6 a second.
    limits = StoreLimits(
        max_in_flight=1, rate_per_minute=40, pause_seconds=30, clock=lambda: now[0]
    )
    assert limits.has_headroom("S", 0.5)
    limits.admit("S")
    limits.admit("S")
    assert limits.has_headroom("S", 0.5), "half the bucket is left"
    limits.admit("S")
    assert not limits.has_headroom("S", 0.5), "a quarter is left"
    now[0] = 60.0  # refilled
    assert limits.has_headroom("S", 0.5)
    limits.pause("S")
    assert not limits.has_headroom("S", 0.5), "a paused store has no headroom"


async def test_headroom_needs_a_free_slot():
    limits = StoreLimits(max_in_flight=1, rate_per_minute=100, pause_seconds=30)
    async with limits.slot("S"):
        assert not limits.has_headroom("S", 0.5), "a caller holds the store's only slot"
    assert limits.has_headroom("S", 0.5)
