"""The per-store limits with a controlled clock: sliding window, pause, in-flight cap."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import RateLimited
from service.neto import limits as limits_module
from service.neto.limits import StoreLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_a_sliding_minute_per_store():
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=3, pause_seconds=60, clock=clock)
    for step in range(3):
        clock.now += 10 * step
        limits.admit("A")  # at 1000, 1010, 1030
    with pytest.raises(RateLimited) as refused:
        limits.admit("A")
    assert refused.value.headers["Retry-After"] == "30"  # the first call leaves at 1060
    limits.admit("B")  # another store is not affected
    clock.now = 1060.0
    limits.admit("A")
    assert not limits.try_take("A")


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
    # A waiter gets a slot released within the wait.
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
    limits = StoreLimits(max_in_flight=8, rate_per_minute=3, pause_seconds=300, clock=clock)
    for n in range(100):
        limits.admit(f"old{n}")
    limits.pause("old0")  # still paused after the window
    for _ in range(2):
        limits.admit("old1")  # its budget of 3 is spent...
    clock.now += 61  # ...long enough ago for every window to empty
    limits.admit("busy")  # the 101st store: the table sweeps before it grows
    assert len(limits) == 2, "only the paused store and the new one remain"
    with pytest.raises(RateLimited):
        limits.check_paused("old0")  # the pause survived the sweep
    for _ in range(3):
        limits.admit("old1")  # a swept store starts with a fresh budget
