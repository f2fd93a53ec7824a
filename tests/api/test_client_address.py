"""An operator can see which client address the install limit counts: `/readyz` names it
and a line at start-up says it, so a deployment behind an Ingress that still counts the
peer (every merchant one address) is visible before launch day, not at the 31st install."""

from __future__ import annotations

import logging

import pytest

from tests.api.test_invoke import client_for


@pytest.mark.parametrize(("proxies", "rule"), [(0, "peer"), (2, "x-forwarded-for[-2]")])
async def test_readyz_and_the_start_up_log_name_the_client_address_rule(
    app_factory, settings_factory, caplog, proxies, rule
):
    caplog.set_level(logging.INFO, logger="broker")
    app = await app_factory(settings_factory(trusted_proxies=proxies))
    [line] = [r for r in caplog.records if r.name == "broker" and "client address" in r.message]
    assert line.levelno == logging.INFO
    assert rule in line.getMessage() and f"BROKER_TRUSTED_PROXIES={proxies}" in line.getMessage()
    assert line.fields == {"client_address": rule}  # type: ignore[attr-defined]
    async with await client_for(app) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["client_address"] == rule
    assert body["checks"] == {"keys": True, "database": True, "budget": True}, "checks kept"


async def test_a_replica_that_is_not_ready_still_names_the_rule(app_factory, settings_factory):
    app = await app_factory(settings_factory(trusted_proxies=1))
    app.state.services.upstream.limits.hold(30)
    async with await client_for(app) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["client_address"] == "x-forwarded-for[-1]"
    assert ready.json()["error"] == "service_unavailable"
