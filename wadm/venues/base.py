"""The shape every venue protocol shares: streams, events and actions, connection plans.

A venue module plans its connections (:class:`ConnectionPlan`: URL, streams, subscribe frames,
application pings) and provides a protocol object whose ``feed(payload, ts_recv)`` takes one
frame and returns what the frame asks of the rest of WADM, as a tuple of typed events
(usually empty):

* control events from the venue: :class:`Ack`, :class:`VenueErrorReply`, :class:`ServerShutdown`;
* actions for the collector (:data:`Action`): fetch a book snapshot, resubscribe a topic,
  recover trades in a window, fetch missed bars, or record a window nothing can recover.

Nothing here waits or fetches: the protocols *notice* and *say*; the collector
(:mod:`wadm.pipeline.collector`) executes. Trades go straight into the :class:`TradeStream` of
their stream, kept as the venue's typed structs; they become a DataFrame only when a batch is
cut (:meth:`TradeStream.take`), which keeps per-message work to a decode and an append. Frames
the protocol cannot use raise :class:`~wadm.errors.VenueProtocolError` with a low-cardinality
``kind``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import polars as pl

from wadm.errors import VenueProtocolError
from wadm.records import TRADES, Market, Venue
from wadm.units import NS_PER_MS

__all__ = [
    "NO_EVENTS",
    "NOT_LISTED",
    "Ack",
    "Action",
    "Backfill",
    "ConnectionPlan",
    "DropWindow",
    "Event",
    "FetchKlines",
    "FetchSnapshot",
    "Gap",
    "HoldingProtocol",
    "Instrument",
    "ListingQuery",
    "ProtocolBase",
    "RecentIds",
    "RecordGap",
    "RecoverTrades",
    "RestLimit",
    "RestRequest",
    "Resubscribe",
    "ServerShutdown",
    "Stream",
    "StreamSpec",
    "Taken",
    "TradeStream",
    "VenueErrorReply",
    "VenueProtocol",
]

T = TypeVar("T")
NOT_LISTED = "not listed"  # the listing status of a symbol the venue does not list
MAX_RESUME_IDS = 5_000_000  # more trades than an hour of the busiest symbol: a bigger jump is no gap
RECENT_IDS = 20_000  # ids remembered per stream where ids cannot be ordered (de-duplication)


class Gap(NamedTuple):
    """A window of missing data on one stream, waiting to be recovered or recorded.

    ``start`` is the time (ns) of the last good record before the window and ``end`` of the
    first good one after it. ``missing`` counts the records known to be missing (None when
    unknown); ``first_id``/``last_id`` bound the missing ids where the venue's ids are contiguous.
    """

    start: int
    end: int
    reason: str
    missing: int | None = None
    first_id: int | None = None
    last_id: int | None = None


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One venue stream: its wire name and what it carries."""

    name: str  # the venue's stream or topic name, e.g. "btcusdt@aggTrade"
    channel: str  # "trades", "book" or "klines"
    symbol: str  # as the venue writes it, e.g. "BTCUSDT"
    # The venue may legitimately stay silent this long on this stream (a kline stream of a quiet
    # symbol pushes once a minute, when the bar closes); the watchdog waits at least this long.
    min_silence: float = 0.0


# -- events from the venue ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """A subscription or control request was answered."""

    request_id: object
    ok: bool = True
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VenueErrorReply:
    """The venue answered a request with an error."""

    code: int | None
    message: str
    request_id: object = None
    stream: str | None = None  # the stream or topic a refused subscription named, when known


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """The venue will close this connection soon: open a new one now."""

    ts_event: int


# -- actions for the collector --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """A Binance book needs a REST snapshot (``refresh``: to re-seed a shadow beside the live book)."""

    stream: str
    reason: str
    refresh: bool = False


