"""API keys and per-key rate limits for the REST API.

With ``WADM_API_KEYS`` set, ``/api/v1/*`` and ``/metrics`` answer only requests that carry one of
the keys, as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; anything else is a 401
JSON error. ``/health`` stays open (a container's health check has no key) but without a key it
says only the status. Keys are compared in constant time against every configured key, and
never logged or echoed. Each key has a token bucket: ``WADM_RATE_LIMIT`` requests per second
after a burst of ``WADM_RATE_BURST``; past it the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Sequence

import falcon.asgi

from wadm.errors import QueryError

__all__ = ["Auth", "authorized"]

_GUARDED = ("/api/", "/metrics")


def authorized(req: falcon.asgi.Request) -> bool:
    """Whether the request may see everything: it carried a valid key, or no key is configured
    (set by :class:`Auth` on every request)."""
    return bool(req.context.authorized)


class Auth:
    """Falcon middleware: checks the key of guarded paths and takes a token from its bucket.

    Args:
        keys: the accepted keys (none: every request is authorized).
        rate: tokens per second per key (0: no limit).
        burst: the bucket's size.
        clock: monotonic seconds.
    """

    def __init__(self, keys: Sequence[str], rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = [k.encode() for k in keys]
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key index -> (tokens, at)
        self.refused = 0  # 401 answers
        self.limited = 0  # 429 answers

    def _match(self, req: falcon.asgi.Request) -> int | None:
        """The index of the key the request carries, or None."""
        given: str | None = None
        header = req.get_header("Authorization")
        if header is not None and header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif (key := req.get_header("X-API-Key")) is not None:
            given = key.strip()
        if not given or len(given) > 1024:
            return None
        candidate: bytes = given.encode("utf-8", "replace")
        found = None
        for index, known in enumerate(self._keys):  # every key, whatever matched: the time says nothing
            if hmac.compare_digest(candidate, known):
                found = index
        return found

    def _take(self, index: int) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.get(index, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[index] = (tokens, now)
            self.limited += 1
            wait = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise QueryError(None, f"too many requests for this API key: at most {self.rate:g} a second after a "
                                   f"burst of {self.burst:g}; retry in {wait} s", status=429, code="rate_limited",
                             headers={"Retry-After": str(wait)})
        self._buckets[index] = (tokens - 1.0, now)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not self._keys:
            req.context.authorized = True
            return
        index = self._match(req)
        req.context.authorized = index is not None
        if not req.path.startswith(_GUARDED):
            return
        if index is None:
            self.refused += 1
            raise QueryError(None, "this endpoint needs an API key: send it as 'Authorization: Bearer <key>' or "
                                   "'X-API-Key: <key>'", status=401, code="unauthorized",
                             headers={"WWW-Authenticate": 'Bearer realm="wadm"'})
        self._take(index)
