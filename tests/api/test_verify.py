"""`POST /installs/{store_id}/verify`: one cheap read upstream, status updated, audited."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from service.audit.models import AuditEvent
from service.events.models import Event
from service.neto.actions import VERIFY_ACTION
from tests.fakes import neto as fake
from tests.support import install_store

STORE = "N1001"


async def verified_events(app: Any) -> list[AuditEvent]:
    async with app.state.services.sessionmaker() as session:
        rows = await session.execute(
            select(AuditEvent)
            .where(AuditEvent.event == "install.verified")  # type: ignore[arg-type]
            .order_by(AuditEvent.id)  # type: ignore[arg-type]
        )
        return list(rows.scalars())


async def test_verify_ok_then_refused_then_ok_again(app, client, neto, auth):
    got = await install_store(client, neto)
    admin = auth("installs:admin", sub="ops-alice")

    r = await client.post(f"/installs/{STORE}/verify", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() | {"detail": ""} == {
        "store_id": STORE, "ok": True, "status": "active", "upstream_status": 200, "detail": "",
    }  # fmt: skip
    [seen] = neto.api_requests
    assert seen.action == VERIFY_ACTION
    assert seen.body == b"{}"
    assert seen.headers["x_secret_key"] == got["access_token"]

    neto.api_responses.append(fake.answer(401, b'{"Ack":"Error"}'))
    r = await client.post(f"/installs/{STORE}/verify", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is False
    assert r.json()["status"] == "reauth_required"
    assert r.json()["upstream_status"] == 401
    r = await client.get(f"/installs/{STORE}", headers=admin)
    assert r.json()["status"] == "reauth_required"
    r = await client.get(f"/credentials/{STORE}", headers=auth("credentials:read", stores=["*"]))
    assert r.status_code == 409, r.text

    # The merchant's key works again (e.g. Neto fixed it): verify makes the store active.
    r = await client.post(f"/installs/{STORE}/verify", headers=admin)
    assert r.json()["ok"] is True
    assert r.json()["status"] == "active"
    r = await client.get(f"/credentials/{STORE}", headers=auth("credentials:read", stores=["*"]))
    assert r.status_code == 200, r.text

    events = await verified_events(app)
    assert [
        (e.actor, e.details["ok"], e.details["status"], e.details["changed"]) for e in events
    ] == [
        ("ops-alice", True, "active", False),
        ("ops-alice", False, "reauth_required", True),
        ("ops-alice", True, "active", True),
    ]
    assert all(got["access_token"] not in str(e.details) for e in events)


# Neto's own refusal: its error envelope, as the store API answers a key it no longer takes.
NETO_FORBIDDEN = {
    "Ack": "Error",
    "Messages": {"Error": [{"Message": "Access denied", "SeverityCode": "Error"}]},
}


async def test_a_403_from_neto_marks_the_install_reauth_required_as_a_401_does(
    app, client, neto, auth
):
    await install_store(client, neto)
    admin = auth("installs:admin", sub="ops-alice")
    neto.api_responses.append(fake.answer(403, NETO_FORBIDDEN))
    r = await client.post(f"/installs/{STORE}/verify", headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["ok"], r.json()["status"], r.json()["upstream_status"]) == (
        False, "reauth_required", 403,
    )  # fmt: skip
    r = await client.get(f"/installs/{STORE}", headers=admin)
    assert r.json()["status"] == "reauth_required"
    [verified] = await verified_events(app)
    assert (verified.details["status"], verified.details["changed"]) == ("reauth_required", True)
    async with app.state.services.sessionmaker() as session:
        rows = await session.execute(select(Event.type, Event.data).order_by(Event.seq))  # type: ignore[arg-type]
        events = [(e.type, e.data["actor"]) for e in rows]
    assert events[-1] == ("install.reauth_required", "ops-alice"), events


async def test_verify_reports_an_upstream_failure_without_changing_status(client, neto, auth):
    await install_store(client, neto)
    for _ in range(3):  # the read is retried, then Neto's last answer is reported
        neto.api_responses.append(fake.answer(503, b"busy", "text/plain"))
    r = await client.post(f"/installs/{STORE}/verify", headers=auth("installs:admin"))
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is False
    assert r.json()["status"] == "active"
    assert r.json()["upstream_status"] == 503

    neto.api_responses.append(fake.redirect())
    r = await client.post(f"/installs/{STORE}/verify", headers=auth("installs:admin"))
    assert r.json()["ok"] is False
    assert r.json()["upstream_status"] is None
    assert r.json()["detail"].startswith("upstream_unreachable")
    assert not neto.stray_requests


async def test_verify_needs_admin_and_a_live_install(client, neto, auth):
    r = await client.post("/installs/N9999/verify", headers=auth("installs:admin"))
    assert r.status_code == 404
    assert r.json()["error"] == "store_not_found"
    await install_store(client, neto)
    r = await client.post(f"/installs/{STORE}/verify", headers=auth("installs:read"))
    assert r.status_code == 403
    r = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
    assert r.status_code == 200
    r = await client.post(f"/installs/{STORE}/verify", headers=auth("installs:admin"))
    assert r.status_code == 410
    assert r.json()["error"] == "store_revoked"
    assert not neto.api_requests