@dataclass(frozen=True, slots=True)
class Resubscribe:
    """A Bybit book broke: send ``frames`` (unsubscribe, subscribe) to get a fresh snapshot."""

    stream: str
    frames: tuple[bytes, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class RecoverTrades:
    """Trades of ``stream`` may be missing in ``gap``: recover what the venue allows, record the rest."""

    stream: str
    gap: Gap


@dataclass(frozen=True, slots=True)
class FetchKlines:
    """Closed bars with open times in ``[first, last]`` (ms) were never seen: fetch them."""

    stream: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class RecordGap:
    """A window of ``stream`` that nothing can recover: record it in the ``gaps`` table."""

    stream: str
    gap: Gap


Action = FetchSnapshot | Resubscribe | RecoverTrades | FetchKlines | RecordGap
Event = Ack | VenueErrorReply | ServerShutdown | Action
NO_EVENTS: tuple[Event, ...] = ()


# -- REST: what to ask the venue, and jobs that ask in several steps -------------------------


@dataclass(frozen=True, slots=True)
class RestRequest(Generic[T]):
    """One venue REST request: path, parameters, its cost in the venue's budget, and its decoder.

    ``decode`` raises :class:`~wadm.errors.VenueProtocolError` for an answer it cannot use.
    """

    path: str
    params: Mapping[str, str | int]
    weight: int
    decode: Callable[[bytes], T]


@dataclass(frozen=True, slots=True)
class RestLimit:
    """A venue host's request budget: ``limit`` weight (or requests) per rolling ``window`` seconds."""

    limit: int
    window: float


class Backfill(Protocol):
    """A recovery in several REST steps, sans-IO: the collector asks for requests and hands back answers.

    The collector stops at the job's deadline, on a failure that outlasts its retries, or at
    shutdown; in every case it records :meth:`missing` as gaps.
    """

    def next_request(self) -> RestRequest[Any] | None:
        """The next request, or None when the job is done."""
        ...

    def on_answer(self, value: Any, ts_recv: int) -> pl.DataFrame | None:
        """Take a decoded answer received at ``ts_recv`` (ns); return recovered rows to write, if any."""
        ...

    def missing(self) -> list[Gap]:
        """What is still missing (and what the venue cannot give back)."""
        ...


@dataclass(frozen=True, slots=True)
class Instrument:
    """What the venue says about a symbol's grids: price ``tick`` and quantity ``lot``.

    The decimal strings are kept as the venue wrote them (exact); the floats are for arithmetic.
    """

    tick: float
    lot: float
    tick_text: str
    lot_text: str

    @classmethod
    def parse(cls, tick: str, lot: str) -> Instrument | None:
        """From the venue's decimal strings; None when either is missing or not a positive number."""
        try:
            t, q = float(tick), float(lot)
        except ValueError:
            return None
        if not (t > 0 and q > 0):
            return None
        return cls(t, q, tick, lot)


class ListingQuery(Protocol):
    """Which configured symbols the venue lists and trades, sans-IO, in one or more requests."""

    trading: str  # the status that means "trading" on this venue
    statuses: dict[str, str]  # symbol -> the venue's status, or NOT_LISTED
    instruments: dict[str, Instrument]  # symbol -> its tick and lot, for the symbols the venue described
    weight_limit: int | None  # the request budget the venue published, when it did

    def next_request(self) -> RestRequest[Any] | None:
        """The next request, or None when done."""
        ...

    def on_answer(self, value: Any) -> None:
        """Take the decoded answer to the last request."""
        ...

    def on_error(self, status: int | None) -> None:
        """The last request failed with ``status`` (None: no answer); decide what to ask next."""
        ...


# -- streams ----------------------------------------------------------------------------------


class Taken(NamedTuple):
    """What :meth:`Stream.take` cut: the rows (None when none) and actions it noticed."""

    frame: pl.DataFrame | None
    actions: tuple[Action, ...] = ()


class Stream(Protocol):
    """What the collector, transport and health read from any stream (trades, book, klines)."""

    venue: Venue
    market: Market
    spec: StreamSpec
    dropped: int  # rows dropped because the stream's buffer was full
    min_flush_interval: float  # seconds a buffer waits at least before it is cut (rare rows batch longer)

    @property
    def messages(self) -> int:
        """Frames with data so far: the watchdog's progress counter."""
        ...

    @property
    def pending(self) -> int:
        """Rows waiting to be cut into a batch."""
        ...

    @property
    def table(self) -> str:
        """The table this stream's rows go to."""
        ...

    def take(self) -> Taken:
        """Cut the pending rows into a DataFrame."""
        ...

    def connection_lost(self, ts_recv: int) -> None:
        """The connection carrying this stream broke at ``ts_recv`` (ns): data may be missing."""
        ...


class RecentIds:
    """A bounded set of recently seen trade ids (venues whose ids cannot be ordered)."""

    __slots__ = ("ids", "order")

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.order: deque[str] = deque()

    def add(self, trade_id: str) -> bool:
        """Remember ``trade_id``; False when it was already there."""
        if trade_id in self.ids:
            return False
        self.ids.add(trade_id)
        self.order.append(trade_id)
        if len(self.order) > RECENT_IDS:
            self.ids.discard(self.order.popleft())
        return True


@dataclass(slots=True)
class DropWindow:
    """Trades dropped in a row because a buffer was full: their times, count and (contiguous) ids."""

    start: int  # ns
    end: int
    count: int
    first_id: int | None
    last_id: int | None

    def gap(self) -> Gap:
        """The window as a gap; ids only where they account for every dropped trade."""
        first, last = self.first_id, self.last_id
        exact = first is not None and last is not None and last - first + 1 == self.count
        return Gap(self.start, self.end, "buffer_full", self.count, *((first, last) if exact else (None, None)))


@dataclass(slots=True, eq=False)
class TradeStream:
    """Live state of one trade stream: pending trades, de-duplication marks, counters.

    ``items`` holds the venue's decoded structs in order and ``ts_recv`` their receive times;
    ``to_frame`` (from the venue) turns them into a DataFrame of the stored trade schema
    (:func:`wadm.records.trade_schema`) when a batch is cut. Venues with ordered, contiguous ids
    (Binance) de-duplicate with ``last_id``; others (Bybit) with ``recent``.
    """

    venue: Venue
    market: Market
    spec: StreamSpec
    to_frame: Callable[[list[Any], list[int]], pl.DataFrame]
    max_rows: int = 500_000
    recent: RecentIds | None = None
    # The venue's recovery of a window of missing trades, when it has one for that kind of gap.
    recover: Callable[[TradeStream, Gap], Backfill | None] | None = None
    items: list[Any] = field(default_factory=list)
    ts_recv: list[int] = field(default_factory=list)
    last_id: int = -1  # highest trade id accepted (venues with ordered ids)
    # Counters. PERF: the per-trade path touches none of them on Binance (one trade per frame:
    # ``messages`` is derived); ``trades`` and ``rejected`` are settled per batch in :meth:`take`.
    frames: int = 0  # frames with data, counted by venues whose frames carry several trades
    duplicates: int = 0  # trades already accepted (overlapping connections)
    missing_ids: int = 0  # ids skipped in the venue's contiguous sequence: trades never received
    dropped: int = 0  # pending buffer full
    trades: int = 0  # trades cut into batches
    rejected: int = 0  # trades the venue sent with a zero price or quantity
    last_ts: int = 0  # ns, trade time of the newest trade cut into a batch
    backfilled: int = 0  # trades recovered over REST
    gap_open: bool = False  # unordered ids: the connection was lost; the next trade closes the window
    gap_reason: str = "disconnected"  # why gap_open was set: "disconnected" or "restart"
    first_live: int | None = None  # ns, time of the first live trade since start (for a late resume)
    first_live_id: int | None = None  # its id (ordered ids)
    resume_id: int | None = None  # the newest stored trade id before a restart (ordered ids)
    restart_from: int | None = None  # ns: where the stored trades end, before a restart (ordered ids)
    drop: DropWindow | None = None  # trades dropped for a full buffer since the last cut
    min_flush_interval: float = 0.0

    @property
    def table(self) -> str:
        """Trades go to the ``trades`` table."""
        return TRADES

    def connection_lost(self, ts_recv: int) -> None:
        """Venues without contiguous ids record the window when the next trade arrives."""
        self.gap_open = True
        self.gap_reason = "disconnected"

    # -- restarts: where the stored trades end ---------------------------------------------

    def resume(self, ts_event: int, trade_id: int | str | None) -> tuple[Action, ...]:
        """Continue after the newest stored trade (a restart): what came in between is a gap.

        ``trade_id`` is None when the stored trades end before the retention horizon and
        ``ts_event`` is that horizon: the window is recorded, not backfilled. The store may
        answer after live trades have arrived (a slow store never holds back collection); the
        window then ends at the first live trade and is returned at once.
        """
        if self.recent is not None:  # ids without order: only time says what may be missing
            if self.first_live is None:
                self.last_ts = max(self.last_ts, ts_event)
                self.gap_open, self.gap_reason = True, "restart"
                return ()
            if self.first_live <= ts_event:
                return ()
            return (RecoverTrades(self.spec.name, Gap(ts_event, self.first_live, "restart")),)
        self.restart_from = ts_event
        self.resume_id = trade_id if isinstance(trade_id, int) and not isinstance(trade_id, bool) else None
        if self.first_live is None or self.first_live_id is None:
            self.last_ts = max(self.last_ts, ts_event)
            return ()  # the first live trade settles it (see first_trade)
        return self._resume_gap(self.first_live_id, self.first_live)

    def first_trade(self, trade_id: int, ts_event: int) -> tuple[Action, ...]:
        """Note the first live trade (ordered ids); with a resume known, what was missed before it."""
        self.first_live, self.first_live_id = ts_event, trade_id
        if self.restart_from is None:
            return ()
        return self._resume_gap(trade_id, ts_event)

    def _resume_gap(self, first_id: int, first_ts: int) -> tuple[Action, ...]:
        """The window between the stored trades and the first live one.

        A plausible id jump is a gap of ids, which REST can fill. Anything else (ids that went
        backwards, a jump no venue makes within the retention window, i.e. another id space such
        as the ``trade`` stream's instead of ``aggTrade``'s, or no stored id) is a window of time.
        """
        resumed, since = self.resume_id, self.restart_from
        self.resume_id = self.restart_from = None
        if resumed is not None and 0 <= first_id - resumed - 1 <= MAX_RESUME_IDS:
            if first_id == resumed + 1:
                return ()
            return (self.skipped(resumed, first_id, since or first_ts, first_ts),)
        if since is not None and first_ts > since:
            return (RecoverTrades(self.spec.name, Gap(since, first_ts, "restart")),)
        return ()

    def skipped(self, last_id: int, trade_id: int, since: int, ts_event: int) -> RecoverTrades:
        """Ids after ``last_id`` up to ``trade_id`` (excluded) were never received."""
        missing = trade_id - last_id - 1
        self.missing_ids += missing
        return RecoverTrades(self.spec.name, Gap(since, ts_event, "missing_ids", missing, last_id + 1, trade_id - 1))

    # -- buffers ----------------------------------------------------------------------------

    def note_drop(self, ts_event: int, trade_id: int | None) -> None:
        """Count a trade dropped for a full buffer; the run of drops becomes one gap at the next cut."""
        self.dropped += 1
        w = self.drop
        if w is None:
            self.drop = DropWindow(ts_event, ts_event, 1, trade_id, trade_id)
        else:
            w.end, w.count, w.last_id = ts_event, w.count + 1, trade_id

    def take(self) -> Taken:
        """Cut the pending trades into a DataFrame and reset the buffer.

        A run of trades dropped for a full buffer comes back as an action: the collector
        recovers it where the venue's ids allow, and records it otherwise.
        """
        actions: tuple[Action, ...] = ()
        if self.drop is not None:
            actions = (RecoverTrades(self.spec.name, self.drop.gap()),)
            self.drop = None
        if not self.items:
            return Taken(None, actions)
        items, ts_recv = self.items, self.ts_recv
        self.items, self.ts_recv = [], []
        frame = self.to_frame(items, ts_recv)
        self.rejected += len(items) - frame.height
        self.trades += frame.height
        if frame.height:
            self.last_ts = frame["ts_event"][-1]
        return Taken(frame, actions)

    def peek(self) -> pl.DataFrame | None:
        """The pending trades as a frame for readers, left pending; None when there are none."""
        if not self.items:
            return None
        return self.to_frame(list(self.items), list(self.ts_recv))

    def newest_ts(self) -> int:
        """Trade time (ns) of the newest trade accepted, pending or cut; 0 before any."""
        return self.items[-1].T * NS_PER_MS if self.items else self.last_ts

    # -- unordered ids (Bybit) ---------------------------------------------------------------

    def remember(self, trade_ids: Iterable[str]) -> None:
        """Treat these ids as delivered (the stored ones before a restart): a backfill skips them."""
        if self.recent is not None:
            for trade_id in trade_ids:
                self.recent.add(trade_id)

    def accept_backfill(self, trades: Sequence[Any], start: int, end: int) -> list[Any]:
        """REST trades inside ``[start, end]`` (ns) that the stream never delivered (unordered ids)."""
        recent = self.recent
        if recent is None:
            return [t for t in trades if start <= t.T * NS_PER_MS <= end]
        return [t for t in trades if start <= t.T * NS_PER_MS <= end and recent.add(t.i)]

    # -- counters ---------------------------------------------------------------------------

    @property
    def seen(self) -> int:
        """Trades received for this stream, duplicates and dropped ones included."""
        return self.trades + self.rejected + len(self.items) + self.duplicates + self.dropped

    @property
    def messages(self) -> int:
        """Frames with data: counted by the venue when a frame carries several trades, else one per trade."""
        return self.frames or self.seen

    @property
    def pending(self) -> int:
        """Trades waiting to be cut into a batch."""
        return len(self.items)


# -- protocols ------------------------------------------------------------------------------


class VenueProtocol(Protocol):
    """What the transport drives: one protocol object per connection plan, shared by rotations.

    During a make-before-break hand-over two connections deliver the same sequence at slightly
    different times. The transport feeds the new connection's frames to :meth:`feed_standby`
    and calls :meth:`promote` once the old connection is closed (or :meth:`discard_standby` if
    the new one failed). Protocols that must not interleave two connections' sequences (books,
    Binance trades) hold those frames and replay them on promotion; the others take them at once.
    """

    @property
    def streams(self) -> Mapping[str, Stream]:
        """The streams of the plan, by wire name."""
        ...

    def feed(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        """Take one frame; trades land in ``streams``; what it asks of the collector comes back."""
        ...

    def feed_standby(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        """Take one frame of a connection that is taking over from the current one."""
        ...

    def promote(self) -> list[Event]:
        """The taking-over connection is the only one now: replay what it delivered meanwhile."""
        ...

    def discard_standby(self) -> None:
        """The taking-over connection failed: forget what it delivered."""
        ...


class ProtocolBase:
    """Hand-overs for protocols that de-duplicate overlapping connections themselves."""

    def feed(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        raise NotImplementedError

    def feed_standby(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        """Take the frame at once: de-duplication makes the overlap harmless."""
        return self.feed(payload, ts_recv)

    def promote(self) -> list[Event]:
        """Nothing was held."""
        return []

    def discard_standby(self) -> None:
        """Nothing was held."""


class HoldingProtocol(ProtocolBase):
    """Hand-overs for protocols whose sequences must not interleave: frames are held, then replayed.

    A book fed by two connections could see an update from the faster one before the one it
    continues from; a Binance trade stream would move its high-water mark past trades the old
    connection has yet to deliver. From promotion on only the new connection feeds the protocol,
    and its held frames continue the sequence (what was already applied is a duplicate).
    """

    max_standby = 50_000  # frames held at most (a hand-over lasts seconds)

    def __init__(self) -> None:
        self._standby: list[tuple[bytes, int]] = []
        # Frames past the bound are dropped and counted; what they carried shows up anyway (a
        # book sequence break resyncs the book, skipped trade ids are recovered over REST).
        self.standby_dropped = 0

    def feed_standby(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        """Hold a frame of the connection that is taking over."""
        if len(self._standby) < self.max_standby:
            self._standby.append((payload, ts_recv))
        else:
            self.standby_dropped += 1
        return NO_EVENTS

    def discard_standby(self) -> None:
        """The taking-over connection failed: forget what it delivered."""
        self._standby = []

    def promote(self) -> list[Event]:
        """Replay the held frames through :meth:`feed`."""
        held, self._standby = self._standby, []
        events: list[Event] = []
        for payload, ts_recv in held:
            try:
                events += self.feed(payload, ts_recv)
            except VenueProtocolError:
                continue  # the transport counted nothing for it yet; a bad frame is dropped either way
        return events


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """Everything the transport needs to open and keep one connection."""

    venue: Venue
    market: Market
    url: str
    streams: tuple[StreamSpec, ...]
    protocol: VenueProtocol
    subscribe_frames: tuple[bytes, ...] = ()  # sent after connecting (Bybit); empty when the URL subscribes
    app_ping: bytes | None = None  # application ping payload (Bybit), sent every ``app_ping_interval``
    app_ping_interval: float = 20.0
    max_lifetime: float | None = None  # the venue cuts connections after this many seconds
    label: str = ""  # short name for logs and metrics
    # Whether a frame carries market data (not a subscription answer): a connection taking over
    # must deliver data before the old one is closed.
    is_data: Callable[[bytes], bool] = lambda payload: True

    def __str__(self) -> str:
        return self.label or f"{self.venue}/{self.market}"
