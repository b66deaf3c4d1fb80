"""Heavy requests: admitted up to a bound, their work done off the event loop.

The API shares its process (and event loop) with the collectors, so a burst of large reads must
never stall the receive path. Store reads, decoding, polars work and JSON encoding of data
answers run in a small thread pool (polars and the codecs release the GIL while they work).
At most ``running`` heavy requests work at once and ``waiting`` more wait for a turn; past that
a request is refused at once with 429 and ``Retry-After``, which keeps memory and latency
bounded whatever the clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from wadm.errors import QueryError

__all__ = ["Work"]

P = ParamSpec("P")
T = TypeVar("T")
RETRY_AFTER = 1


class Work:
    """The gate and thread pool of heavy requests.

    Args:
        running: heavy requests working at once (also the number of threads).
        waiting: heavy requests waiting for a turn; more are refused with 429.
    """

    def __init__(self, *, running: int, waiting: int) -> None:
        self.running = running
        self.waiting = waiting
        self.refused = 0  # requests answered 429
        self.admitted = 0
        self._slots: asyncio.Semaphore | None = None  # made on first use, in the serving loop
        self._queued = 0
        self._pool = ThreadPoolExecutor(max_workers=running, thread_name_prefix="wadm-api")

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for a turn; refuse with 429 when too many requests wait already.

        Raises:
            QueryError: 429 ``busy`` with ``Retry-After``.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.running)
        if self._slots.locked() and self._queued >= self.waiting:
            self.refused += 1
            raise QueryError(None, f"the server is busy with {self.running + self.waiting} heavy requests; "
                                   f"retry in {RETRY_AFTER} s", status=429, code="busy",
                             headers={"Retry-After": str(RETRY_AFTER)})
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        self.admitted += 1
        try:
            yield
        finally:
            self._slots.release()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in the pool (call inside :meth:`turn`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Stop the threads once their work is done."""
        self._pool.shutdown(wait=False, cancel_futures=True)
