"""The bounds on `/neto-notify/` (service/inbound/limits.py) with a controlled clock: the
rate per address prefix, refusals per (prefix, store), the accepted rate and in-flight
cap per store, refill, and the key sweep that keeps the buckets' memory bounded."""

from __future__ import annotations

import pytest

from service.errors import RateLimited
from service.inbound import limits as limits_module
from service.inbound.limits import Buckets, NotifyGate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock, **limits: int) -> NotifyGate:
    values = {
        "address_per_minute": 6000, "refusals_per_minute": 6000, "store_per_minute": 6000,
        "store_in_flight": 100, **limits,
    }  # fmt: skip
    return NotifyGate(**values, clock=clock)


def retry_after(refused: pytest.ExceptionInfo[RateLimited]) -> int:
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    return int(refused.value.headers["Retry-After"])


def test_over_the_address_rate_is_429_with_retry_after_saying_when_a_token_is_back():
    clock = Clock()
    g = gate(clock, address_per_minute=6)  # a burst of 6, then one every 10 s
    for n in range(6):
        g.arrive("203.0.113.7", f"S{n}")  # any store: the bound is the sender's
    with pytest.raises(RateLimited) as refused:
        g.arrive("203.0.113.7", "S0")
    assert retry_after(refused) == 10
    assert "address" in refused.value.detail and "refused" not in refused.value.detail
    g.arrive("203.0.113.8", "S0")  # another address has its own bucket

    clock.now += 7
    with pytest.raises(RateLimited) as still:
        g.arrive("203.0.113.7", "S0")
    assert retry_after(still) == 3, "Retry-After is when the token is back, not a constant"
    clock.now += 3  # exactly when it said
    g.arrive("203.0.113.7", "S0")
    with pytest.raises(RateLimited):
        g.arrive("203.0.113.7", "S0")  # one token came back, and it was spent


def test_retry_after_rounds_up_to_whole_seconds_and_is_at_least_one():
    clock = Clock()
    g = gate(clock, address_per_minute=40)  # one token every 1.5 s
    for _ in range(40):
        g.arrive("p", "S")
    with pytest.raises(RateLimited) as refused:
        g.arrive("p", "S")
    assert retry_after(refused) == 2  # 1.5 s, rounded up: retrying at 1 s would fail
    clock.now += 1.4
    with pytest.raises(RateLimited) as nearly:
        g.arrive("p", "S")
    assert retry_after(nearly) == 1  # 0.1 s, never "0"


def test_a_refused_arrival_takes_no_token():
    clock = Clock()
    g = gate(clock, address_per_minute=6)
    for _ in range(6):
        g.arrive("p", "S")
    for _ in range(20):  # hammering while refused does not push the wait further out
        with pytest.raises(RateLimited):
            g.arrive("p", "S")
    clock.now += 10
    g.arrive("p", "S")


def test_refusals_are_counted_per_prefix_and_store():
    clock = Clock()
    g = gate(clock, refusals_per_minute=3)
    for _ in range(3):
        g.arrive("198.51.100.1", "A")
        g.refused("198.51.100.1", "A")
    with pytest.raises(RateLimited) as refused:
        g.arrive("198.51.100.1", "A")
    assert retry_after(refused) == 20  # 3 a minute: one back every 20 s
    assert "refused" in refused.value.detail and "store" in refused.value.detail
    # The same sender for another store, and another sender for this store, still pass.
    g.arrive("198.51.100.1", "B")
    g.arrive("198.51.100.2", "A")
    with g.store("A"):  # and the store's own accepted notifications are not held back
        pass

    clock.now += 20
    g.arrive("198.51.100.1", "A")  # one refusal has been forgiven


def test_refusals_below_the_bound_are_not_a_refusal():
    clock = Clock()
    g = gate(clock, refusals_per_minute=3)
    for _ in range(2):
        g.refused("p", "A")
    g.arrive("p", "A")  # two of three: still let in
    g.refused("p", "A")
    with pytest.raises(RateLimited):
        g.arrive("p", "A")


def test_accepted_notifications_are_bounded_per_store():
    clock = Clock()
    g = gate(clock, store_per_minute=4)  # one back every 15 s
    for _ in range(4):
        with g.store("A"):
            pass
    with pytest.raises(RateLimited) as refused, g.store("A"):
        pytest.fail("the fifth was let in")
    assert retry_after(refused) == 15
    assert "store" in refused.value.detail
    with g.store("B"):  # another store's are written as they come
        pass
    clock.now += 15
    with g.store("A"):
        pass


