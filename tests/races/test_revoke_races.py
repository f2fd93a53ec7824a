"""Revoke, bundles and a reinstall of one store, all at once from many tasks.

The final state must be a legal one (revoked with no secret, or active with the new
token), every issued bundle must be audited, and no bundle carrying the revoked token may
be issued once the revoke has answered (on this replica the cached copy is dropped at
once; the audit log's times confirm it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

import pytest
from sqlalchemy import select

from service.audit.models import AuditEvent
from service.db import utcnow
from service.installs.models import Install
from service.installs.sealing import fingerprint
from tests.support import install_store, start_install

TASKS, PER_TASK = 6, 10
ROUNDS = 3  # the interleavings differ from round to round; one round can miss a bug
MAX_CALLS = 500  # per task: bounds the race if the revoke or the reinstall never answers


@dataclass
class Call:
    started: float
    finished: float
    status: int
    token: str | None
    bundle_id: str | None


@dataclass
class Window:
    started: float = 0.0
    finished: float = 0.0
    finished_at: datetime | None = None  # wall clock, to compare with audit rows


@pytest.mark.parametrize(
    ("revoke_after", "reinstall_after", "first"),
    [(0.01, 0.05, "revoke"), (0.05, 0.01, "reinstall"), (0.02, 0.02, None)],
    ids=["revoke-then-reinstall", "reinstall-then-revoke", "together"],
)
async def test_revoke_bundles_and_reinstall_race_to_a_legal_end(
    client, app, neto, auth, revoke_after, reinstall_after, first
):
    for round_ in range(ROUNDS):
        await race(client, app, neto, auth, f"N10{round_}", f"shop{round_}.example.com",
                   revoke_after + round_ * 0.003, reinstall_after, first)  # fmt: skip


async def race(client, app, neto, auth, store, domain, revoke_after, reinstall_after, first):
    old = (await install_store(client, neto, domain, store_id=store))["access_token"]
    pending = await start_install(client, domain)
    code = neto.authorize(domain, store_id=store)
    new = neto.codes[code]["access_token"]
    reader = auth("credentials:read", stores=[store])
    admin = auth("installs:admin")
    calls: list[Call] = []
    revoke, reinstall = Window(), Window()
    # The revoke and the reinstall wait for a bundle with the old token to be served, so
    # "no old token after the revoke" always has old tokens to judge.
    served_old = asyncio.Event()

    def settled() -> bool:
        return bool(revoke.finished and reinstall.finished)

    async def bundles() -> None:
        # Until both have answered, and a few more after. A short pause between calls
        # lets the writes in: with none at all, the reinstall once waited over a second.
        made = after = 0
        while (made < PER_TASK or after < 2) and made < MAX_CALLS:
            made += 1
            after += settled()
            started = time.monotonic()
            r = await client.get(f"/credentials/{store}", headers=reader)
            body = r.json()
            ok = r.status_code == 200
            calls.append(
                Call(started, time.monotonic(), r.status_code,
                     body["headers"]["X_SECRET_KEY"] if ok else None,
                     body["bundle_id"] if ok else None)
            )  # fmt: skip
            assert ok or body["error"] == "store_revoked", body
            if ok and calls[-1].token == old:
                served_old.set()
            await asyncio.sleep(0.002)

    async def timed(window: Window, delay: float, request) -> None:
        await served_old.wait()
        await asyncio.sleep(delay)
        window.started = time.monotonic()
        r = await request()
        window.finished, window.finished_at = time.monotonic(), utcnow()
        assert r.status_code == 200, r.text

    await asyncio.gather(
        *(bundles() for _ in range(TASKS)),
        timed(revoke, revoke_after, lambda: client.delete(f"/installs/{store}", headers=admin)),
        timed(
            reinstall,
            reinstall_after,
            lambda: client.get("/oauth/callback", params={"state": pending["state"], "code": code}),
        ),
    )

    # The race happened: bundles were read while each write ran, some with the old token,
    # and some after both had answered.
    for name, window in (("revoke", revoke), ("reinstall", reinstall)):
        assert any(c.started < window.finished and c.finished > window.started for c in calls), (
            f"raced: no bundle call was in flight during the {name}"
        )
    assert any(c.token == old for c in calls), "raced: no bundle with the old token"
    assert any(c.started > max(revoke.finished, reinstall.finished) for c in calls), (
        "raced: no bundle call after both answered"
    )
    if first is not None:
        assert (revoke.started < reinstall.started) == (first == "revoke"), f"{first} first"

    for call in calls:
        if call.token == old:
            assert call.started < revoke.finished, "old token served after the revoke answered"
            assert call.started < reinstall.finished, "old token served after the reinstall"
        elif call.token == new:
            assert call.finished > reinstall.started, "new token before the reinstall began"
        else:
            assert call.status == 410
            assert call.finished > revoke.started, "410 before the revoke began"
        if call.started > revoke.finished and call.finished < reinstall.started:
            assert call.status == 410, "after the revoke, before the reinstall: revoked"

    async with app.state.services.sessionmaker() as session:
        install = (
            await session.execute(select(Install).where(Install.store_id == store))
        ).scalar_one()
        events = list(
            (
                await session.execute(select(AuditEvent).where(AuditEvent.store_id == store))
            ).scalars()
        )
    issued = {e.details["bundle_id"]: e for e in events if e.event == "bundle.issued"}
    served = [c for c in calls if c.status == 200]
    assert {c.bundle_id for c in served} <= set(issued), "every bundle issued is audited"
    for call in served:
        if call.token == old:
            assert issued[call.bundle_id].at < revoke.finished_at, "audited after the revoke"

    # The end state is legal, and the next bundle agrees with it.
    after = await client.get(f"/credentials/{store}", headers=reader)
    if install.status == "revoked":
        assert install.secret_sealed is None and install.user_sealed is None
        # The fingerprint of the token it held when revoked stays, for the audit trail.
        assert install.token_fingerprint in {fingerprint(old), fingerprint(new)}
        assert revoke.finished > reinstall.started, "revoked only if the revoke ended last"
        assert after.status_code == 410
    else:
        assert install.status == "active"
        assert install.token_fingerprint == fingerprint(new), "never the revoked token"
        assert reinstall.finished > revoke.started
        assert after.status_code == 200 and after.json()["headers"]["X_SECRET_KEY"] == new
