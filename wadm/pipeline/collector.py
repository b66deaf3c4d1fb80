"""One collector per connection plan: its link, its streams, and their REST work.

Theory of operation
-------------------
A :class:`Collector` owns one :class:`~wadm.venues.base.ConnectionPlan`: the
:class:`~wadm.transport.ws.WsLink` that keeps it connected, the streams its protocol feeds, and
everything the venue's REST API must do for them. The venue protocols only *notice* what is
wrong, synchronously, on the receive path, and return it as typed actions
(:data:`~wadm.venues.base.Action`); the link hands them to :meth:`Collector.execute` in the same
callback, which starts the work at once (nothing polls):

* :class:`~wadm.venues.base.FetchSnapshot` (Binance): the stream's REST snapshot request, paced
  by the host's weight budget, retried with backoff, honouring 429, 418 and ``Retry-After``,
  until a snapshot bridges the buffered diffs. An answer that arrives after the book was
  discarded again (a reconnect) is void. One job per book and kind at a time.
* :class:`~wadm.venues.base.Resubscribe` (Bybit): send the frames on the live connection; if no
  snapshot has made the book live ``RESUBSCRIBE_AFTER`` seconds later, ask again.
* :class:`~wadm.venues.base.RecoverTrades`: the stream's venue recovery (a sans-IO
  :class:`~wadm.venues.base.Backfill`: Binance ``aggTrades`` by id, Bybit ``recent-trade``), its
  pages written as they come; what it cannot recover is recorded as gaps.
* :class:`~wadm.venues.base.FetchKlines`: closed bars missed across a disconnect, by open time.
* :class:`~wadm.venues.base.RecordGap`: a window nothing can recover goes to the ``gaps`` table.

Every backfill has a deadline (``WADM_BACKFILL_DEADLINE``): a venue that bans us for hours does
not hold a job forever; what is still missing then (or at shutdown) is recorded. The collector
also cuts its streams' buffers into batches for the writer, samples its books on the snapshot
grid, and follows the venue's listing of its symbols. It never waits on the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from wadm.book.sync import BookState
from wadm.errors import VenueProtocolError
from wadm.pipeline.writer import Writer
from wadm.records import BatchKey
from wadm.transport.rest import RestClient, RestError
from wadm.transport.ws import Backoff, WsLink
from wadm.venues.base import (
    Backfill,
    ConnectionPlan,
    Event,
    FetchKlines,
    FetchSnapshot,
    Gap,
    RecordGap,
    RecoverTrades,
    RestRequest,
    Resubscribe,
    Stream,
    TradeStream,
    VenueErrorReply,
)
from wadm.venues.streams import BookStream, KlineBackfill, KlineStream

__all__ = ["Collector", "CollectorSettings", "PendingWindow"]

log = logging.getLogger(__name__)

RESUBSCRIBE_AFTER = 5.0  # seconds a resubscribed Bybit book may take to receive its snapshot
MAX_ATTEMPTS = 8  # REST attempts per request before a backfill gives up
LOG_EVERY = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorSettings:
    """What a collector needs to know beyond its plan."""

    stale_after: float
    rotate_after: float
    reconnect_min_delay: float
    reconnect_max_delay: float
    flush_rows: int
    flush_interval: float
    backfill_deadline: float


@dataclass(frozen=True, slots=True)
class PendingWindow:
    """A window of trades whose backfill is running: readers must not take it as complete yet."""

    stream: str
    symbol: str
    start: int  # ns
    end: int
    missing: int | None


class Collector:
    """Runs one connection plan and executes what its streams ask for. See the module docstring.

    Args:
        plan: the connection and its protocol.
        settings: watchdog, rotation, reconnect, flush and backfill knobs.
        writer: where batches and gaps go.
        rest: the REST client of the plan's venue host (shared with other collectors of that host).
        use_aiofastnet: picows transport choice (None: the loop's own, see WsLink).
    """

    def __init__(
        self,
        plan: ConnectionPlan,
        settings: CollectorSettings,
        writer: Writer,
        rest: RestClient,
        *,
        use_aiofastnet: bool | None = None,
    ) -> None:
        self.plan = plan
        self.name = str(plan)
        self.settings = settings
        self.writer = writer
        self.rest = rest
        self.streams: dict[str, Stream] = dict(plan.protocol.streams)
        self.link = WsLink(
            plan,
            on_events=self.execute,
            on_connected=self._on_connected,
            stale_after=settings.stale_after,
            rotate_after=settings.rotate_after,
            backoff=Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay),
            use_aiofastnet=use_aiofastnet,
        )
        self.keys = {name: BatchKey(st.table, st.venue, st.market, st.spec.symbol) for name, st in self.streams.items()}
        self.failures: Counter[str] = Counter()  # REST attempts that failed, by stream
        self.pending: list[PendingWindow] = []  # trade windows being backfilled
        self._busy: set[tuple[str, str]] = set()  # (stream, job) running now: one snapshot job per book
        self._job_ids = itertools.count()  # every backfill window is a job of its own
        self._jobs: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._unlisted: set[str] = set()
        self._last_cut: dict[str, float] = {}
        self._interval = {name: max(settings.flush_interval, st.min_flush_interval)
                          for name, st in self.streams.items()}
        self._last_log: dict[str, float] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"Collector({self.name})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the connection up until :meth:`stop` (raises on a bug, for the supervisor)."""
        await self.link.run()

    def stop(self) -> None:
        """Ask the link to close; running REST jobs go on until :meth:`close`."""
        self.link.stop()

    def give_up(self, exc: BaseException) -> None:
        """The supervisor will not restart this collector: report it as failed."""
        self.link.fail(f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Stop every REST job; each records what it could not recover. Later actions are recorded, not run."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._jobs):
            task.cancel()
        for task in list(self._jobs):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- actions -----------------------------------------------------------------------------

    def execute(self, events: Sequence[Event]) -> None:
        """Carry out what the streams asked for. Called in the receive path: it never blocks."""
        for event in events:
            if isinstance(event, RecordGap):
                self._record(event.stream, [event.gap])
            elif isinstance(event, RecoverTrades):
                self._recover_trades(event)
            elif isinstance(event, FetchSnapshot):
                self._fetch_snapshot(event)
            elif isinstance(event, Resubscribe):
                self._resubscribe(event)
            elif isinstance(event, FetchKlines):
                self._fetch_klines(event)
            elif isinstance(event, VenueErrorReply) and event.stream is not None:
                self._refused(event.stream, event.message)

    def _record(self, stream: str, gaps: list[Gap]) -> None:
        self.writer.record_gaps(self.keys[stream], stream, gaps)

    def _refused(self, stream: str, message: str) -> None:
        # The others on the connection keep running, and the watchdog must not reconnect
        # everything for a stream that will never flow.
        self.link.excuse(stream, message)
        log.error("%s: the venue refused stream %s: %s", self.name, stream, message[:200],
                  extra={"link": self.name, "stream": stream})

    def _spawn(self, stream: str, job: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` unless the same job of the same stream is running already."""
        key = (stream, job)
        if key in self._busy:
            work.close()
            return
        self._busy.add(key)
        task = asyncio.get_running_loop().create_task(work, name=f"wadm:{stream}:{job}")
        self._jobs.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._jobs.discard(t)
            self._busy.discard(key)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s: %s job failed: %r", stream, job, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)

    # -- books -------------------------------------------------------------------------------

    def _fetch_snapshot(self, action: FetchSnapshot) -> None:
        book = self.streams[action.stream]
        if self._closed or not isinstance(book, BookStream) or book.snapshot_request is None:
            return
        if action.refresh:
            log.info("%s/%s: the price is near the edge of the trusted book; re-seeding it beside the live one",
                     book.market, book.spec.symbol, extra={"stream": book.spec.name})
        kind = "refresh" if action.refresh else "snapshot"
        self._spawn(action.stream, kind, self._snapshot(book, book.snapshot_request, action.refresh))

    async def _snapshot(self, book: BookStream, request: RestRequest[Any], refresh: bool) -> None:
        """Fetch REST snapshots for one Binance book until one bridges its buffered diffs.

        With ``refresh``, the snapshot seeds the book's shadow while the live book keeps serving.
        """
        backoff = Backoff(0.25, 10.0)
        while (sync := book.awaiting_snapshot(refresh)) is not None:
            epoch = sync.epoch
            try:
                snap = await self._get(book, request)
            except (RestError, VenueProtocolError):
                await asyncio.sleep(backoff.next())  # keep trying: a book without a snapshot is useless
                continue
            if book.awaiting_snapshot(refresh) is not sync or sync.epoch != epoch:
                continue  # the book was discarded meanwhile (reconnect): this answer is void
            if refresh:
                used = book.on_refresh_snapshot(snap.update_id, snap.bids, snap.asks, book.snapshot_limit)
            else:
                self.execute(book.on_snapshot(snap.update_id, snap.bids, snap.asks, book.snapshot_limit,
                                              time.time_ns()))
                used = book.state is BookState.LIVE
            if used:
                log.info("%s/%s: book %s from a snapshot at update %d", book.market, book.spec.symbol,
                         "re-seeded" if refresh else "live", snap.update_id, extra={"stream": book.spec.name})
                return
            if book.awaiting_snapshot(refresh) is not None:
                # Older than the buffered diffs (a lagging cache) or the buffer showed a gap: wait
                # a little for the venue to catch up, then ask again; the buffer is kept.
                await asyncio.sleep(backoff.next())

    def _resubscribe(self, action: Resubscribe) -> None:
        book = self.streams[action.stream]
        if self._closed or not isinstance(book, BookStream):
            return
        if self.link.send(action.frames):
            log.warning("%s/%s: the book broke (%s); subscribing again for a fresh snapshot", book.market,
                        book.spec.symbol, action.reason, extra={"stream": book.spec.name})
        self._arm_resubscribe(book)

    def _arm_resubscribe(self, book: BookStream) -> None:
        """Check ``RESUBSCRIBE_AFTER`` seconds from now that the book got its snapshot."""
        name = book.spec.name
        if (old := self._timers.pop(name, None)) is not None:
            old.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(RESUBSCRIBE_AFTER, self._check_book, book)

    def _check_book(self, book: BookStream) -> None:
        self._timers.pop(book.spec.name, None)
        if (self._closed or book.state is BookState.LIVE or not self.link.state.connected
                or self.link.excused(book.spec.name)):
            return
        log.warning("%s/%s: no book snapshot after %.0f s; subscribing again", book.market, book.spec.symbol,
                    RESUBSCRIBE_AFTER, extra={"stream": book.spec.name})
        self._resubscribe(book.resubscribe("no_snapshot"))

    def _on_connected(self) -> None:
        """A new connection subscribed everything: books that need in-band snapshots are watched."""
        for st in self.streams.values():
            if isinstance(st, BookStream) and st.resubscribe_frames and st.state is not BookState.LIVE:
                self._arm_resubscribe(st)

    @property
    def has_books(self) -> bool:
        """True when the plan carries order books."""
        return any(isinstance(st, BookStream) for st in self.streams.values())

    def sample_books(self, tick: int) -> None:
        """Queue a snapshot of every live book of this plan, taken at ``tick`` (ns)."""
        for st in self.streams.values():
            if isinstance(st, BookStream):
                st.sample(tick)

    # -- trades and klines -------------------------------------------------------------------

    def _recover_trades(self, action: RecoverTrades) -> None:
        st = self.streams[action.stream]
        assert isinstance(st, TradeStream)
        job = None if self._closed or st.recover is None else st.recover(st, action.gap)
        if job is None:
            self._record(action.stream, [action.gap])
            return
        window = PendingWindow(st.spec.name, st.spec.symbol, action.gap.start, action.gap.end, action.gap.missing)
        self.pending.append(window)  # served as a gap meanwhile: the window is not complete yet
        self._spawn(action.stream, f"trades:{next(self._job_ids)}", self._backfill(st, job, window))

    def _fetch_klines(self, action: FetchKlines) -> None:
        st = self.streams[action.stream]
        assert isinstance(st, KlineStream)
        job = KlineBackfill(st, action.first, action.last)
        if self._closed:
            self._record(action.stream, job.missing())
            return
        self._spawn(action.stream, f"klines:{next(self._job_ids)}", self._backfill(st, job, None))

    async def _backfill(self, st: Stream, job: Backfill, window: PendingWindow | None) -> None:
        """Run a backfill; record what it could not recover, also on a timeout, an error or shutdown."""
        recovered = 0
        try:
            async with asyncio.timeout(self.settings.backfill_deadline):
                while (request := job.next_request()) is not None:
                    value = await self._get(st, request)
                    frame = job.on_answer(value, time.time_ns())
                    if frame is not None and frame.height:
                        self.writer.put(self.keys[st.spec.name], frame, st.spec.name)
                        recovered += frame.height
        except (TimeoutError, RestError, VenueProtocolError) as exc:
            log.warning("%s: backfill gave up (%s); what is still missing is recorded as a gap", st.spec.name,
                        exc or "deadline", extra={"stream": st.spec.name})
        finally:
            if window is not None:
                self.pending.remove(window)
            if missing := job.missing():
                self._record(st.spec.name, missing)  # also when cancelled at shutdown: never forgotten
        if recovered:
            log.info("%s: recovered %d rows over REST", st.spec.name, recovered, extra={"stream": st.spec.name})

    async def _get(self, st: Stream, request: RestRequest[Any]) -> Any:
        """One REST answer, retried with backoff (and the venue's ``Retry-After``) up to MAX_ATTEMPTS."""
        backoff = Backoff(0.5, 30.0)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self.rest.fetch(request)
            except (RestError, VenueProtocolError) as exc:
                self.failures[st.spec.name] += 1
                retry_after = exc.retry_after if isinstance(exc, RestError) else None
                delay = max(backoff.next(), retry_after or 0.0)
                self._log_limited(f"{st.spec.name}:{request.path}", "%s: %s failed (%s); attempt %d of %d, next in "
                                  "%.1f s", st.spec.name, request.path, exc, attempt, MAX_ATTEMPTS, delay)
                if attempt == MAX_ATTEMPTS:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _log_limited(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[kind] = now
            log.warning(msg, *args, extra={"kind": kind})

    # -- buffers to batches ------------------------------------------------------------------

    def cut(self, now: float, *, force: bool = False) -> int:
        """Hand every buffer that is due (or all, with ``force``) to the writer; return rows handed.

        A buffer is due when it holds ``flush_rows`` rows or waited its flush interval.
        """
        queued = 0
        flush_rows = self.settings.flush_rows
        for name, st in self.streams.items():
            n = st.pending
            last = self._last_cut.setdefault(name, now)
            if not n:
                self._last_cut[name] = now
                continue
            if not (force or n >= flush_rows or now - last >= self._interval[name]):
                continue
            self._last_cut[name] = now
            rejected = st.rejected if isinstance(st, TradeStream) else 0
            taken = st.take()
            if taken.actions:
                self.execute(taken.actions)
            if isinstance(st, TradeStream) and st.rejected > rejected:
                self._log_limited(f"{name}:zero_price", "%s: dropped %d trades with a zero price or quantity (%d in "
                                  "all)", name, st.rejected - rejected, st.rejected)
            if taken.frame is not None and taken.frame.height:
                self.writer.put(self.keys[name], taken.frame, name)
                queued += taken.frame.height
        return queued

    # -- listings ----------------------------------------------------------------------------

    def set_listing(self, statuses: dict[str, str], trading: str) -> None:
        """Follow the venue's listing: a symbol it does not list or trade is excused and reported.

        The listing says why better than a refused subscription does, so its message replaces
        the refusal's. A symbol that trades again is watched again (it flows, or its connection
        is replaced).
        """
        for name, st in self.streams.items():
            state = statuses.get(st.spec.symbol)
            if state is not None and state != trading:
                self.link.excuse(name, f"{st.spec.symbol} is {state} on {st.venue}/{st.market}")
                self._unlisted.add(name)
            elif state == trading and name in self._unlisted:
                self._unlisted.discard(name)
                self.link.pardon(name)

    # -- what readers may see ----------------------------------------------------------------

    def pending_windows(self, symbol: str, start: int, end: int) -> list[PendingWindow]:
        """Trade windows of ``symbol`` overlapping ``[start, end]`` (ns) whose backfill is running."""
        return [w for w in self.pending if w.symbol == symbol and w.end >= start and w.start <= end]
