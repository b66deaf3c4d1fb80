"""Reconnect backoff: capped exponential with full jitter."""

from __future__ import annotations

import random

from wadm.transport.ws import Backoff


def test_backoff_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 4  # it grew to the cap...
    assert len({round(d, 6) for d in delays[6:]}) == 6  # ...with jitter, not a fixed value
    backoff.reset()
    assert backoff.next() <= 0.5
