"""The lease primitive: one holder at a time, renewals, take-over after expiry, release.
Real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from service.jobs.leases import LeaseKeeper


async def test_one_holder_at_a_time_until_it_lets_go(app):
    sessionmaker = app.state.services.sessionmaker
    first = LeaseKeeper(sessionmaker, "test-job", ttl_seconds=60, holder="replica-a")
    second = LeaseKeeper(sessionmaker, "test-job", ttl_seconds=60, holder="replica-b")

    assert await first.hold()
    assert not await second.hold(), "a live lease was taken by another holder"
    assert await first.hold(), "the holder could not renew its own lease"
    await second.release()  # not its lease: changes nothing
    assert not await second.hold()
    await first.release()
    assert await second.hold(), "a released lease was not free"


async def test_racing_replicas_get_exactly_one_lease(app):
    sessionmaker = app.state.services.sessionmaker
    keepers = [
        LeaseKeeper(sessionmaker, "race-job", ttl_seconds=60, holder=f"r{i}") for i in range(6)
    ]
    won = await asyncio.gather(*(keeper.hold() for keeper in keepers))
    assert sum(won) == 1, f"expected one winner, got {won}"


async def test_an_expired_lease_is_taken_over(app):
    sessionmaker = app.state.services.sessionmaker
    dead = LeaseKeeper(sessionmaker, "lapse-job", ttl_seconds=0.2, holder="dead")
    live = LeaseKeeper(sessionmaker, "lapse-job", ttl_seconds=60, holder="live")
    assert await dead.hold()
    assert not await live.hold()
    await asyncio.sleep(0.3)
    assert await live.hold(), "an expired lease was not taken over"
    assert not await dead.hold(), "the old holder came back over a live lease"
