"""Book, kline and trade streams: Binance and Bybit protocols fed bytes, and the actions they return."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson
import polars as pl
import pytest

from tests.conftest import rebuild, recorded_frames
from wadm.book.sync import BinanceBookSync, BookState, BybitBookSync
from wadm.errors import VenueProtocolError
from wadm.records import KLINE_SCHEMA, Market, Venue, book_snapshot_schema
from wadm.venues import binance, bybit
from wadm.venues.base import (
    Event,
    FetchKlines,
    FetchSnapshot,
    Gap,
    RecordGap,
    RecoverTrades,
    Resubscribe,
    StreamSpec,
    Taken,
    TradeStream,
)
from wadm.venues.binance import BinanceBookProtocol, BinanceKlineProtocol
from wadm.venues.bybit import BybitBookProtocol, BybitKlineProtocol, BybitProtocol
from wadm.venues.streams import BookStream, KlineStream

MS = 1_000_000
Level = tuple[float, float]
Levels = list[Level]


# ---- helpers --------------------------------------------------------------------------------


def _state(st: BookStream) -> BookState:
    return st.state  # a call, so that mypy does not narrow the state between feeds


def _bn(st: BookStream) -> BinanceBookSync:
    assert isinstance(st.sync, BinanceBookSync)
    return st.sync


def _by(st: BookStream) -> BybitBookSync:
    assert isinstance(st.sync, BybitBookSync)
    return st.sync


def _binance_book(market: Market, name: str = "btcusdt@depth@100ms",
                  snapshot_depth: int = 100) -> tuple[BinanceBookProtocol, BookStream]:
    spec = StreamSpec(name, "book", "BTCUSDT")
    sync = BinanceBookSync("BTCUSDT", futures=market is Market.USDM)
    st = BookStream(Venue.BINANCE, market, spec, sync, snapshot_depth=snapshot_depth)
    return BinanceBookProtocol({name: st}), st


def _diff(first: int, last: int, bids: Sequence[Level] = (), asks: Sequence[Level] = (), pu: int | None = None,
          event_ms: int = 1_723_161_255_000) -> bytes:
    data: dict[str, Any] = {"e": "depthUpdate", "E": event_ms, "s": "BTCUSDT", "U": first, "u": last,
                            "b": [[str(p), str(q)] for p, q in bids], "a": [[str(p), str(q)] for p, q in asks]}
    if pu is not None:
        data["pu"] = pu
    return orjson.dumps({"stream": "btcusdt@depth@100ms", "data": data})


BIDS5: Levels = [(100.0, 1.0), (99.0, 2.0), (98.0, 3.0), (97.0, 4.0), (96.0, 5.0)]
ASKS5: Levels = [(101.0, 1.5), (102.0, 2.5), (103.0, 3.5), (104.0, 4.5), (105.0, 5.5)]


# ---- Binance depth: real recordings ---------------------------------------------------------


@pytest.mark.parametrize(("name", "market", "stream"), [
    ("spot_btcusdt_20240808.gz", Market.SPOT, "btcusdt@depth@100ms"),
    ("usdm_btcusdt_20240808.gz", Market.USDM, "btcusdt@depth@0ms"),
])
def test_recorded_depth_replays_live_with_zero_resyncs(name: str, market: Market, stream: str) -> None:
    proto, st = _binance_book(market, stream)
    snapshot: dict[str, Any] | None = None
    diffs: list[dict[str, Any]] = []
    events: list[Event] = []
    last_ts = 0
    for ts, frame in recorded_frames(name):
        if b"lastUpdateId" in frame:
            # The recorded REST answer arrives after a few diffs: they wait in the buffer.
            assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested
            assert st.levels(10) == ([], []) and st.sample(ts) is False
            assert len(_bn(st).buffer) == len(diffs) > 0
            snapshot = orjson.loads(frame)
            snap = binance.decode_snapshot(frame)
            assert snap.lastUpdateId == snapshot["lastUpdateId"] and len(snap.bids) == 1000
            assert st.awaiting_snapshot() is st.sync
            # The first sync at startup is not a gap.
            assert st.on_snapshot(snap.lastUpdateId, snap.bids, snap.asks, 1000, ts) == ()
            assert _state(st) is BookState.LIVE and not st.sync.snapshot_requested and st.awaiting_snapshot() is None
        elif b'"depthUpdate"' in frame:
            events += proto.feed(frame, ts)
            diffs.append(orjson.loads(frame)["data"])
            last_ts = ts
    assert snapshot is not None and len(diffs) > 3000
    assert _state(st) is BookState.LIVE and not st.sync.resyncs and _bn(st).buffer_overflows == 0
    assert events == [FetchSnapshot(stream, "initial")]  # the first diff asked for the snapshot; nothing since
    assert (st.updates, st.snapshots) == (len(diffs), 1)
    assert (st.ts_update, st.ts_recv) == (diffs[-1]["E"] * MS, last_ts)
    bids, asks = rebuild(snapshot, diffs, futures=market is Market.USDM)
    assert st.book.bids == bids and st.book.asks == asks
    assert st.book.update_id == diffs[-1]["u"] and not st.book.crossed()
    # A full 1000-level snapshot bounds what is trusted; diffs added levels beyond it, never served.
    floor = min(float(p) for p, _ in snapshot["bids"])
    ceiling = max(float(p) for p, _ in snapshot["asks"])
    assert (st.bid_floor, st.ask_ceiling) == (floor, ceiling)
    assert any(p < floor for p in bids) or any(p > ceiling for p in asks)
    served_bids, served_asks = st.levels(10_000)
    assert served_bids == sorted(((p, q) for p, q in bids.items() if p >= floor), reverse=True)
    assert served_asks == sorted((p, q) for p, q in asks.items() if p <= ceiling)


# ---- Binance depth: lifecycle ---------------------------------------------------------------


def test_binance_spot_book_lifecycle_and_gap_windows() -> None:
    proto, st = _binance_book(Market.SPOT)
    name = "btcusdt@depth@100ms"
    assert proto.feed(_diff(101, 105, [(100.0, 1.25)], [(101.0, 0.0)]), 1) == (FetchSnapshot(name, "initial"),)
    assert proto.feed(_diff(106, 110, [(99.5, 7.0)], [(102.0, 9.0)]), 2) == ()  # asked for once
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested and len(_bn(st).buffer) == 2
    assert st.book.bids == {} and st.levels(5) == ([], [])

    # A snapshot older than the buffer is refused and asked for again; the buffer stays.
    assert st.on_snapshot(90, BIDS5, ASKS5, 1000, 3) == (FetchSnapshot(name, "snapshot_older_than_buffer"),)
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested and len(_bn(st).buffer) == 2

    # lastUpdateId 103 lies inside the first diff's [U; u]: the buffer is bridged (the first sync is no gap).
    assert st.on_snapshot(103, BIDS5, ASKS5, 1000, 4) == ()
    assert _state(st) is BookState.LIVE and not st.sync.snapshot_requested and not _bn(st).buffer
    expected_bids = dict(BIDS5) | {100.0: 1.25, 99.5: 7.0}
    expected_asks = {p: q for p, q in ASKS5 if p != 101.0} | {102.0: 9.0}
    assert st.book.bids == expected_bids and st.book.asks == expected_asks and st.book.update_id == 110
    assert st.on_snapshot(103, BIDS5, ASKS5, 1000, 5) == ()  # a late answer to an earlier request: ignored
    assert st.book.update_id == 110 and st.snapshots == 1
    epoch = st.sync.epoch

    # U jumps past u + 1: updates were lost.
    assert proto.feed(_diff(120, 125, [(95.0, 1.0)]), 10) == (FetchSnapshot(name, "gap"),)
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested
    assert st.sync.resyncs["gap"] == 1 and st.sync.epoch == epoch + 1
    assert st.book.bids == {} and st.sample(11) is False
    assert st.on_snapshot(122, BIDS5, ASKS5, 1000, 20) == (RecordGap(name, Gap(10, 20, "book_gap")),)
    assert _state(st) is BookState.LIVE and st.book.bids == dict(BIDS5) | {95.0: 1.0} and st.book.update_id == 125

    # Diffs in flight are lost with the connection.
    epoch = st.sync.epoch
    st.connection_lost(30)
    assert _state(st) is BookState.RESYNCING and not st.sync.snapshot_requested
    assert st.sync.epoch == epoch + 1 and st.book.bids == {} and not _bn(st).buffer
    assert proto.feed(_diff(200, 204), 31) == (FetchSnapshot(name, "initial"),)
    assert st.sync.snapshot_requested
    assert st.on_snapshot(201, BIDS5, ASKS5, 1000, 40) == (RecordGap(name, Gap(30, 40, "book_disconnected")),)
    assert st.sync.resyncs == {"gap": 1, "disconnected": 1} and st.snapshots == 3


def test_binance_usdm_book_follows_the_pu_chain() -> None:
    proto, st = _binance_book(Market.USDM)
    proto.feed(_diff(100, 110, [(100.0, 2.0)], pu=95), 1)
    proto.feed(_diff(115, 120, [(99.0, 0.0)], pu=110), 2)  # U > prev u + 1 is normal on USD-M
    assert st.on_snapshot(105, BIDS5, ASKS5, 1000, 3) == ()  # U <= lastUpdateId <= u
    assert _state(st) is BookState.LIVE
    assert st.book.bids == {p: q for p, q in BIDS5 if p != 99.0} | {100.0: 2.0}
    proto.feed(_diff(115, 120, [(50.0, 1.0)], pu=110), 4)  # the same event from an overlapping connection
    assert _state(st) is BookState.LIVE and st.sync.duplicates == 1 and 50.0 not in st.book.bids
    assert proto.feed(_diff(130, 140, pu=125), 5) == (FetchSnapshot("btcusdt@depth@100ms", "gap"),)  # pu is not u
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested and st.sync.last_reason == "gap"


def test_crossed_book_resyncs_and_is_recorded() -> None:
    proto, st = _binance_book(Market.SPOT)
    name = "btcusdt@depth@100ms"
    proto.feed(_diff(11, 12), 1)
    assert st.on_snapshot(11, BIDS5, ASKS5, 1000, 2) == ()
    assert proto.feed(_diff(13, 14, [(101.5, 1.0)]), 3) == (FetchSnapshot(name, "crossed"),)  # bid above best ask
    assert _state(st) is BookState.RESYNCING and st.sync.resyncs["crossed"] == 1
    assert proto.feed(_diff(15, 16), 4) == ()  # buffered: the snapshot was asked for already
    assert st.on_snapshot(15, BIDS5, ASKS5, 1000, 5) == (RecordGap(name, Gap(3, 5, "book_crossed")),)


# ---- trusted bounds -------------------------------------------------------------------------


def test_full_snapshot_bounds_what_is_served() -> None:
    proto, st = _binance_book(Market.SPOT)
    proto.feed(_diff(1, 1), 0)
    assert st.on_snapshot(1, BIDS5, ASKS5, 5, 1) == () and _state(st) is BookState.LIVE
    assert (st.bid_floor, st.ask_ceiling) == (96.0, 105.0)
    # Diffs add levels beyond the snapshot's depth (unknown territory) and inside it.
    proto.feed(_diff(2, 2, [(90.0, 8.0), (97.5, 1.0)], [(110.0, 8.0), (101.5, 0.5)]), 2)
    assert 90.0 in st.book.bids and 110.0 in st.book.asks
    bids, asks = st.levels(50)
    assert bids == [(100.0, 1.0), (99.0, 2.0), (98.0, 3.0), (97.5, 1.0), (97.0, 4.0), (96.0, 5.0)]
    assert asks == [(101.0, 1.5), (101.5, 0.5), (102.0, 2.5), (103.0, 3.5), (104.0, 4.5), (105.0, 5.5)]
    assert st.levels(2) == ([(100.0, 1.0), (99.0, 2.0)], [(101.0, 1.5), (101.5, 0.5)])


def test_short_snapshot_side_is_unbounded_and_bounds_follow_each_snapshot() -> None:
    proto, st = _binance_book(Market.SPOT)
    proto.feed(_diff(1, 1), 0)
    st.on_snapshot(1, BIDS5[:3], ASKS5, 5, 1)  # the whole bid side fit in the answer
    assert (st.bid_floor, st.ask_ceiling) == (-math.inf, 105.0)
    proto.feed(_diff(2, 2, [(90.0, 8.0)], [(110.0, 8.0)]), 2)
    bids, asks = st.levels(50)
    assert bids[-1] == (90.0, 8.0) and asks[-1] == (105.0, 5.5)
    # After a resync the new snapshot sets the bounds again.
    st.connection_lost(3)
    proto.feed(_diff(5, 5), 4)
    st.on_snapshot(5, BIDS5, ASKS5[:2], 5, 5)
    assert (st.bid_floor, st.ask_ceiling) == (96.0, math.inf)


# ---- stored book snapshots ------------------------------------------------------------------


def test_sample_only_while_live_and_take_matches_the_schema() -> None:
    proto, st = _binance_book(Market.SPOT, snapshot_depth=3)
    assert st.sample(1) is False and st.take() == Taken(None)
    proto.feed(_diff(7, 8, event_ms=1_700_000_000_123), 50)
    st.on_snapshot(7, BIDS5, ASKS5, 1000, 60)
    assert st.sample(1_000) is True and st.sample(2_000) is True and st.pending == 2
    st.connection_lost(2_500)
    assert st.sample(3_000) is False and st.pending == 2
    frame, actions = st.take()
    assert frame is not None and actions == () and st.take() == Taken(None) and st.pending == 0
    assert frame.schema == pl.Schema(book_snapshot_schema())
    assert frame["ts_event"].to_list() == [1_000, 2_000]
    row = frame.row(0, named=True)
    assert (row["ts_update"], row["ts_recv"], row["update_id"]) == (1_700_000_000_123 * MS, 50, 8)
    assert row["bid_price"] == [100.0, 99.0, 98.0] and row["bid_qty"] == [1.0, 2.0, 3.0]
    assert row["ask_price"] == [101.0, 102.0, 103.0] and row["ask_qty"] == [1.5, 2.5, 3.5]
    assert row["mid"] == pytest.approx(100.5) and row["spread"] == pytest.approx(1.0)
    # Within 1% of 100.5 (99.495 .. 101.505): bids 100, asks 101.
    assert (row["bid_depth_1pct"], row["ask_depth_1pct"]) == (1.0, 1.5)
    assert row["imbalance_1pct"] == pytest.approx((1.0 - 1.5) / 2.5)
    for col in (c for c in frame.columns if c.startswith("imbalance_")):
        assert frame[col].is_between(-1, 1).all()


def test_full_snapshot_buffer_drops_and_counts() -> None:
    proto, st = _binance_book(Market.SPOT)
    st.max_rows = 2
    proto.feed(_diff(1, 1), 0)
    st.on_snapshot(1, BIDS5, ASKS5, 1000, 1)
    assert [st.sample(t) for t in (1, 2, 3)] == [True, True, False] and st.dropped == 1


# ---- Bybit order book -----------------------------------------------------------------------

TOPIC = "orderbook.200.BTCUSDT"


def _bybit_book(market: Market = Market.LINEAR) -> tuple[BybitBookProtocol, BookStream]:
    proto = bybit.plan_book_connections(market, ("BTCUSDT",), "wss://stream.bybit.com", depth=200)[0].protocol
    assert isinstance(proto, BybitBookProtocol)
    return proto, proto.streams[TOPIC]


def _bybit_msg(kind: str, u: int, b: list[list[str]], a: list[list[str]], ts: int = 1786310818129) -> bytes:
    return orjson.dumps({"topic": TOPIC, "type": kind, "ts": ts,
                         "data": {"s": "BTCUSDT", "b": b, "a": a, "u": u, "seq": 753843911359}, "cts": ts - 100})


# Real frames (PROTOCOLS.md §3.2, levels truncated).
BYBIT_SNAPSHOT = (b'{"topic":"orderbook.200.BTCUSDT","type":"snapshot","ts":1786310818129,"data":{"s":"BTCUSDT",'
                  b'"b":[["65114.20","6.054"],["65114.10","0.002"]],"a":[["65114.30","10.486"],["65115.40","0.002"]],'
                  b'"u":15076952,"seq":753843911359},"cts":1786310818027}')
BYBIT_DELTA = (b'{"topic":"orderbook.200.BTCUSDT","type":"delta","ts":1786310818130,"data":{"s":"BTCUSDT",'
               b'"b":[["65095.30","0.005"],["65093.10","0"]],"a":[["65116.60","0"],["65116.80","0.002"]],'
               b'"u":15076953,"seq":753843913870},"cts":1786310818129}')
BYBIT_BIDS = {65114.2: 6.054, 65114.1: 0.002, 65095.3: 0.005}
BYBIT_ASKS = {65114.3: 10.486, 65115.4: 0.002, 65116.8: 0.002}


def test_bybit_snapshot_and_deltas_make_an_exact_live_book() -> None:
    proto, st = _bybit_book()
    assert proto.feed(BYBIT_SNAPSHOT, 1) == ()  # the first snapshot is not a gap
    assert proto.feed(BYBIT_DELTA, 2) == ()
    assert _state(st) is BookState.LIVE and st.book.update_id == 15076953
    assert st.book.bids == BYBIT_BIDS and st.book.asks == BYBIT_ASKS
    assert (st.ts_update, st.ts_recv, st.updates, st.snapshots) == (1786310818130 * MS, 2, 2, 1)
    assert proto.feed(BYBIT_DELTA, 3) == ()  # a repeated u is a duplicate, not a gap
    assert _state(st) is BookState.LIVE and st.sync.duplicates == 1
    bids, asks = st.levels(2)
    assert bids == [(65114.2, 6.054), (65114.1, 0.002)] and asks == [(65114.3, 10.486), (65115.4, 0.002)]


def test_bybit_u_jump_resubscribes_and_a_new_snapshot_restores() -> None:
    proto, st = _bybit_book()
    proto.feed(BYBIT_SNAPSHOT, 1)
    (event,) = proto.feed(_bybit_msg("delta", 15076960, [["65000", "1"]], []), 5)
    assert isinstance(event, Resubscribe) and event.reason == "gap" and event.stream == TOPIC
    assert event.frames == st.resubscribe_frames
    requests = [orjson.loads(f) for f in event.frames]
    assert [(r["op"], r["args"]) for r in requests] == [("unsubscribe", [TOPIC]), ("subscribe", [TOPIC])]
    assert _state(st) is BookState.RESYNCING and st.book.bids == {} and st.resubscribes == 1
    # Deltas before the fresh snapshot are ignored, without another resubscription.
    assert proto.feed(_bybit_msg("delta", 15076961, [["65000", "1"]], []), 6) == ()
    assert _state(st) is BookState.RESYNCING and st.resubscribes == 1
    assert proto.feed(_bybit_msg("snapshot", 15077000, [["65001", "2"]], [["65002", "3"]]), 9) == (
        RecordGap(TOPIC, Gap(5, 9, "book_gap")),)
    assert _state(st) is BookState.LIVE and st.book.bids == {65001.0: 2.0} and st.book.asks == {65002.0: 3.0}
    st.connection_lost(20)
    assert _state(st) is BookState.RESYNCING and st.book.asks == {}
    assert proto.feed(_bybit_msg("snapshot", 15078000, [["65001", "2"]], [["65002", "3"]]), 25) == (
        RecordGap(TOPIC, Gap(20, 25, "book_disconnected")),)
    # Broken again within a second of the last resubscription: no request storm (the collector re-checks).
    assert proto.feed(_bybit_msg("delta", 15078005, [], []), 26) == ()
    assert _state(st) is BookState.RESYNCING and st.resubscribes == 1
    proto.feed(_bybit_msg("snapshot", 15079000, [["65001", "2"]], [["65002", "3"]]), 27)
    assert proto.feed(_bybit_msg("delta", 15079005, [], []), 5 + 10**9) == (
        Resubscribe(TOPIC, st.resubscribe_frames, "gap"),)
    assert st.resubscribes == 2


def test_bybit_u_equal_one_resets_the_book() -> None:
    proto, st = _bybit_book(Market.SPOT)
    proto.feed(BYBIT_SNAPSHOT, 1)
    # A service restart: a "delta" with u == 1 carries a whole book (spot: ts before type, no trailing zeros).
    restart = (b'{"topic":"orderbook.200.BTCUSDT","ts":1786310900000,"type":"delta","data":{"s":"BTCUSDT",'
               b'"b":[["65140","0.014"]],"a":[["65141","0.5"]],"u":1,"seq":1}}')
    assert proto.feed(restart, 2) == ()  # live throughout: no gap
    assert _state(st) is BookState.LIVE and st.book.update_id == 1
    assert st.book.bids == {65140.0: 0.014} and st.book.asks == {65141.0: 0.5}
    assert st.snapshots == 2 and _by(st).resets == 1
    assert proto.feed(_bybit_msg("delta", 2, [["65139", "1"]], []), 3) == ()
    assert st.book.bids == {65140.0: 0.014, 65139.0: 1.0}


def test_live_book_with_an_empty_side_can_be_stored() -> None:
    proto, st = _bybit_book()
    proto.feed(_bybit_msg("snapshot", 5, [["100", "1"]], []), 1)  # e.g. a thin market, or after a delisting
    assert _state(st) is BookState.LIVE
    assert st.sample(10) is True
    frame = st.take().frame
    assert frame is not None and frame.height == 1 and frame["mid"].to_list() == [None]


@pytest.mark.parametrize(("frame", "kind"), [
    (b'{"topic":"orderbook.200.BTCUSDT","type":"delta","ts":1,"data":{"b":[],"a":[]}}', "missing_field"),
    (b'{"topic":"orderbook.200.BTCUSDT","type":"delta","ts":1,"data":{"b":{},"a":[],"u":2}}', "missing_field"),
    (b'{"topic":"orderbook.200.BTCUSDT","type":"snapshot","ts":1,"data":[]}', "missing_field"),
    (b'{"topic":"orderbook.200.ETHUSDT","type":"delta","ts":1,"data":{"b":[],"a":[],"u":2}}', "unknown_stream"),
    (b'{"topic":"orderbook.200.BTCUSDT","type":"delta"', "invalid_json"),
])
def test_bybit_malformed_book_frames(frame: bytes, kind: str) -> None:
    proto, st = _bybit_book()
    proto.feed(BYBIT_SNAPSHOT, 1)
    with pytest.raises(VenueProtocolError) as info:
        proto.feed(frame, 2)
    assert info.value.kind == kind
    assert _state(st) is BookState.LIVE and st.book.update_id == 15076952


# ---- klines ---------------------------------------------------------------------------------

T0 = 1_723_161_240_000  # a minute boundary, ms
MIN = 60_000


def _bn_kline(t: int, closed: bool, close: str = "61800.00") -> bytes:
    k = {"t": t, "T": t + MIN - 1, "s": "BTCUSDT", "i": "1m", "f": 100, "L": 200, "o": "61790.10", "c": close,
         "h": "61850.00", "l": "61780.00", "v": "12.5", "n": 340, "x": closed, "q": "772500.5", "V": "7.25",
         "Q": "448000.25", "B": "0"}
    return orjson.dumps({"stream": "btcusdt@kline_1m", "data": {"e": "kline", "E": t + 2_000, "s": "BTCUSDT", "k": k}})


def _bn_row(t: int, ts_recv: int, close: float = 61800.0) -> tuple[object, ...]:
    return (t * MS, ts_recv, 61790.1, 61850.0, 61780.0, close, 12.5, 772500.5, 340, 7.25, 448000.25)


def _binance_klines() -> tuple[BinanceKlineProtocol, KlineStream]:
    proto = binance.plan_kline_connections(Market.SPOT, ("BTCUSDT",), "wss://stream.binance.com:9443")[0].protocol
    assert isinstance(proto, BinanceKlineProtocol)
    return proto, proto.streams["btcusdt@kline_1m"]


def test_binance_klines_open_closed_and_missing_bars() -> None:
    proto, st = _binance_klines()
    assert proto.feed(_bn_kline(T0, False, "61795.00"), 1) == ()
    assert st.open_bar == _bn_row(T0, 1, 61795.0) and st.rows == [] and st.take() == Taken(None)
    assert proto.feed(_bn_kline(T0, False, "61799.00"), 2) == ()
    assert st.open_bar == _bn_row(T0, 2, 61799.0)
    assert proto.feed(_bn_kline(T0, True), 3) == ()
    assert st.rows == [_bn_row(T0, 3)] and st.open_bar is None
    assert proto.feed(_bn_kline(T0, True), 4) == ()  # repeated (e.g. an overlapping connection): stored once
    assert st.pending == 1
    # The next bar starts two minutes later: the bar at T0 + 1 min closed unseen.
    assert proto.feed(_bn_kline(T0 + 2 * MIN, False), 5) == (FetchKlines("btcusdt@kline_1m", T0 + MIN, T0 + MIN),)
    assert st.open_bar == _bn_row(T0 + 2 * MIN, 5)
    assert st.bars == 5

    # REST answer around the range: only the missing bar is kept.
    rest = orjson.dumps([[t, "61790.10", "61850.00", "61780.00", "61800.00", "12.5", t + MIN - 1, "772500.5", 340,
                          "7.25", "448000.25", "0"] for t in (T0, T0 + MIN, T0 + 2 * MIN)])
    assert st.add_backfill(binance.decode_klines(rest, 6), T0 + MIN, T0 + MIN) == 1 and st.backfilled == 1
    frame = st.take().frame
    assert frame is not None and st.take() == Taken(None)
    assert frame.schema == pl.Schema(KLINE_SCHEMA)
    assert frame.rows() == [_bn_row(T0, 3), _bn_row(T0 + MIN, 6)]


def test_kline_gap_of_several_bars_and_stale_open_bar() -> None:
    proto, st = _binance_klines()
    proto.feed(_bn_kline(T0, False), 1)
    st.connection_lost(2)
    # T0 .. T0 + 2 min closed while we were away.
    assert proto.feed(_bn_kline(T0 + 3 * MIN, False), 3) == (FetchKlines("btcusdt@kline_1m", T0, T0 + 2 * MIN),)
    assert st.open_bar is not None and st.open_bar[0] == (T0 + 3 * MIN) * MS
    # A late bar already handed to backfill is not stored again, nor fetched twice.
    assert proto.feed(_bn_kline(T0 + 2 * MIN, True), 4) == ()
    assert st.rows == []


BYBIT_KLINE = (b'{"topic":"kline.1.ETHUSDT","data":[{"start":1786310760000,"end":1786310819999,"interval":"1",'
               b'"open":"1922.43","close":"1922.48","high":"1922.48","low":"1922.42","volume":"15.7",'
               b'"turnover":"30182.0724","confirm":true,"timestamp":1786310820123},{"start":1786310820000,'
               b'"end":1786310879999,"interval":"1","open":"1922.48","close":"1922.48","high":"1922.48",'
               b'"low":"1922.48","volume":"0","turnover":"0","confirm":false,"timestamp":1786310820123}],'
               b'"ts":1786310820123,"type":"snapshot"}')


def test_bybit_kline_frame_with_two_candles() -> None:
    proto = bybit.plan_kline_connections(Market.LINEAR, ("ETHUSDT",), "wss://stream.bybit.com")[0].protocol
    assert isinstance(proto, BybitKlineProtocol)
    st = proto.streams["kline.1.ETHUSDT"]
    assert proto.feed(BYBIT_KLINE, 7) == ()
    assert st.bars == 1
    assert st.open_bar == (1786310820000 * MS, 7, 1922.48, 1922.48, 1922.48, 1922.48, 0.0, 0.0, None, None, None)
    assert proto.feed(BYBIT_KLINE, 8) == ()  # pushed again: the closed candle is not stored twice
    frame = st.take().frame
    assert frame is not None and frame.schema == pl.Schema(KLINE_SCHEMA)
    assert frame.rows() == [(1786310760000 * MS, 7, 1922.43, 1922.48, 1922.42, 1922.48, 15.7, 30182.0724,
                             None, None, None)]
    assert frame["trades"].null_count() == frame["taker_buy_volume"].null_count() == 1


# ---- plans ---------------------------------------------------------------------------------


def test_book_and_kline_plans_route_and_name_streams() -> None:
    usdm = binance.plan_book_connections(Market.USDM, ("BTCUSDT", "ETHUSDT"), "wss://fstream.binance.com")
    assert usdm[0].url == "wss://fstream.binance.com/public/stream?streams=btcusdt@depth@100ms/ethusdt@depth@100ms"
    proto = usdm[0].protocol
    assert isinstance(proto, BinanceBookProtocol)
    sync = proto.streams["ethusdt@depth@100ms"].sync
    assert isinstance(sync, BinanceBookSync) and sync.futures and sync.symbol == "ETHUSDT"
    klines = binance.plan_kline_connections(Market.USDM, ("BTCUSDT",), "wss://fstream.binance.com")
    assert klines[0].url == "wss://fstream.binance.com/market/stream?streams=btcusdt@kline_1m"
    spot = binance.plan_book_connections(Market.SPOT, ("BTCUSDT",), "wss://stream.binance.com:9443")
    assert spot[0].url == "wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms"
    by = bybit.plan_book_connections(Market.SPOT, ("BTCUSDT",), "wss://stream.bybit.com", depth=50)[0]
    assert [orjson.loads(f)["args"] for f in by.subscribe_frames] == [["orderbook.50.BTCUSDT"]]
    assert isinstance(by.protocol, BybitBookProtocol)
    assert isinstance(by.protocol.streams["orderbook.50.BTCUSDT"].sync, BybitBookSync)
    with pytest.raises(ValueError):
        bybit.plan_book_connections(Market.LINEAR, ("BTCUSDT",), "wss://x", depth=500)
    with pytest.raises(ValueError):
        binance.plan_kline_connections(Market.LINEAR, ("BTCUSDT",), "wss://x")


# ---- moving the trusted bounds ----------------------------------------------------------------


def test_a_book_walking_to_its_bound_is_reseeded_beside_the_live_one() -> None:
    proto, st = _binance_book(Market.SPOT, snapshot_depth=3)
    name = "btcusdt@depth@100ms"
    proto.feed(_diff(1, 1), 0)
    assert st.on_snapshot(1, BIDS5, ASKS5, 5, 1) == () and _state(st) is BookState.LIVE
    assert st.sample(10) and not st.short and not st.wants_refresh(10) and st.shadow is None
    # The price falls: the three best bids are taken out; two trusted bids remain (fewer than 3).
    assert proto.feed(_diff(2, 2, [(100.0, 0.0), (99.0, 0.0), (98.0, 0.0)], [(99.5, 1.0)]), 2) == ()
    # Sampling notices and starts re-seeding a shadow book by itself.
    assert st.sample(20) and st.short
    shadow = st.shadow
    assert shadow is not None and st.awaiting_snapshot(refresh=True) is None  # no diff has asked yet
    assert not st.wants_refresh(21)  # one refresh at a time, and at most one a minute
    # The next diff asks for the shadow's snapshot; the live book goes on.
    assert proto.feed(_diff(3, 3, [(95.0, 2.0)]), 3) == (FetchSnapshot(name, "refresh", refresh=True),)
    assert proto.feed(_diff(4, 4), 4) == ()  # asked for once
    assert shadow.snapshot_requested and st.awaiting_snapshot(refresh=True) is shadow
    assert st.awaiting_snapshot() is None and _state(st) is BookState.LIVE
    assert st.levels(5)[0] == [(97.0, 4.0), (96.0, 5.0)]  # 95 is beyond the old floor: not served yet
    # A fresh snapshot of the same depth, centred on the new price, bridges the buffered diff.
    fresh_bids = [(97.0, 4.0), (96.0, 5.0), (95.0, 2.0), (94.0, 1.0), (93.0, 1.0)]
    fresh_asks = [(99.5, 1.0), (101.0, 1.5), (102.0, 2.5), (103.0, 3.5), (104.0, 4.5)]
    assert st.on_refresh_snapshot(3, fresh_bids, fresh_asks, 5)
    assert st.shadow is None and st.refreshes == 1
    assert (st.bid_floor, st.ask_ceiling) == (93.0, 104.0)
    assert st.levels(5) == (fresh_bids, fresh_asks)
    assert _bn(st).resyncs == {}  # live throughout: no resync (and no gap: on_snapshot was never called)
    # Short again within the minute: no second refresh yet.
    proto.feed(_diff(5, 5, [(97.0, 0.0), (96.0, 0.0), (95.0, 0.0)]), 5)
    assert st.sample(30) and st.short and st.shadow is None
    assert st.sample(20 + 60 * 10**9) and st.shadow is not None


def test_a_refresh_is_dropped_when_the_book_breaks() -> None:
    proto, st = _binance_book(Market.SPOT, snapshot_depth=3)
    proto.feed(_diff(1, 1), 0)
    st.on_snapshot(1, BIDS5, ASKS5, 5, 1)
    st.start_refresh(2)
    assert proto.feed(_diff(2, 2), 2) == (FetchSnapshot("btcusdt@depth@100ms", "refresh", refresh=True),)
    assert st.shadow is not None
    st.connection_lost(3)
    assert st.shadow is None and not st.on_refresh_snapshot(2, BIDS5, ASKS5, 5)


# ---- trades dropped for a full buffer ---------------------------------------------------------


def test_trades_dropped_for_a_full_buffer_become_a_gap_with_their_ids() -> None:
    plan = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), "wss://x", max_rows=3)[0]
    proto = plan.protocol
    st = proto.streams["btcusdt@aggTrade"]
    for i in range(1, 8):
        frame = {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": i,
                                                         "p": "100.0", "q": "1.0", "f": i, "l": i, "T": 1000 + i,
                                                         "m": False}}
        proto.feed(orjson.dumps(frame), 0)
    assert st.dropped == 4
    frame_cut, actions = st.take()
    assert frame_cut is not None and frame_cut["id"].to_list() == [1, 2, 3]
    # Ids 4-7: backfillable.
    assert actions == (RecoverTrades("btcusdt@aggTrade", Gap(1004 * MS, 1007 * MS, "buffer_full", 4, 4, 7)),)
    assert st.take() == Taken(None)  # reported once


def test_a_lost_connection_forgets_the_open_bar() -> None:
    proto, st = _binance_klines()
    proto.feed(_bn_kline(60_000, False), 1)
    assert st.open_bar is not None
    st.connection_lost(2)
    assert st.open_bar is None


def _agg(i: int) -> bytes:
    return orjson.dumps({"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": i,
                                                                 "p": "100.0", "q": "1.0", "f": i, "l": i,
                                                                 "T": 1000 + i, "m": False}})


@pytest.mark.parametrize("late", [False, True], ids=["store_first", "store_late"])
@pytest.mark.parametrize(("stored", "first_live", "gap"), [
    (100, 101, None),  # nothing missed
    (100, 106, (101, 105)),  # five trades while we were down: a gap of ids REST can fill
    (100, 90, "time"),  # ids went backwards (another id space, a replay): a window of time
    (100, 100 + 10_000_000, "time"),  # no venue trades that much in an hour: a window of time
    (None, 101, "time"),  # the stored trades end before the retention horizon
])
def test_a_restart_resumes_from_the_newest_stored_trade(stored: int | None, first_live: int,
                                                        gap: tuple[int, int] | str | None, late: bool) -> None:
    # The store may answer before the first live trade or after it: the window is the same.
    plan = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), "wss://x")[0]
    st = plan.protocol.streams["btcusdt@aggTrade"]
    assert isinstance(st, TradeStream)
    name = "btcusdt@aggTrade"
    first_ts = (1000 + first_live) * MS
    expected: tuple[Event, ...] = ()
    missing = gap[1] - gap[0] + 1 if isinstance(gap, tuple) else 0
    if gap == "time":
        expected = (RecoverTrades(name, Gap(999 * MS, first_ts, "restart")),)  # no ids: a window of time
    elif isinstance(gap, tuple):
        expected = (RecoverTrades(name, Gap(999 * MS, first_ts, "missing_ids", missing, *gap)),)
    if late:
        assert plan.protocol.feed(_agg(first_live), 0) == ()
        assert plan.protocol.feed(_agg(first_live + 1), 0) == ()
        assert st.resume(999 * MS, stored) == expected
    else:
        assert st.resume(999 * MS, stored) == ()
        assert plan.protocol.feed(_agg(first_live), 0) == expected
        assert plan.protocol.feed(_agg(first_live + 1), 0) == ()
    assert st.missing_ids == missing
    assert st.pending == 2 and st.duplicates == 0  # live trades are never dropped
    assert plan.protocol.feed(_agg(first_live + 2), 0) == () and st.take().actions == ()  # said once


@pytest.mark.parametrize("late", [False, True], ids=["store_first", "store_late"])
def test_a_bybit_restart_does_not_store_the_stored_trades_again(late: bool) -> None:
    plan = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://x")[0]
    proto = plan.protocol
    assert isinstance(proto, BybitProtocol)
    topic = "publicTrade.BTCUSDT"
    st = proto.streams[topic]
    assert isinstance(st, TradeStream)
    frame = orjson.dumps({"topic": topic, "type": "snapshot", "ts": 1,
                          "data": [{"T": 1005, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "100", "i": "d"}]})
    window = (RecoverTrades(topic, Gap(1000 * MS, 1005 * MS, "restart")),)  # stored end .. first live trade
    if late:
        assert proto.feed(frame, 0) == ()
        assert st.resume(1000 * MS, "b") == window
    else:
        assert st.resume(1000 * MS, "b") == ()
        assert proto.feed(frame, 0) == window
    st.remember(["a", "b"])  # the newest stored batch
    assert proto.feed(frame, 1) == () and st.duplicates == 1
    rest = [bybit.RestTrade(1000, "Buy", 1.0, 100.0, "b"), bybit.RestTrade(1000, "Sell", 1.0, 100.0, "c"),
            bybit.RestTrade(1005, "Buy", 1.0, 100.0, "d")]
    assert [t.i for t in st.accept_backfill(rest, 1000 * MS, 1005 * MS)] == ["c"]


@pytest.mark.parametrize("late", [pytest.param(False, id="store_first"), pytest.param(True, id="store_late")])
def test_a_bybit_restart_with_nothing_missed_asks_for_nothing(late: bool) -> None:
    # The first live trade is not newer than the stored ones (a quick restart): no window either way.
    proto = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://x")[0].protocol
    st = proto.streams["publicTrade.BTCUSDT"]
    assert isinstance(st, TradeStream)
    frame = orjson.dumps({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1,
                          "data": [{"T": 1005, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "100", "i": "d"}]})
    events = [*proto.feed(frame, 0), *st.resume(1005 * MS, "d")] if late else [*st.resume(1005 * MS, "d"),
                                                                                 *proto.feed(frame, 0)]
    assert events == []


# ---- klines after a restart -------------------------------------------------------------------


@pytest.mark.parametrize("late", [False, True], ids=["store_first", "store_late"])
@pytest.mark.parametrize(("stored", "missed"), [
    (T0, (T0 + MIN, T0 + 2 * MIN)),  # two bars closed while WADM was down
    (T0 + 2 * MIN, None),  # the newest stored bar is the one before the first live one
    (T0 + 4 * MIN, None),  # the store is ahead of the first live bar (nothing to fetch)
])
def test_a_kline_restart_fetches_the_bars_in_between(stored: int, missed: tuple[int, int] | None,
                                                     late: bool) -> None:
    proto, st = _binance_klines()
    expected = () if missed is None else (FetchKlines("btcusdt@kline_1m", *missed),)
    if late:
        assert proto.feed(_bn_kline(T0 + 3 * MIN, False), 1) == ()
        resumed = st.resume(stored)
        assert (() if resumed is None else (resumed,)) == expected
    else:
        assert st.resume(stored) is None
        assert proto.feed(_bn_kline(T0 + 3 * MIN, False), 1) == expected
    # From here on the stream goes on as usual: the next bar misses nothing, asks for nothing twice.
    assert proto.feed(_bn_kline(T0 + 3 * MIN, True), 2) == ()
    assert proto.feed(_bn_kline(T0 + 4 * MIN, False), 3) == ()
    if stored < T0 + 3 * MIN:
        frame = st.take().frame
        assert frame is not None and frame["ts_event"].to_list() == [(T0 + 3 * MIN) * MS]


# ---- make-before-break hand-over ----------------------------------------------------------------


def test_a_binance_book_holds_the_taking_over_connection_until_promoted() -> None:
    proto, st = _binance_book(Market.SPOT)
    name = "btcusdt@depth@100ms"
    proto.feed(_diff(1, 1), 0)
    st.on_snapshot(1, BIDS5, ASKS5, 1000, 1)
    # The new connection runs ahead (2, 3); it must not move the book before the old one's 2 arrives.
    assert proto.feed_standby(_diff(2, 2, [(99.5, 1.0)]), 2) == ()
    assert proto.feed_standby(_diff(3, 3, [(99.6, 1.0)]), 3) == ()
    assert proto.feed_standby(_diff(9, 9), 4) == ()  # ... and then lost some: held like the rest
    assert st.book.update_id == 1 and st.updates == 1
    assert proto.feed(_diff(2, 2, [(99.5, 1.0)]), 5) == ()
    duplicates = _bn(st).duplicates
    assert proto.promote() == [FetchSnapshot(name, "gap")]  # 2 is a duplicate, 3 continues, 9 breaks
    assert _bn(st).duplicates == duplicates + 1 and st.updates == 5
    assert _state(st) is BookState.RESYNCING and st.sync.resyncs == {"gap": 1}
    assert proto.promote() == []
    # The replayed frames kept their receive times: the book broke at 4, not at promotion.
    assert st.on_snapshot(9, BIDS5, ASKS5, 1000, 6) == (RecordGap(name, Gap(4, 6, "book_gap")),)


def test_a_failed_takeover_leaves_the_book_alone() -> None:
    proto, st = _binance_book(Market.SPOT)
    proto.feed(_diff(1, 1), 0)
    st.on_snapshot(1, BIDS5, ASKS5, 1000, 1)
    proto.feed_standby(_diff(5, 5), 2)  # a gap, had it been applied
    proto.discard_standby()
    assert proto.promote() == [] and _state(st) is BookState.LIVE and st.book.update_id == 1
    assert proto.feed(_diff(2, 2), 3) == () and st.book.update_id == 2


def test_a_bybit_book_replays_the_held_snapshot() -> None:
    proto, st = _bybit_book()
    proto.feed(BYBIT_SNAPSHOT, 1)
    st.connection_lost(2)
    # The new connection's subscription brought a snapshot: held, then replayed with its gap.
    assert proto.feed_standby(_bybit_msg("snapshot", 15078000, [["65001", "2"]], [["65002", "3"]]), 3) == ()
    assert _state(st) is BookState.RESYNCING
    assert proto.promote() == [RecordGap(TOPIC, Gap(2, 3, "book_disconnected"))]
    assert _state(st) is BookState.LIVE and st.book.update_id == 15078000


def _by_kline(start: int, confirm: bool) -> bytes:
    candle = {"start": start, "end": start + MIN - 1, "interval": "1", "open": "1922.48", "close": "1922.48",
              "high": "1922.48", "low": "1922.48", "volume": "0", "turnover": "0", "confirm": confirm,
              "timestamp": start + 5}
    return orjson.dumps({"topic": "kline.1.ETHUSDT", "data": [candle], "ts": start + 5, "type": "snapshot"})


def test_kline_protocols_take_a_taking_over_connection_at_once() -> None:
    # Closed bars are de-duplicated by open time: nothing is held, what a frame shows comes back at once.
    proto, st = _binance_klines()
    proto.feed(_bn_kline(T0, True), 1)
    assert proto.feed_standby(_bn_kline(T0 + 2 * MIN, False), 2) == (FetchKlines("btcusdt@kline_1m", T0 + MIN,
                                                                                   T0 + MIN),)
    assert st.open_bar == _bn_row(T0 + 2 * MIN, 2)
    proto.discard_standby()  # nothing was held: nothing to forget
    assert proto.promote() == [] and st.open_bar is not None
    by = bybit.plan_kline_connections(Market.LINEAR, ("ETHUSDT",), "wss://stream.bybit.com")[0].protocol
    assert isinstance(by, BybitKlineProtocol)
    t0 = 1786310760000
    by.feed(_by_kline(t0, True), 1)
    assert by.feed_standby(_by_kline(t0 + 3 * MIN, False), 2) == (FetchKlines("kline.1.ETHUSDT", t0 + MIN,
                                                                                t0 + 2 * MIN),)
    assert by.streams["kline.1.ETHUSDT"].pending == 1 and by.promote() == []
