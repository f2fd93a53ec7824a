"""The per-store limits with a controlled clock: token buckets and their shares, pause,
in-flight cap."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import RateLimited
from service.neto import limits as limits_module
from service.neto.limits import Share, StoreLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_a_bucket_per_store():
    clock = Clock()
    # Alone: a burst of a tenth of 60 (6), refilling at the other 54 a minute.
    limits = StoreLimits(max_in_flight=8, rate_per_minute=60, pause_seconds=60, clock=clock)
    for _ in range(6):
        limits.admit("A")
    with pytest.raises(RateLimited) as refused:
        limits.admit("A")
    assert refused.value.headers["Retry-After"] == "2"  # one token refills in 1.1 s
    limits.admit("B")  # another store is not affected
    clock.now += 1.2
    limits.admit("A")
    assert not limits.try_take("A")


def test_shares_of_the_budget():
    assert Share.of(500, 1) == Share(capacity=50, rate=450 / 60)
    three = Share.of(120, 3)
    assert three.capacity == pytest.approx(4) and three.rate == pytest.approx(36 / 60)
    # Bursts plus a minute of refill add up to the budget, whatever the replica count.
    for budget, replicas in [(500, 1), (500, 7), (120, 2), (120, 3), (60, 6)]:
        share = Share.of(budget, replicas)
        assert replicas * (share.capacity + 60 * share.rate) == pytest.approx(budget)
    assert Share.of(3, 5).capacity == 1  # a replica can always send eventually
    assert Share.of(3, 5).rate > 0


def _hammer(replicas: list[StoreLimits], clock: Clock, sent: list[float]) -> None:
    for limits in replicas:
        while limits.try_take("S"):
            sent.append(clock.now)


def test_budget_holds_across_replicas_while_one_joins():
    """Three replicas' buckets, hammered every 50 ms; the third joins at 20 s the way the
    heartbeat makes it: the others shrink their share when they see it, and it holds its
    own spending until they have. No 60 s window holds more than the budget, and none
    less than 80 % of it."""
    clock, sent = Clock(), []
    start = clock.now

    def replica() -> StoreLimits:
        limits = StoreLimits(max_in_flight=8, rate_per_minute=120, pause_seconds=60, clock=clock)
        limits.set_replicas(2)
        return limits

    a, b = replica(), replica()
    c: StoreLimits | None = None
    for tick in range(int(130 / 0.05)):
        clock.now = start + tick * 0.05
        if c is None and clock.now - start >= 20:
            c = replica()
            c.set_replicas(3)
            c.hold(4.0)  # two beats of 2 s
        if c is not None and clock.now - start >= 21.5:  # a and b's next beat
            a.set_replicas(3)
            b.set_replicas(3)
        _hammer([a, b] if c is None else [a, b, c], clock, sent)
    windows = [
        sum(1 for t in sent if s <= t < s + 60) for s in [start + k * 0.5 for k in range(141)]
    ]
    assert max(windows) <= 120
    assert min(windows) >= 96


def test_a_held_replica_is_not_done_waiting_until_a_new_store_can_be_called():
    """Nothing refills while held, so the hold's end is not yet a whole token: held_for
    (what /readyz waits for) also counts the first token's refill."""
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=500, pause_seconds=60, clock=clock)
    limits.set_replicas(2)  # refills 225 a minute: a token every 0.27 s
    limits.hold(4.0)
    clock.now += 4.0
    assert limits.held_for() == pytest.approx(60 / 225)
    with pytest.raises(RateLimited):
        limits.admit("A")
    clock.now += 0.27
    assert limits.held_for() == 0
    limits.admit("B")  # a store never called before: its bucket began at the hold's end


def test_pause_refuses_until_it_ends():
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=500, pause_seconds=60, clock=clock)
    limits.pause("A")
    clock.now += 45
    with pytest.raises(RateLimited) as refused:
        limits.admit("A")
    assert refused.value.headers["Retry-After"] == "15"
    assert not limits.try_take("A")
    clock.now += 15
    limits.admit("A")


async def test_in_flight_cap_waits_briefly_then_refuses(monkeypatch):
    monkeypatch.setattr(limits_module, "QUEUE_WAIT_SECONDS", 0.05)
    limits = StoreLimits(max_in_flight=2, rate_per_minute=500, pause_seconds=60)
    async with limits.slot("A"), limits.slot("A"):
        with pytest.raises(RateLimited):
            async with limits.slot("A"):
                pass
        async with limits.slot("B"):
            pass
    # A waiter gets a slot released within the wait (a long one: a loaded machine may
    # take more than 50 ms to run the release).
    monkeypatch.setattr(limits_module, "QUEUE_WAIT_SECONDS", 5.0)
    one = StoreLimits(max_in_flight=1, rate_per_minute=500, pause_seconds=60)
    async with one.slot("A"):
        waiter = asyncio.create_task(_enter(one))
        await asyncio.sleep(0.01)
        assert not waiter.done()
    assert await waiter


async def _enter(limits: StoreLimits) -> bool:
    async with limits.slot("A"):
        return True


def test_idle_stores_are_swept_out_but_active_and_paused_ones_are_kept(monkeypatch):
    monkeypatch.setattr(limits_module, "SWEEP_EVERY", 100)
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=30, pause_seconds=300, clock=clock)
    for n in range(100):
        limits.admit(f"old{n}")
    limits.pause("old0")  # still paused after the window
    for _ in range(2):
        limits.admit("old1")  # its burst of 3 is spent...
    clock.now += 61  # ...long enough ago for every bucket to refill
    limits.admit("busy")  # the 101st store: the table sweeps before it grows
    assert len(limits) == 2, "only the paused store and the new one remain"
    with pytest.raises(RateLimited):
        limits.check_paused("old0")  # the pause survived the sweep
    for _ in range(3):
        limits.admit("old1")  # a swept store starts with a fresh budget
