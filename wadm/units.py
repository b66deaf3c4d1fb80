"""Time units. Every timestamp inside WADM is int nanoseconds UTC; venues and the API speak ms."""

from __future__ import annotations

__all__ = ["MS_PER_MIN", "NS_PER_MIN", "NS_PER_MS", "NS_PER_S", "NS_PER_US"]

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S
MS_PER_MIN = 60_000
