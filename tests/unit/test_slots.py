"""A store's in-flight slots (service/neto/slots.py): at most `size` holders, waiters
served first come first served, and a slot never lost or doubled by a wait that ends
(timed out, cancelled, or handed a slot just as it was cancelled)."""

from __future__ import annotations

import asyncio

import pytest

from service.neto.slots import Slots


async def _waiting(slots: Slots, name: str, order: list[str], max_wait: float = 5.0) -> None:
    await slots.take(max_wait)
    order.append(name)


async def test_takes_up_to_size_at_once_then_waiters_are_served_in_arrival_order():
    slots = Slots(2)
    await slots.take(0)
    await slots.take(0)
    assert (slots.free, slots.held) == (0, 2)
    order: list[str] = []
    tasks = [asyncio.create_task(_waiting(slots, name, order)) for name in ("a", "b", "c")]
    await asyncio.sleep(0)
    assert order == []  # all three wait
    slots.release()
    await asyncio.sleep(0)
    assert order == ["a"]
    slots.release()
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]
    assert (slots.free, slots.held) == (0, 2)  # handed over, never counted free between


async def test_a_newcomer_cannot_overtake_a_waiter_the_slot_was_handed_to():
    slots = Slots(1)
    await slots.take(0)
    order: list[str] = []
    first = asyncio.create_task(_waiting(slots, "waiter", order))
    await asyncio.sleep(0)
    slots.release()  # handed to the waiter, which has not run yet
    assert slots.free == 0
    newcomer = asyncio.create_task(_waiting(slots, "newcomer", order, max_wait=0.05))
    with pytest.raises(TimeoutError):
        await newcomer
    await first
    assert order == ["waiter"]


async def test_a_wait_that_times_out_leaves_nothing_behind():
    slots = Slots(1)
    await slots.take(0)
    with pytest.raises(TimeoutError):
        await slots.take(0.02)
    assert not slots.idle() and slots.held == 1
    slots.release()
    assert slots.idle() and slots.free == 1  # the timed-out waiter took nothing


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on():
    slots = Slots(1)
    await slots.take(0)
    order: list[str] = []
    first = asyncio.create_task(_waiting(slots, "first", order))
    second = asyncio.create_task(_waiting(slots, "second", order))
    await asyncio.sleep(0)
    slots.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert order == ["second"] and slots.held == 1
    slots.release()
    assert slots.idle()


async def test_a_cancelled_waiter_is_skipped_by_the_next_release():
    slots = Slots(1)
    await slots.take(0)
    gone = asyncio.create_task(slots.take(5))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.release()
    assert slots.idle()  # back in the pool, not handed to the cancelled wait
