"""The shape every venue protocol shares.

A venue module plans its connections (:class:`ConnectionPlan`: URL, streams, subscribe frames,
application pings) and provides a protocol object whose ``feed(payload, ts_recv)`` takes one
frame. Trades go straight into the :class:`TradeStream` of their stream, kept as the venue's
typed structs; they become a DataFrame only when a batch is cut (:meth:`TradeStream.take`), which
keeps per-message work to a decode and an append. ``feed`` returns an :class:`Event` for
control frames (acks, errors, shutdown notices), ``None`` otherwise, and raises
:class:`~wadm.errors.VenueProtocolError` with a low-cardinality ``kind`` for frames it cannot use.

Binance subscribes in the URL and answers server pings; Bybit subscribes by message, needs
client pings and batches trades in arrays; both fit these types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import polars as pl

from wadm.errors import VenueProtocolError
from wadm.records import TRADES, Market, Venue

__all__ = [
    "Ack",
    "HoldsStandby",
    "ConnectionPlan",
    "Event",
    "Gap",
    "GapQueue",
    "Stream",
    "SendFrames",
    "ServerShutdown",
    "StreamSpec",
    "TradeStream",
    "VenueErrorReply",
    "VenueProtocol",
]

class Gap(NamedTuple):
    """A window of missing data on one stream, waiting to be backfilled or stored.

    ``start`` is the time (ns) of the last good record before the window and ``end`` of the
    first good one after it. ``missing`` counts the records known to be missing (null when
    unknown); ``first_id``/``last_id`` bound the missing ids where the venue's ids are contiguous.
    """

    start: int
    end: int
    reason: str
    missing: int | None = None
    first_id: int | None = None
    last_id: int | None = None


class Stream(Protocol):
    """What the transport, writer and health read from any stream (trades, book, klines)."""

    venue: Venue
    market: Market
    spec: StreamSpec
    gaps: list[Gap]

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

    def take(self) -> pl.DataFrame | None:
        """Cut the pending rows into a DataFrame; ``None`` if there are none."""
        ...

    def take_gaps(self) -> list[Gap]:
        """Hand over the gaps found since the last call."""
        ...

    def connection_lost(self, ts_recv: int) -> None:
        """The connection carrying this stream broke at ``ts_recv`` (ns): data may be missing."""
        ...


MAX_RESUME_IDS = 5_000_000  # more trades than an hour of the busiest symbol: a bigger jump is no gap


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One venue stream: its wire name and what it carries."""

    name: str  # the venue's stream or topic name, e.g. "btcusdt@aggTrade"
    channel: str  # "trades", "book" or "klines"
    symbol: str  # as the venue writes it, e.g. "BTCUSDT"
    # The venue may legitimately stay silent this long on this stream (a kline stream of a quiet
    # symbol pushes once a minute, when the bar closes); the watchdog waits at least this long.
    min_silence: float = 0.0


class GapQueue:
    """The gaps a stream found, queued until recovery takes them (a base of every stream)."""

    __slots__ = ()
    gaps: list[Gap]

    def take_gaps(self) -> list[Gap]:
        """Hand over the gaps found since the last call."""
        gaps = self.gaps.copy()  # the list stays the stream's: a slotted base cannot rebind it
        self.gaps.clear()
        return gaps


