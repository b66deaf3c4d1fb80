"""Recovery: the REST side of collection. Book snapshots, trade and kline backfill, resubscriptions.

Theory of operation
-------------------
The venue protocols only *notice* what is wrong, synchronously, on the receive path: a Binance
book asks for a snapshot (``sync.snapshot_requested``), a trade stream records a :class:`Gap`,
a kline stream lists bars it never saw closed. :class:`Recovery` polls those flags a few times a
second and runs one task per stream and problem, never more:

* **Book snapshots** (Binance): ``GET depth`` for the one broken symbol, paced by the venue's
  weight budget (shared by every request to that host), retried with backoff, honouring 429,
  418 and ``Retry-After``. Diffs keep being buffered meanwhile; a snapshot that is older than
  the buffer, or that arrives after the book was discarded again, is not used.
* **Bybit books** need no REST: a broken book resubscribes its topic at once (the protocol
  asks the link to); if no snapshot follows within ``RESUBSCRIBE_AFTER`` seconds, we ask again.
* **Trade gaps**: Binance ``aggTrades`` from the first missing id, in order, up to the last
  missing one (ids are contiguous, so the backfill is exact); Bybit ``recent-trade`` (no cursor)
  covers a disconnect window only when its oldest trade is older than the window. Recovered
  trades are de-duplicated against the stream and written as their own batch; what could not
  be recovered goes to the ``gaps`` table.
* **Klines**: closed bars missed across a disconnect are fetched by open time.

Every backfill has a deadline (``WADM_BACKFILL_DEADLINE``): a venue that bans us for hours does not
hold a task forever; what is still missing then is recorded as a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

from wadm.book.sync import BinanceBookSync, BookState
from wadm.config import Settings
from wadm.errors import VenueProtocolError
from wadm.pipeline import venue_info
from wadm.pipeline.writer import Writer
from wadm.records import KLINES, TRADES, BatchKey, Market, Venue
from wadm.transport.rest import RestClient, RestError, WeightBudget
from wadm.transport.ws import Backoff, WsLink
from wadm.venues import binance, bybit
from wadm.venues.base import Gap, Stream, TradeStream
from wadm.venues.streams import BookStream, KlineStream

__all__ = ["Recovery"]

log = logging.getLogger(__name__)

TICK = 0.05
RESUBSCRIBE_AFTER = 5.0
LISTING_CHECK_EVERY = 3600.0
MAX_ATTEMPTS = 8
_MS = 1_000_000

class _Pending(NamedTuple):
    """A trade window whose backfill is running."""

    start: int
    end: int
    missing: int | None
    stream: str


@dataclass
class _Progress:
    """How far a trade backfill got: what is still missing, and holes the venue cannot fill."""

    left: Gap | None
    holes: list[Gap] = field(default_factory=list)

    def missing(self) -> list[Gap]:
        return [*self.holes, *([self.left] if self.left is not None else [])]


class Recovery:
    """Runs the REST work the streams ask for. See the module docstring.

    Args:
        settings: REST base URLs and book sizes.
        links: the collector links (their streams are polled).
        writer: where backfilled rows and unrecoverable gaps go.
        transport: an httpx transport for every REST client (tests); default: the network.
    """

    def __init__(
        self,
        settings: Settings,
        links: list[WsLink],
        writer: Writer,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.books: list[tuple[WsLink, BookStream]] = []
        self.trades: list[tuple[WsLink, TradeStream]] = []
        self.klines: list[tuple[WsLink, KlineStream]] = []
        for link in links:
            for st in link.plan.protocol.streams.values():
                if isinstance(st, BookStream):
                    self.books.append((link, st))
                elif isinstance(st, TradeStream):
                    self.trades.append((link, st))
                elif isinstance(st, KlineStream):
                    self.klines.append((link, st))
        # Request budgets per venue host (PROTOCOLS.md §1.5, §2.5, §3.6): weight per minute for
        # Binance, requests per 5 s for Bybit (spot and linear share the host).
        bybit_client = RestClient(settings.bybit_rest_url, WeightBudget(600, window=5.0), transport=transport)
        self.clients: dict[tuple[Venue, Market], RestClient] = {
            (Venue.BINANCE, Market.SPOT): RestClient(settings.binance_spot_rest_url, WeightBudget(6000),
                                                     transport=transport),
            (Venue.BINANCE, Market.USDM): RestClient(settings.binance_usdm_rest_url, WeightBudget(2400),
                                                     transport=transport),
            (Venue.BYBIT, Market.SPOT): bybit_client,
            (Venue.BYBIT, Market.LINEAR): bybit_client,
        }
        self.failures: Counter[str] = Counter()  # by stream name: REST attempts that failed
        self._busy: set[tuple[int, str]] = set()  # (id of stream, job) running now
        self._tasks: set[asyncio.Task[None]] = set()
        self._resubscribed: dict[int, float] = {}
        self._unlisted: set[tuple[int, str]] = set()  # (link, stream) the listing check flagged
        # Trade gaps whose backfill is running, per (venue, market, symbol).
        self.pending: dict[tuple[Venue, Market, str], list[_Pending]] = {}
        self._last_log: dict[str, float] = {}

    async def run(self) -> None:
        """Poll the streams and start recovery jobs, forever."""
        self._spawn(self._check_listings(), "instrument metadata")
        while True:
            self.step()
            await asyncio.sleep(TICK)

    async def close(self) -> None:
        """Cancel running jobs and close the REST clients."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in set(self.clients.values()):
            await client.close()

    async def _check_listings(self) -> None:
        """Read instrument metadata at start and every hour: symbols get halted and delisted."""
        while True:
            await self.read_venue_limits()
            await asyncio.sleep(LISTING_CHECK_EVERY)

    async def read_venue_limits(self) -> None:
        """Read Binance's published request-weight limits and check that the configured symbols trade.

        A symbol the venue does not list (or that is not ``TRADING``) is reported on its streams,
        like a refused subscription, so that its silence neither fails over the connection it
        shares nor goes unexplained. Best effort: without an answer the defaults stay.
        """
        links: list[tuple[WsLink, Stream]] = [*self.books, *self.trades, *self.klines]
        for venue, market in ((Venue.BINANCE, Market.SPOT), (Venue.BINANCE, Market.USDM),
                              (Venue.BYBIT, Market.SPOT), (Venue.BYBIT, Market.LINEAR)):
            mine = [(link, st) for link, st in links if st.venue is venue and st.market is market]
            if not mine:
                continue
            symbols = sorted({st.spec.symbol for _, st in mine})
            client = self.clients[(venue, market)]
            if venue is Venue.BINANCE:
                status = await venue_info.binance_symbols(client, market, symbols)
            else:
                status = await venue_info.bybit_symbols(client, market, symbols)
            trading = "TRADING" if venue is Venue.BINANCE else "Trading"
            for link, st in mine:
                state, name = status.get(st.spec.symbol), st.spec.name
                if state is not None and state != trading:
                    message = f"{st.spec.symbol} is {state} on {venue}/{market}"
                    if link.failed_streams.setdefault(name, message) == message:
                        self._unlisted.add((id(link), name))
                elif state == trading and (id(link), name) in self._unlisted:
                    # Trading again: the watchdog watches the stream again (it flows, or gets replaced).
                    self._unlisted.discard((id(link), name))
                    link.failed_streams.pop(name, None)
            for symbol in sorted(sym for sym, state in status.items() if state != trading):
                log.error("%s/%s: %s is %s on the venue; its streams will stay empty", venue, market, symbol,
                          status[symbol], extra={"symbol": symbol})

    def record_leftovers(self) -> None:
        """At shutdown: record every gap the streams noticed but nobody will backfill now."""
        streams: list[Stream] = [*(st for _, st in self.books), *(st for _, st in self.trades),
                                 *(st for _, st in self.klines)]
        for st in streams:
            if st.gaps:
                self._record(st, st.take_gaps())
        for _, klines in self.klines:
            ranges, klines.missing = klines.missing, []
            iv = klines.interval_ms
            gaps = [Gap(a * _MS, (b + iv) * _MS, "klines_missing", (b - a) // iv + 1) for a, b in ranges]
            if gaps:
                self._record(klines, gaps)

    def step(self) -> None:
        """Look at every stream once; start the jobs that are due."""
        now = time.monotonic()
        now_ns = time.time_ns()
        for link, book in self.books:
            if book.venue is Venue.BINANCE:
                if book.sync.snapshot_requested:
                    self._start(book, "snapshot", lambda b=book: self._snapshot(b))  # type: ignore[misc]
                elif book.shadow is not None and book.shadow.snapshot_requested:
                    self._start(book, "refresh", lambda b=book: self._snapshot(b, refresh=True))  # type: ignore[misc]
                elif book.wants_refresh(now_ns):
                    book.start_refresh(now_ns)  # the next diff asks for the snapshot
                    log.info("%s/%s: the price is near the edge of the trusted book; re-seeding it beside the "
                             "live one", book.market, book.spec.symbol, extra={"stream": book.spec.name})
            else:
                self._check_resubscribe(link, book, now)
            if book.gaps:
                self._record(book, book.take_gaps())
        for _, trades in self.trades:
            if trades.gaps:
                for gap in trades.take_gaps():
                    self._trade_gap(trades, gap)
        for _, klines in self.klines:
            if klines.missing:
                ranges, klines.missing = klines.missing, []
                for first, last in ranges:
                    self._spawn(self._klines(klines, first, last), klines.spec.name)

    # -- plumbing ----------------------------------------------------------------------------

    def _start(self, st: Stream, job: str, make: Callable[[], Awaitable[None]]) -> None:
        key = (id(st), job)
        if key in self._busy:
            return
        self._busy.add(key)

        async def run() -> None:
            try:
                await make()
            finally:
                self._busy.discard(key)

        self._spawn(run(), st.spec.name)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("Recovery job for %s failed: %r", name, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)

    def _record(self, st: Stream, gaps: list[Gap]) -> None:
        self.writer.record_gaps(BatchKey(st.table, st.venue, st.market, st.spec.symbol), st.spec.name, gaps)

    def _log_limited(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -60.0) >= 30.0:
            self._last_log[kind] = now
            log.warning(msg, *args, extra={"kind": kind})

    async def _get(self, st: Stream, path: str, params: dict[str, str | int], weight: int,
                   decode: Callable[[bytes], Any]) -> Any:
        """One REST answer, retried with backoff (and the venue's ``Retry-After``) up to MAX_ATTEMPTS."""
        client = self.clients[(st.venue, st.market)]
        backoff = Backoff(0.5, 30.0)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return decode(await client.get_raw(path, params, weight=weight))
            except (RestError, VenueProtocolError) as exc:
                self.failures[st.spec.name] += 1
                delay = max(backoff.next(), getattr(exc, "retry_after", None) or 0.0)
                self._log_limited(f"{st.spec.name}:{path}", "%s: %s failed (%s); attempt %d of %d, next in %.1f s",
                                  st.spec.name, path, exc, attempt, MAX_ATTEMPTS, delay)
                if attempt == MAX_ATTEMPTS:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # -- books -------------------------------------------------------------------------------

    async def _snapshot(self, book: BookStream, *, refresh: bool = False) -> None:
        """Fetch REST snapshots for one Binance book until one bridges its buffered diffs.

        With ``refresh``, the snapshot seeds the book's shadow (:meth:`BookStream.start_refresh`)
        while the live book keeps serving.
        """
        spot = book.market is Market.SPOT
        path = "/api/v3/depth" if spot else "/fapi/v1/depth"
        limit = binance.snapshot_limit(book.market, self.settings.book_depth)
        weight = binance.snapshot_weight(book.market, limit)
        params: dict[str, str | int] = {"symbol": book.spec.symbol, "limit": limit}
        backoff = Backoff(0.25, 10.0)

        def target() -> BinanceBookSync | None:
            sync = book.shadow if refresh else book.sync
            return sync if isinstance(sync, BinanceBookSync) and sync.snapshot_requested else None

        while (sync := target()) is not None:
            epoch = sync.epoch
            try:
                snap = await self._get(book, path, params, weight, binance.decode_snapshot)
            except (RestError, VenueProtocolError):
                await asyncio.sleep(backoff.next())  # keep trying: a book without a snapshot is useless
                continue
            if target() is not sync or sync.epoch != epoch:
                continue  # the book was discarded meanwhile (reconnect): this answer is void
            if refresh:
                used = book.on_refresh_snapshot(snap.lastUpdateId, snap.bids, snap.asks, limit)
            else:
                used = book.on_snapshot(snap.lastUpdateId, snap.bids, snap.asks, limit, time.time_ns())
            if used:
                log.info("%s/%s: book %s from a snapshot at update %d", book.market, book.spec.symbol,
                         "re-seeded" if refresh else "live", snap.lastUpdateId, extra={"stream": book.spec.name})
                return
            if target() is not None:
                # Older than the buffered diffs (a lagging cache) or the buffer showed a gap: wait
                # a little for the venue to catch up, then ask again; the buffer is kept.
                await asyncio.sleep(backoff.next())

    def _check_resubscribe(self, link: WsLink, book: BookStream, now: float) -> None:
        key = id(book)
        if book.state is BookState.LIVE or not link.state.connected or book.spec.name in link.failed_streams:
            self._resubscribed.pop(key, None)
            return
        since = max(link.state.connected_since or now, self._resubscribed.setdefault(key, now))
        if now - since >= RESUBSCRIBE_AFTER and link.send(bybit.resubscribe_frames(book.spec.name)):
            self._resubscribed[key] = now
            book.resubscribes += 1
            log.warning("%s/%s: no book snapshot after %.0f s; subscribing again", book.market, book.spec.symbol,
                        RESUBSCRIBE_AFTER, extra={"stream": book.spec.name})

    # -- trades ------------------------------------------------------------------------------

    def _trade_gap(self, st: TradeStream, gap: Gap) -> None:
        aggregate_ids = self.settings.binance_trade_stream == "aggTrade"  # REST backfills aggTrade ids only
        if st.venue is Venue.BINANCE and aggregate_ids and gap.first_id is not None and gap.last_id is not None:
            self._spawn(self._deadline(st, gap, self._binance_trades), st.spec.name)
        elif st.venue is Venue.BYBIT and gap.reason in ("disconnected", "restart"):
            self._spawn(self._deadline(st, gap, self._bybit_trades), st.spec.name)
        else:
            self._record(st, [gap])

    async def _deadline(
        self, st: TradeStream, gap: Gap, job: Callable[[TradeStream, _Progress], Awaitable[None]]
    ) -> None:
        """Run a backfill; record what it could not recover, including on a timeout, an error or shutdown."""
        series = (st.venue, st.market, st.spec.symbol)
        entry = _Pending(gap.start, gap.end, gap.missing, st.spec.name)
        pending = self.pending.setdefault(series, [])
        pending.append(entry)  # served as a gap meanwhile: the window is not complete yet
        progress = _Progress(gap)
        try:
            async with asyncio.timeout(self.settings.backfill_deadline):
                await job(st, progress)
        except (TimeoutError, RestError, VenueProtocolError) as exc:
            log.warning("%s: backfill gave up (%s); what is still missing is recorded as a gap", st.spec.name,
                        exc, extra={"stream": st.spec.name})
        finally:
            pending.remove(entry)  # equal entries are interchangeable
            if missing := progress.missing():
                self._record(st, missing)  # also when cancelled at shutdown: the gap must not be forgotten

    def pending_gaps(self, venue: Venue, market: Market, symbol: str, start: int, end: int) -> list[dict[str, Any]]:
        """Trade windows overlapping ``[start, end]`` (ns) whose backfill is still running, as API gap rows."""
        rows = []
        for gap in self.pending.get((venue, market, symbol), []):
            if gap.end >= start and gap.start <= end:
                rows.append({"exchange": str(venue), "market": str(market), "symbol": symbol, "channel": "trades",
                             "stream": gap.stream, "start": gap.start // _MS, "end": gap.end // _MS,
                             "reason": "backfilling", "missing": gap.missing})
        return rows

    async def _binance_trades(self, st: TradeStream, progress: _Progress) -> None:
        """Fetch ``aggTrades`` from the first missing id to the last, writing each page as it comes."""
        gap = progress.left
        assert gap is not None and gap.first_id is not None and gap.last_id is not None
        last_id = gap.last_id
        spot = st.market is Market.SPOT
        path = "/api/v3/aggTrades" if spot else "/fapi/v1/aggTrades"
        weight = 4 if spot else 20
        next_id, recovered = gap.first_id, 0
        while next_id <= last_id:
            params: dict[str, str | int] = {"symbol": st.spec.symbol, "fromId": next_id, "limit": 1000}
            rows = [r for r in await self._get(st, path, params, weight, binance.decode_agg_trades)
                    if next_id <= r.id <= last_id]
            if not rows:
                break  # the venue has nothing more (ids older than it keeps): the rest stays a gap
            start = progress.left.start if progress.left is not None else gap.start
            for r in rows:  # ids the venue skipped cannot be recovered: each hole is a gap of its own
                if r.id > next_id:
                    progress.holes.append(Gap(start, r.T * _MS, "missing_ids", r.id - next_id, next_id, r.id - 1))
                next_id, start = r.id + 1, r.T * _MS
            frame = binance.trades_to_frame(rows, [time.time_ns()] * len(rows))
            self.writer.add_frame(BatchKey(TRADES, st.venue, st.market, st.spec.symbol), frame)
            st.backfilled += frame.height
            recovered += frame.height
            progress.left = (gap._replace(start=start, missing=last_id - next_id + 1, first_id=next_id)
                             if next_id <= last_id else None)
        log.info("%s: backfilled %d trades (ids %d-%d)", st.spec.name, recovered, gap.first_id, next_id - 1,
                 extra={"stream": st.spec.name})

    async def _bybit_trades(self, st: TradeStream, progress: _Progress) -> None:
        """Fetch ``recent-trade`` (best effort); what it does not reach back over stays a gap."""
        gap = progress.left
        assert gap is not None
        protocol = next((link.plan.protocol for link, s in self.trades if s is st), None)
        assert isinstance(protocol, bybit.BybitProtocol)
        limit = 60 if st.market is Market.SPOT else 1000
        params: dict[str, str | int] = {"category": st.market.value, "symbol": st.spec.symbol, "limit": limit}
        rows = await self._get(st, "/v5/market/recent-trade", params, 1, bybit.decode_recent_trades)
        new = protocol.accept_backfill(st.spec.name, rows, gap.start, gap.end)
        if new:
            frame = bybit.trades_to_frame(new, [time.time_ns()] * len(new))
            self.writer.add_frame(BatchKey(TRADES, st.venue, st.market, st.spec.symbol), frame)
            st.backfilled += frame.height
        oldest = rows[0].T * _MS if rows else gap.end
        if oldest <= gap.start:
            progress.left = None  # the venue's recent trades reach back past the window: nothing is missing
            return
        log.info("%s: recent trades cover %d of the disconnect window; the rest is recorded as a gap",
                 st.spec.name, len(new), extra={"stream": st.spec.name})
        progress.left = gap._replace(end=min(gap.end, oldest))

    # -- klines ------------------------------------------------------------------------------

    async def _klines(self, st: KlineStream, first: int, last: int) -> None:
        """Fetch closed 1-minute bars with open times in ``[first, last]`` (ms), 1000 per request."""
        iv = st.interval_ms
        page_first = first
        missing: list[Gap] = []
        try:
            async with asyncio.timeout(self.settings.backfill_deadline):
                while page_first <= last:
                    page_last = min(last, page_first + 999 * iv)
                    rows = await self._get(st, *self._kline_request(st, page_first, page_last))
                    kept = st.add_backfill(rows, page_first, page_last)
                    if kept < (page_last - page_first) // iv + 1:
                        missing.append(Gap(page_first * _MS, (page_last + iv) * _MS, "klines_missing",
                                           (page_last - page_first) // iv + 1 - kept))
                    page_first = page_last + iv
        except (TimeoutError, RestError, VenueProtocolError) as exc:
            log.warning("%s: kline backfill failed (%s)", st.spec.name, exc, extra={"stream": st.spec.name})
        finally:
            if page_first <= last:  # not fetched: a timeout, an error, or shutdown
                missing.append(Gap(page_first * _MS, (last + iv) * _MS, "klines_missing",
                                   (last - page_first) // iv + 1))
            if missing:
                self.writer.record_gaps(BatchKey(KLINES, st.venue, st.market, st.spec.symbol), st.spec.name,
                                        missing)

    @staticmethod
    def _kline_request(
        st: KlineStream, first: int, last: int
    ) -> tuple[str, dict[str, str | int], int, Callable[[bytes], Any]]:
        if st.venue is Venue.BINANCE:
            spot = st.market is Market.SPOT
            return ("/api/v3/klines" if spot else "/fapi/v1/klines",
                    {"symbol": st.spec.symbol, "interval": "1m", "startTime": first, "endTime": last, "limit": 1000},
                    2 if spot else 5, lambda b: binance.decode_klines(b, time.time_ns()))
        return ("/v5/market/kline",
                {"category": st.market.value, "symbol": st.spec.symbol, "interval": "1", "start": first, "end": last,
                 "limit": 1000},
                1, lambda b: bybit.decode_klines(b, time.time_ns()))