def test_the_in_flight_cap_refuses_the_next_while_as_many_are_held_and_frees_on_exit():
    clock = Clock()
    g = gate(clock, store_in_flight=2)
    first, second = g.store("A"), g.store("A")
    first.__enter__()
    second.__enter__()
    with pytest.raises(RateLimited) as refused, g.store("A"):
        pytest.fail("a third was let in while two were being written")
    assert retry_after(refused) == 1
    assert "at once" in refused.value.detail
    with g.store("B"):  # the cap is per store
        pass

    second.__exit__(None, None, None)
    held = g.store("A")
    held.__enter__()  # one was freed: one more is let in
    with pytest.raises(RateLimited), g.store("A"):
        pytest.fail("over the cap again")
    held.__exit__(None, None, None)
    first.__exit__(None, None, None)
    with g.store("A"), g.store("A"):  # both freed
        pass


def test_the_in_flight_slot_is_freed_when_the_write_raises():
    g = gate(Clock(), store_in_flight=1)
    for _ in range(3):
        with pytest.raises(ValueError, match="the write failed"), g.store("A"):
            raise ValueError("the write failed")
    with g.store("A"):  # not held by the failed writes
        pass


def test_a_refusal_for_the_in_flight_cap_takes_no_token_from_the_store_rate():
    clock = Clock()
    g = gate(clock, store_per_minute=2, store_in_flight=1)
    with g.store("A"):
        for _ in range(5):
            with pytest.raises(RateLimited), g.store("A"):
                pytest.fail("over the in-flight cap")
    with g.store("A"):  # the second token is still there
        pass
    with pytest.raises(RateLimited), g.store("A"):
        pytest.fail("over the rate")


def test_tokens_refill_with_time_up_to_the_burst_and_no_further():
    clock = Clock()
    buckets = Buckets(60, clock)  # a token a second, a burst of 60
    for _ in range(60):
        assert buckets.wait("k") == 0
        buckets.take("k")
    assert buckets.wait("k") == pytest.approx(1.0)
    clock.now += 0.25
    assert buckets.wait("k") == pytest.approx(0.75)
    clock.now += 0.75
    assert buckets.wait("k") == 0
    buckets.take("k")

    clock.now += 3600  # an hour idle refills the burst, not an hour's worth
    for _ in range(60):
        assert buckets.wait("k") == 0
        buckets.take("k")
    assert buckets.wait("k") > 0
    assert buckets.wait("other") == 0  # keys do not share


def test_the_sweep_keeps_the_keys_bounded(monkeypatch):
    monkeypatch.setattr(limits_module, "MAX_KEYS", 5)
    clock = Clock()
    buckets = Buckets(60, clock)
    for n in range(1000):  # a sender cycling through addresses it does not come back from
        buckets.take(f"10.0.{n // 256}.{n % 256}")
        clock.now += 0.001
        assert len(buckets._tokens) <= 5
    g = NotifyGate(address_per_minute=60, refusals_per_minute=60, store_per_minute=60,
                   store_in_flight=8, clock=clock)  # fmt: skip
    for n in range(1000):
        g.arrive(f"2001:db8:{n:x}::/64", f"S{n}")
        g.refused(f"2001:db8:{n:x}::/64", f"S{n}")
    for inner in (g._addresses, g._refusals, g._stores):
        assert len(inner._tokens) <= 5


def test_the_sweep_forgets_full_buckets_before_a_drained_one(monkeypatch):
    monkeypatch.setattr(limits_module, "MAX_KEYS", 3)
    clock = Clock()
    buckets = Buckets(2, clock)  # a burst of 2, one back every 30 s
    buckets.take("quiet-1")
    buckets.take("quiet-2")
    buckets.take("drained")
    buckets.take("drained")  # level 0, and newer than the quiet ones
    clock.now += 30  # the quiet ones are full again; "drained" has 1 of 2
    buckets.take("drained")  # 0 again
    assert buckets.wait("drained") == pytest.approx(30)

    buckets.take("new")  # over the bound: the full buckets go, the drained one stays
    assert set(buckets._tokens) == {"drained", "new"}
    assert buckets.wait("drained") == pytest.approx(30), "the sweep reset a drained bucket"


def test_a_sweep_of_drained_buckets_makes_room_for_a_tenth_more_keys(monkeypatch):
    """A sweep reads every key: it must free many slots, or a sender cycling through new
    keys while every bucket is drained makes each new key pay for a full sweep."""
    monkeypatch.setattr(limits_module, "MAX_KEYS", 100)
    clock = Clock()
    buckets = Buckets(1, clock)  # one token: a single take drains a bucket
    for n in range(100):
        buckets.take(f"k{n}")
    assert len(buckets._tokens) == 100
    sweeps = 0
    real = buckets._sweep

    def counted(now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        real(now)

    monkeypatch.setattr(buckets, "_sweep", counted)
    for n in range(100, 110):  # ten new keys, every bucket still drained
        buckets.take(f"k{n}")
    assert sweeps == 1, sweeps
    assert len(buckets._tokens) == 99  # swept to 89, then the ten new keys
    assert "k0" not in buckets._tokens and "k109" in buckets._tokens  # the oldest went
