"""Supervision: named tasks restarted with backoff when they fail unexpectedly.

A dead writer behind a live receive path is how peers lost data, so the writer, the cutter and
the retention sweeper are always restarted. A collector is restarted when
``COLLECTORS_RESTART_ON_ERROR`` says so; otherwise it stays down and is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from wadm.transport.ws import Backoff

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


class Supervisor:
    """Runs named tasks; counts and logs their failures; restarts them with backoff or gives up.

    Args:
        backoff: makes the delay policy of each task (injected in tests).
    """

    def __init__(self, backoff: Callable[[], Backoff] = lambda: Backoff(1.0, 60.0)) -> None:
        self.restarts: Counter[str] = Counter()  # failures per task name
        self._backoff = backoff
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(
        self,
        name: str,
        fn: Callable[[], Awaitable[None]],
        *,
        restart: bool,
        on_give_up: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Task[None]:
        """Run ``fn()`` as a task; when it raises, run it again after a delay (``restart``) or give up."""
        task = asyncio.get_running_loop().create_task(self._run(name, fn, restart, on_give_up), name=f"wadm:{name}")
        self._tasks.append(task)
        return task

    async def _run(self, name: str, fn: Callable[[], Awaitable[None]], restart: bool,
                   on_give_up: Callable[[BaseException], None] | None) -> None:
        backoff = self._backoff()
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] += 1
                if not restart:
                    log.error("%s failed and stays down (restart disabled): %r", name, exc, exc_info=exc)
                    if on_give_up is not None:
                        on_give_up(exc)
                    return
                delay = backoff.next()
                log.error("%s failed unexpectedly: %r; restarting in %.1f s", name, exc, delay, exc_info=exc)
                await asyncio.sleep(delay)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until they are gone."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
