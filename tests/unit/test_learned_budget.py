"""The budget a store learns from Neto's 429 (neto/limits.py), on a controlled clock
against a simulated Neto whose store allows fewer calls than the configured budget (the
merchant's other add-ons use the rest)."""

from __future__ import annotations

import pytest

from bench.adaptive import LEFT_OVER, MINUTES, Clock, HiddenLimit, run, steady_demand
from service.neto import limits as limits_module
from service.neto.limits import StoreLimits, probed, recovery_seconds


@pytest.mark.parametrize("left_over", LEFT_OVER)
def test_after_one_429_the_store_runs_just_under_what_neto_leaves(left_over):
    """Budget 500, Neto leaves 40 (100, 250, 450) a minute: after the first 429, five
    minutes of demand at three times that bring at most one more 429, and at least 70 % of
    what Neto allowed in them is served (its minute-long pause included)."""
    case = run(left_over)
    assert case.first_429_after == left_over, "the configured budget meets the limit"
    assert case.further_429s <= 1
    assert case.goodput >= 0.7, case


def test_without_learning_the_same_demand_meets_429_after_every_pause():
    """The bar above is the learning's doing: at the configured budget each pause ends
    in the next 429 (what the broker did before)."""
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=500, pause_seconds=60, clock=clock)
    limits.pause = lambda store_id: limits._pause(store_id, 60) or 60.0  # type: ignore[method-assign]
    neto = HiddenLimit(40)
    steady_demand(limits, clock, neto, 30, every=0.5)
    after = steady_demand(limits, clock, neto, MINUTES * 60, every=0.5)
    assert after.count(429) >= 3


def test_the_learned_budget_probes_back_up_and_is_then_forgotten():
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=500, pause_seconds=60, clock=clock)
    sent = sum(limits.try_take("S") for _ in range(100))
    assert sent == 50  # the burst
    limits.pause("S")
    assert limits.learned("S") == pytest.approx(47.5)  # 50 sent, less 5 %
    clock.now += 60 + 600  # the pause, then ten quiet minutes
    assert limits.learned("S") == pytest.approx(47.5 * 1.03**10)
    assert probed(47.5, 600, 500) == pytest.approx(47.5 * 1.03**10)
    clock.now += recovery_seconds(47.5, 500) - 600 + 1
    assert limits.learned("S") is None
    limits.admit("S")  # and the configured budget's share is used again
    assert limits._stores["S"].learned is None


def test_a_further_429_learns_from_the_lower_and_calls_in_flight_learn_once():
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=500, pause_seconds=60, clock=clock)
    for _ in range(40):
        limits.admit("S")
    limits.pause("S")
    first = limits.learned("S")
    assert first == pytest.approx(38)
    # Two more calls that were in flight answer 429 too: still the same pause and budget.
    limits.pause("S")
    limits.pause("S")
    assert limits.learned("S") == pytest.approx(first)
    clock.now += 61
    for _ in range(3):  # the learned bucket's burst
        limits.admit("S")
    limits.pause("S")
    floor = 500 * limits_module.FLOOR_FRACTION
    assert limits.learned("S") == pytest.approx(max(floor, 3 * (1 - limits_module.MARGIN)))


def test_the_learned_budget_is_divided_among_replicas():
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=500, pause_seconds=0, clock=clock)
    limits.set_replicas(2)
    limits.pause_from_elsewhere("S", 0.0, 100.0)
    state = limits._stores["S"]
    share = limits._share(state, clock.now)
    assert share.capacity + 60 * share.rate == pytest.approx(50)  # half of 100
    # Never above the configured budget, whatever another replica says.
    limits.pause_from_elsewhere("T", 0.0, 10_000.0)
    assert limits.learned("T") is None


def test_states_count_paused_and_learned_stores():
    clock = Clock()
    limits = StoreLimits(max_in_flight=8, rate_per_minute=500, pause_seconds=60, clock=clock)
    limits.admit("A")
    limits.pause("A")
    limits.pause_from_elsewhere("B", -30.0, 100.0)  # paused elsewhere, ended 30 s ago
    limits.admit("C")
    assert limits.states() == {"paused": 1, "learned": 1}
