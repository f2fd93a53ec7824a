"""The adaptive store budget (service/neto/limits.py) against stores whose other add-ons
leave less than the configured 500 a minute, on a controlled clock: five minutes of
demand at three times what is left take a second, not five minutes. Printed by `make
bench`; the same model backs tests/unit/test_learned_budget.py."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from service.errors import RateLimited
from service.neto.limits import StoreLimits

BUDGET = 500
LEFT_OVER = (40, 100, 250, 450)  # what the merchant's other add-ons leave, calls a minute
MINUTES = 5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HiddenLimit:
    """Neto's view of one store: `limit` answered calls in any 60 s, 429 past it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.answered: deque[float] = deque()

    def call(self, now: float) -> int:
        while self.answered and self.answered[0] <= now - 60:
            self.answered.popleft()
        if len(self.answered) >= self.limit:
            return 429
        self.answered.append(now)
        return 200


def steady_demand(
    limits: StoreLimits, clock: Clock, neto: HiddenLimit, seconds: float, every: float
) -> list[int]:
    """A call every `every` seconds; what Neto answered to the calls the budget let out."""
    answers = []
    end = clock.now + seconds
    while clock.now < end:
        try:
            limits.admit("S")
        except RateLimited:
            pass
        else:
            status = neto.call(clock.now)
            answers.append(status)
            if status == 429:
                limits.pause("S")
        clock.now += every
    return answers


@dataclass(frozen=True)
class Adapted:
    left_over: int
    first_429_after: int  # calls answered before Neto's first 429
    further_429s: int  # in the MINUTES after it
    goodput: float  # calls served in those minutes, as a share of what Neto allowed


def run(left_over: int, pause_seconds: float = 60.0) -> Adapted:
    clock = Clock()
    limits = StoreLimits(
        max_in_flight=8, rate_per_minute=BUDGET, pause_seconds=pause_seconds, clock=clock
    )
    neto = HiddenLimit(left_over)
    every = 60.0 / (3 * left_over)
    before: list[int] = []
    while 429 not in before:
        before += steady_demand(limits, clock, neto, every, every)
    after = steady_demand(limits, clock, neto, MINUTES * 60.0, every)
    return Adapted(
        left_over=left_over,
        first_429_after=before.index(429),
        further_429s=after.count(429),
        goodput=after.count(200) / (MINUTES * left_over),
    )


def main() -> list[Adapted]:
    return [run(left_over) for left_over in LEFT_OVER]


if __name__ == "__main__":
    for case in main():
        print(case)
