"""REST request-weight budget: rolling window, venue counts, 429/418 with Retry-After."""

from __future__ import annotations

from wadm.transport.rest import WeightBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _spend(budget: WeightBudget, weight: int) -> None:
    assert budget.delay(weight) == 0
    budget._spent.append((budget.clock(), weight))


def test_rolling_window_with_headroom() -> None:
    clock = Clock()
    budget = WeightBudget(1000, headroom=0.8, clock=clock)
    _spend(budget, 250)
    clock.now += 10
    _spend(budget, 250)
    _spend(budget, 250)
    assert budget.used() == 750
    assert budget.delay(100) == 50.0  # the first 250 leaves the window at t+60
    clock.now += 50
    assert budget.delay(100) == 0 and budget.used() == 500


def test_venue_count_corrects_ours() -> None:
    clock = Clock()
    budget = WeightBudget(1000, clock=clock)
    _spend(budget, 10)
    budget.observe(200, {"x-mbx-used-weight-1m": "795"})
    assert budget.used() == 795 and budget.delay(10) > 0


def test_429_and_418_block_until_retry_after() -> None:
    clock = Clock()
    budget = WeightBudget(1000, clock=clock)
    budget.observe(429, {"retry-after": "30"})
    assert budget.delay(1) == 30 and budget.throttled == 1
    clock.now += 30
    assert budget.delay(1) == 0
    budget.observe(418, {})
    assert budget.delay(1) == 120 and budget.banned == 1


def test_403_means_ten_minutes_of_silence_at_least() -> None:
    clock = Clock()
    budget = WeightBudget(600, window=5.0, clock=clock)
    budget.observe(403, {"retry-after": "5"})  # "access too frequent": wait at least 10 minutes
    assert budget.delay(1) == 600 and budget.banned == 1
    clock.now += 600
    budget.observe(403, {"retry-after": "1800"})
    assert budget.delay(1) == 1800


def test_the_published_limit_replaces_the_default() -> None:
    clock = Clock()
    budget = WeightBudget(6000, headroom=0.5, clock=clock)
    budget.set_limit(1200)
    _spend(budget, 600)
    assert budget.delay(1) > 0 and budget.limit == 1200
