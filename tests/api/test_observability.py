"""/metrics and /readyz."""

from __future__ import annotations

import re

import httpx
import pytest
from pydantic import ValidationError

from tests.support import install_store, metric, metric_or_none


async def test_metrics_count_installs_by_status_from_the_database(client, neto, auth):
    await install_store(client, neto, "one.example.com", store_id="N1")
    await install_store(client, neto, "two.example.com", store_id="N2")
    await install_store(client, neto, "three.example.com", store_id="N3")
    await client.delete("/installs/N3", headers=auth("installs:admin"))

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert metric(response.text, "broker_installs", status="active") == 2
    assert metric(response.text, "broker_installs", status="revoked") == 1
    assert metric(response.text, "broker_installs", status="reauth_required") == 0


async def test_metrics_label_requests_by_route_template_never_by_id(client, neto, auth):
    await install_store(client, neto, "shop.example.com", store_id="N7001")
    before = (await client.get("/metrics")).text
    headers = auth("credentials:read", stores=["N7001"])
    for _ in range(3):
        assert (await client.get("/credentials/N7001", headers=headers)).status_code == 200
    assert (await client.get("/credentials/N404", headers=auth("credentials:read", stores=["*"]))
            ).status_code == 404  # fmt: skip
    after = (await client.get("/metrics")).text

    def delta(name, **labels):
        # A series first used between the two scrapes is not in the first one.
        return metric(after, name, **labels) - (metric_or_none(before, name, **labels) or 0.0)

    route = "/credentials/{store_id}"
    assert delta("broker_requests_total", method="GET", route=route, status="200") == 3
    assert delta("broker_requests_total", method="GET", route=route, status="404") == 1
    assert delta("broker_request_duration_seconds_count", method="GET", route=route) == 4
    assert delta("broker_bundles_issued_total", auth_method="oauth") == 3
    assert "N7001" not in after and "N404" not in after
    # Every family the issue names is exposed (upstream and pause counters once used).
    for family in ("broker_upstream_requests", "broker_rate_limit_pauses"):
        assert re.search(rf"^# TYPE {family}_total counter$|^# TYPE {family} counter$", after,
                         re.M), family  # fmt: skip


async def test_unmatched_paths_share_one_label(client):
    for n in range(3):
        await client.get(f"/no/such/path/{n}")
    text = (await client.get("/metrics")).text
    assert "/no/such/path" not in text
    assert metric(text, "broker_requests_total", method="GET", route="unmatched", status="404") >= 3


async def test_readyz_is_200_when_the_database_answers(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"keys": True, "database": True, "budget": True},
        "client_address": "peer",
    }


async def test_readyz_is_503_while_the_replica_may_not_spend_its_budget_share(app, client):
    """A new replica (or one whose heartbeat fails) holds its calls until the others count
    it: not ready meanwhile, so a load balancer sends its callers elsewhere."""
    app.state.services.upstream.limits.hold(30)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"keys": True, "database": True, "budget": False}
    assert "budget" in response.json()["detail"]


async def test_readyz_is_503_with_the_envelope_when_the_database_does_not_answer(
    app_factory, settings_factory, database_url, tmp_path
):
    import httpx

    if database_url.startswith("sqlite"):
        dead = f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/broker.db"
    else:
        dead = "postgresql+asyncpg://postgres@127.0.0.1:1/broker"  # nothing listens on port 1
    app = await app_factory(settings_factory(database_url=dead))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["x-broker-error"] == "service_unavailable"
        body = response.json()
        assert body["error"] == "service_unavailable"
        assert body["request_id"] == response.headers["x-request-id"]
        assert "database" in body["detail"]
        assert body["checks"] == {"keys": True, "database": False, "budget": True}
        assert (await client.get("/healthz")).status_code == 200, "liveness does not need a DB"
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200, "an outage is when request metrics matter most"
        assert metric(metrics.text, "broker_requests_total", method="GET", route="/readyz",
                     status="503") >= 1  # fmt: skip


SCRAPE_TOKEN = "scrape-" + "k" * 40


async def test_with_a_metrics_token_only_the_scraper_reads_metrics(
    app_factory, settings_factory, auth
):
    app = await app_factory(settings_factory(metrics_token=SCRAPE_TOKEN))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        for headers in (
            {},
            {"Authorization": f"Bearer {SCRAPE_TOKEN[:-1]}"},
            {"Authorization": f"Basic {SCRAPE_TOKEN}"},
            auth("installs:admin"),  # a caller JWT is not the scrape token
        ):
            r = await client.get("/metrics", headers=headers)
            assert r.status_code == 401, f"{headers}: {r.status_code}"
            assert r.headers["x-broker-error"] == "unauthorized"
            assert "broker_requests_total" not in r.text
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
        assert r.status_code == 200, r.text
        assert "broker_requests_total" in r.text
        # The probes stay open: kubelet sends no token.
        assert (await client.get("/healthz")).status_code == 200


def test_a_short_metrics_token_is_refused_at_start_up(settings_factory):
    with pytest.raises(ValidationError, match="at least 32 characters"):
        settings_factory(metrics_token="short")
