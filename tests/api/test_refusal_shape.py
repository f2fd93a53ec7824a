"""Only Neto's own refusal flags a store `reauth_required`: a 401/403 in Neto's error
envelope (JSON or XML, `Ack` not `Success`). A web firewall's or CDN's 403 page in front of
the store (HTML, or any other body) says nothing about the credentials: it is an error like
a 500, the store stays as it was, and the health sweep counts it as `error`, not
`refused`. Through verify, through a call's confirming read, and through the sweep."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from service.installs.models import Install
from service.jobs.sweep import HealthSweep
from service.neto.refusals import neto_refused
from service.web import metrics
from tests.fakes import neto as fake
from tests.support import assert_error, audit_rows, install_store

STORE = "N1001"
DOMAIN = "shop.example.com"
WAF_PAGE = (
    b"<!DOCTYPE html><html><head><title>Access denied</title></head><body>Blocked</body></html>"
)
CDN_PAGE = b"<html><body>Error 1020: Access denied</body></html>"
NETO_JSON = b'{"Ack":"Error","Messages":{"Error":[{"Message":"Access denied"}]}}'
NETO_XML = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<GetCurrencySettingsResponse><Ack>Error</Ack>'
    b"<Messages><Error><Message>Invalid API key</Message></Error></Messages>"
    b"</GetCurrencySettingsResponse>"
)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, NETO_JSON, True),
        (403, NETO_JSON, True),
        (401, NETO_XML, True),
        (403, b'  {"Ack": "Warning"}', True),
        (403, WAF_PAGE, False),
        (403, CDN_PAGE, False),
        (403, b"<html><body><Ack>Error</Ack></body></html>", False),  # a page quoting it
        (403, b"{}", False),
        (403, b'["Ack"]', False),
        (401, b"denied", False),
        (401, b"", False),
        (403, b'{"Ack": "Success"}', False),
        (403, b'{"Ack": "Error"', False),  # cut short
        (200, NETO_JSON, False),  # not a refusal at all
        (500, NETO_JSON, False),
    ],
)
def test_what_counts_as_neto_refusing_the_credentials(status: int, body: bytes, expected: bool):
    assert neto_refused(status, body) is expected


async def status_of(app: Any) -> str:
    async with app.state.services.sessionmaker() as session:
        row = await session.execute(select(Install.status).where(Install.store_id == STORE))  # type: ignore[arg-type]
        return str(row.scalar_one())


@pytest.mark.parametrize("page", [WAF_PAGE, CDN_PAGE], ids=["waf", "cdn"])
@pytest.mark.parametrize("code", [401, 403])
async def test_verify_on_a_firewall_page_is_an_error_and_changes_nothing(
    app, client, neto, auth, page, code
):
    await install_store(client, neto, DOMAIN, store_id=STORE)
    neto.api_responses.append(fake.answer(code, page, content_type="text/html"))
    r = await client.post(f"/installs/{STORE}/verify", headers=auth("installs:admin"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False and body["status"] == "active", body
    assert body["upstream_status"] == code
    assert "envelope" in body["detail"] and "unchanged" in body["detail"]
    assert await status_of(app) == "active"
    events = [row["event"] for row in await audit_rows(app)]
    assert "install.reauth_required" not in events
    r = await client.get(f"/credentials/{STORE}", headers=auth("credentials:read", stores=["*"]))
    assert r.status_code == 200, "the store still serves"


@pytest.mark.parametrize("refusal", [NETO_JSON, NETO_XML], ids=["json", "xml"])
async def test_verify_on_netos_own_refusal_flags_the_store(app, client, neto, auth, refusal):
    await install_store(client, neto, DOMAIN, store_id=STORE)
    kind = "application/json" if refusal.startswith(b"{") else "text/xml"
    neto.api_responses.append(fake.answer(401, refusal, content_type=kind))
    r = await client.post(f"/installs/{STORE}/verify", headers=auth("installs:admin"))
    assert r.json()["status"] == "reauth_required", r.text
    assert await status_of(app) == "reauth_required"


async def test_a_call_whose_confirming_read_meets_a_firewall_page_leaves_the_store_active(
    app, client, neto, auth
):
    await install_store(client, neto, DOMAIN, store_id=STORE)
    # The call is refused in Neto's envelope; the confirming read meets the firewall.
    neto.api_responses.extend([
        fake.answer(401, NETO_JSON),
        fake.answer(403, WAF_PAGE, content_type="text/html"),
    ])  # fmt: skip
    r = await client.post(
        f"/invoke/{STORE}/GetItem", json={}, headers=auth("invoke", stores=[STORE])
    )
    assert_error(r, 502, "upstream_unauthorized")
    assert [s.action for s in neto.api_requests][-2:] == ["GetItem", "GetCurrencySettings"]
    assert await status_of(app) == "active", "a firewall's page flagged the store"


async def test_a_call_confirmed_by_netos_own_refusal_flags_the_store(app, client, neto, auth):
    await install_store(client, neto, DOMAIN, store_id=STORE)
    neto.api_responses.extend([fake.answer(401, NETO_JSON), fake.answer(403, NETO_XML)])
    r = await client.post(
        f"/invoke/{STORE}/GetItem", json={}, headers=auth("invoke", stores=[STORE])
    )
    assert_error(r, 502, "upstream_unauthorized")
    assert await status_of(app) == "reauth_required"


async def test_the_sweep_counts_a_firewall_page_as_an_error_not_a_refusal(app, client, neto):
    services = app.state.services
    await install_store(client, neto, DOMAIN, store_id=STORE)
    refused = metrics.SWEEP_FAILED.labels("refused")._value.get()
    errors = metrics.SWEEP_FAILED.labels("error")._value.get()
    neto.api_responses.append(fake.answer(403, WAF_PAGE, content_type="text/html"))
    sweep = HealthSweep(
        services.sessionmaker, services.installs, services.upstream.limits,
        period_hours=1.0, tick_seconds=3600.0,
    )  # fmt: skip
    await sweep.tick()
    assert any(s.action == "GetCurrencySettings" for s in neto.api_requests), "not swept"
    assert await status_of(app) == "active"
    assert metrics.SWEEP_FAILED.labels("refused")._value.get() == refused
    assert metrics.SWEEP_FAILED.labels("error")._value.get() == errors + 1
