"""The REST client: depth snapshots, backfill and metadata, paced within each venue's weight budget.

Binance counts request *weight* per IP per minute and answers 429 when it is exceeded, then 418
(an IP ban of 2 minutes to 3 days) to clients that ignore 429; both carry ``Retry-After``; a 403 is a
WAF block (Binance) or "access too frequent" (Bybit), answered with 10 minutes of silence. A
:class:`WeightBudget` is shared by every request to one venue host: requests wait for room in a
rolling one-minute window, the venue's own ``X-MBX-USED-WEIGHT-1M`` header corrects our count,
and after a 429 or 418 nothing is sent until ``Retry-After`` has passed. Bybit limits requests
per 5 s instead; the same budget with a request weight of 1 and a 5 s window covers it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
import orjson

from wadm.errors import WadmError
from wadm.venues.base import RestLimit, RestRequest

T = TypeVar("T")

__all__ = ["RestClient", "RestError", "WeightBudget"]

log = logging.getLogger(__name__)


class RestError(WadmError):
    """A REST request failed: network error, timeout, or a non-2xx status.

    Attributes:
        status: the HTTP status, or None for network errors.
        retry_after: seconds the venue asked us to wait, when it said so.
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class WeightBudget:
    """Request weight allowed per rolling window, shared by all requests to one venue host.

    Args:
        limit: weight allowed per window (read from the venue's rate-limit metadata when known).
        window: the window, seconds.
        headroom: fraction of ``limit`` we allow ourselves (other clients may share the IP).
        clock: monotonic seconds.
    """

    def __init__(
        self, limit: int, *, window: float = 60.0, headroom: float = 0.8, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.headroom = headroom
        self.allowed = max(1, int(limit * headroom))
        self.clock = clock
        self._spent: deque[tuple[float, int]] = deque()
        self.blocked_until = 0.0
        self.venue_used: int | None = None  # the venue's own count, from response headers
        self.throttled = 0  # 429 answers
        self.banned = 0  # 418 answers
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, limit: RestLimit, *, clock: Callable[[], float] = time.monotonic) -> WeightBudget:
        """The budget a venue module declares for one host."""
        return cls(limit.limit, window=limit.window, clock=clock)

    def set_limit(self, limit: int) -> None:
        """Use the limit the venue published (its rate-limit metadata) instead of our default."""
        self.limit = limit
        self.allowed = max(1, int(limit * self.headroom))

    def used(self) -> int:
        """Weight spent in the current window by us (or the venue's count, if higher)."""
        now = self.clock()
        while self._spent and now - self._spent[0][0] >= self.window:
            self._spent.popleft()
        ours = sum(w for _, w in self._spent)
        return max(ours, self.venue_used or 0) if self._spent else ours

    def delay(self, weight: int) -> float:
        """Seconds to wait before ``weight`` may be spent (0 when it may be now)."""
        now = self.clock()
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.used() + weight <= self.allowed or not self._spent:
            return 0.0
        # Wait until enough of the oldest spending leaves the window.
        need = self.used() + weight - self.allowed
        freed = 0
        for ts, w in self._spent:
            freed += w
            if freed >= need:
                return max(0.0, ts + self.window - now)
        return self.window

    async def acquire(self, weight: int) -> None:
        """Wait until ``weight`` fits, then spend it."""
        async with self._lock:
            while (wait := self.delay(weight)) > 0:  # noqa: ASYNC110 (the wait is computed, not polled)
                await asyncio.sleep(wait)
            self._spent.append((self.clock(), weight))

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from a response: the venue's used weight, 429 and 418 with ``Retry-After``."""
        used = headers.get("x-mbx-used-weight-1m")
        if used is not None and used.isdigit():
            self.venue_used = int(used)
        if status in (429, 418, 403):
            # 429: over the limit; 418: banned for ignoring 429s; 403: a WAF block (Binance) or
            # "access too frequent", which asks for at least 10 minutes of silence (Bybit).
            default = {429: 60.0, 418: 120.0, 403: 600.0}[status]
            retry = max(_retry_after(headers) or 0.0, default if status == 403 else 0.0) or default
            self.blocked_until = max(self.blocked_until, self.clock() + retry)
            if status == 429:
                self.throttled += 1
            else:
                self.banned += 1


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


class RestClient:
    """JSON GETs against one venue base URL, paced by a :class:`WeightBudget`.

    Args:
        base_url: e.g. ``https://api.binance.com``.
        budget: the venue host's shared budget.
        timeout: seconds per request.
        transport: an httpx transport (tests may route to the emulator; default: the network).
    """

    def __init__(
        self,
        base_url: str,
        budget: WeightBudget,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "wadm"},
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )
        self.requests = 0
        self.failures = 0

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def fetch(self, request: RestRequest[T]) -> T:
        """Send one venue request and decode its answer.

        Raises:
            RestError: see :meth:`get_raw`.
            VenueProtocolError: the answer could not be decoded (kind ``invalid_rest_answer``...).
        """
        payload = await self.get_raw(request.path, request.params, weight=request.weight)
        return request.decode(payload)

    async def get(self, path: str, params: Mapping[str, str | int], *, weight: int = 1) -> Any:
        """GET ``path`` and return the decoded JSON (see :meth:`get_raw`)."""
        payload = await self.get_raw(path, params, weight=weight)
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self.failures += 1
            raise RestError(f"GET {self.base_url}{path} returned invalid JSON: {exc}") from exc

    async def get_raw(self, path: str, params: Mapping[str, str | int], *, weight: int = 1) -> bytes:
        """GET ``path`` and return the body, after waiting for ``weight`` in the budget.

        Raises:
            RestError: network failure, timeout, or a non-2xx status (with ``retry_after`` for
                429/418; the budget then blocks further requests meanwhile).
        """
        await self.budget.acquire(weight)
        self.requests += 1
        try:
            resp = await self._client.get(path, params=dict(params))
        except httpx.HTTPError as exc:
            self.failures += 1
            raise RestError(f"GET {self.base_url}{path} failed: {type(exc).__name__}: {exc}") from exc
        self.budget.observe(resp.status_code, resp.headers)
        if resp.status_code >= 300:
            self.failures += 1
            retry = _retry_after(resp.headers)
            if resp.status_code in (429, 418, 403):
                log.warning("%s answered %d; pausing its requests for %.0f s", self.base_url, resp.status_code,
                            self.budget.blocked_until - self.budget.clock(), extra={"status": resp.status_code})
            raise RestError(
                f"GET {self.base_url}{path} answered {resp.status_code}: {resp.text[:200]}",
                status=resp.status_code,
                retry_after=retry,
            )
        return resp.content