@dataclass(slots=True, eq=False)
class TradeStream(GapQueue):
    """Live state of one trade stream: pending trades, de-duplication mark and counters.

    ``items`` holds the venue's decoded structs in order and ``ts_recv`` their receive times;
    ``to_frame`` (from the venue) turns them into a DataFrame of the stored trade schema
    (:func:`wadm.records.trade_schema`) when a batch is cut.
    """

    venue: Venue
    market: Market
    spec: StreamSpec
    to_frame: Callable[[list[Any], list[int]], pl.DataFrame]
    max_rows: int = 500_000
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
    gaps: list[Gap] = field(default_factory=list)  # windows of missing data found on this stream
    gap_open: bool = False  # the connection was lost; the next trade closes the window
    gap_reason: str = "disconnected"  # why gap_open was set: "disconnected" or "restart"
    resume_id: int | None = None  # the newest stored trade id before a restart (ordered ids)
    restart_from: int | None = None  # ns: where the stored trades end, before a restart (ordered ids)
    # Trades dropped because the buffer was full since the last cut: [first ts, last ts, count,
    # first id, last id] (ids -1 where the venue's ids are not contiguous).
    drop_window: list[int] | None = None

    @property
    def table(self) -> str:
        """Trades go to the ``trades`` table."""
        return TRADES

    def connection_lost(self, ts_recv: int) -> None:
        """Venues without contiguous ids record the window when the next trade arrives."""
        self.gap_open = True
        self.gap_reason = "disconnected"

    def resume(self, ts_event: int, trade_id: int | str | None) -> None:
        """Continue after the newest stored trade (a restart): what came in between is a gap.

        ``trade_id`` is None when the stored trades end before the retention horizon and
        ``ts_event`` is that horizon: the window is recorded, not backfilled.
        """
        self.last_ts = max(self.last_ts, ts_event)
        if self.venue is Venue.BINANCE:
            self.restart_from = ts_event  # the first live trade shows how much was missed
            self.resume_id = trade_id if isinstance(trade_id, int) else None
        else:
            self.gap_open, self.gap_reason = True, "restart"

    def resume_from(self, first_id: int, first_ts: int) -> int:
        """Given the first live trade after a restart, the id to count missing trades from (-1: none).

        A plausible id jump is a gap of ids, which REST can fill. Anything else (ids that went
        backwards, a jump no venue makes within the retention window, i.e. another id space such
        as the ``trade`` stream's instead of ``aggTrade``'s, or no stored id) is recorded as a
        window of time instead.
        """
        resumed, since = self.resume_id, self.restart_from
        self.resume_id = self.restart_from = None
        if resumed is not None and 0 <= first_id - resumed - 1 <= MAX_RESUME_IDS:
            return resumed
        if since is not None and first_ts > since:
            self.gaps.append(Gap(since, first_ts, "restart"))
        return -1

    def note_drop(self, ts_event: int, trade_id: int | None) -> None:
        """Count a trade dropped for a full buffer; the run of drops becomes one gap at the next cut."""
        self.dropped += 1
        tid = -1 if trade_id is None else trade_id
        if self.drop_window is None:
            self.drop_window = [ts_event, ts_event, 1, tid, tid]
        else:
            w = self.drop_window
            w[1], w[2], w[4] = ts_event, w[2] + 1, tid

    def take(self) -> pl.DataFrame | None:
        """Cut the pending trades into a DataFrame and reset the buffer; ``None`` if empty."""
        if self.drop_window is not None:
            start, end, count, first_id, last_id = self.drop_window
            self.drop_window = None
            ids = (first_id, last_id) if first_id >= 0 and last_id - first_id + 1 == count else (None, None)
            self.gaps.append(Gap(start, end, "buffer_full", count, *ids))
        if not self.items:
            return None
        items, ts_recv = self.items, self.ts_recv
        self.items, self.ts_recv = [], []
        frame = self.to_frame(items, ts_recv)
        self.rejected += len(items) - frame.height
        self.trades += frame.height
        if frame.height:
            self.last_ts = frame["ts_event"][-1]
        return frame

    def newest_ts(self) -> int:
        """Trade time (ns) of the newest trade accepted, pending or cut; 0 before any."""
        return self.items[-1].T * 1_000_000 if self.items else self.last_ts

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


@dataclass(frozen=True, slots=True)
class SendFrames:
    """Send these frames on the connection that delivered the frame (e.g. a Bybit resubscription)."""

    frames: tuple[bytes, ...]
    reason: str = ""


Event = Ack | VenueErrorReply | ServerShutdown | SendFrames


class VenueProtocol(Protocol):
    """What the transport drives: one protocol object per connection plan, shared by rotations."""

    @property
    def streams(self) -> Mapping[str, Stream]:
        """The streams of the plan, by wire name."""
        ...

    def feed(self, payload: bytes, ts_recv: int) -> Event | None:
        """Take one frame; trades land in ``streams``; control frames come back as events."""
        ...


class HoldsStandby:
    """For book protocols: frames of a connection taking over are held, then replayed.

    During a make-before-break hand-over two connections deliver the same sequence at slightly
    different times; a book fed by both could see an update from the faster one before the one
    it continues from. The transport feeds the new connection's frames to :meth:`feed_standby`
    and calls :meth:`promote` once the old connection is closed: from then on only the new one
    feeds the book, and its held frames continue the sequence (updates already applied are
    duplicates and skipped).
    """

    max_standby = 50_000  # frames held at most (a hand-over lasts seconds)

    def feed(self, payload: bytes, ts_recv: int) -> Event | None:
        raise NotImplementedError

    def feed_standby(self, payload: bytes, ts_recv: int) -> Event | None:
        """Hold a frame of the connection that is taking over."""
        held: list[tuple[bytes, int]] = self.__dict__.setdefault("_standby", [])
        if len(held) < self.max_standby:
            held.append((payload, ts_recv))
        return None

    def discard_standby(self) -> None:
        """The taking-over connection failed: forget what it delivered."""
        self.__dict__.pop("_standby", None)

    def promote(self) -> list[Event]:
        """The taking-over connection is the only one now: replay what it delivered meanwhile."""
        held: list[tuple[bytes, int]] = self.__dict__.pop("_standby", [])
        events = []
        for payload, ts_recv in held:
            try:
                event = self.feed(payload, ts_recv)
            except VenueProtocolError:
                continue  # the transport counted nothing for it yet; a bad frame is dropped either way
            if event is not None:
                events.append(event)
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

    def __str__(self) -> str:
        return self.label or f"{self.venue}/{self.market}"
