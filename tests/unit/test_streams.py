"""Book and kline streams: Binance and Bybit protocols fed bytes, REST decoders, snapshot weights."""

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
from wadm.venues.base import Gap, SendFrames, StreamSpec, TradeStream
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
            assert st.on_snapshot(snap.lastUpdateId, snap.bids, snap.asks, 1000, ts) is True
            assert _state(st) is BookState.LIVE and not st.sync.snapshot_requested
        elif b'"depthUpdate"' in frame:
            assert proto.feed(frame, ts) is None
            diffs.append(orjson.loads(frame)["data"])
            last_ts = ts
    assert snapshot is not None and len(diffs) > 3000
    assert _state(st) is BookState.LIVE and not st.sync.resyncs and _bn(st).buffer_overflows == 0
    assert st.take_gaps() == []  # the first sync at startup is not a gap
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
    assert proto.feed(_diff(101, 105, [(100.0, 1.25)], [(101.0, 0.0)]), 1) is None
    assert proto.feed(_diff(106, 110, [(99.5, 7.0)], [(102.0, 9.0)]), 2) is None
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested and len(_bn(st).buffer) == 2
    assert st.book.bids == {} and st.levels(5) == ([], [])

    # A snapshot older than the buffer is refused and asked for again; the buffer stays.
    assert st.on_snapshot(90, BIDS5, ASKS5, 1000, 3) is False
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested and len(_bn(st).buffer) == 2

    # lastUpdateId 103 lies inside the first diff's [U; u]: the buffer is bridged.
    assert st.on_snapshot(103, BIDS5, ASKS5, 1000, 4) is True
    assert _state(st) is BookState.LIVE and not st.sync.snapshot_requested and not _bn(st).buffer
    expected_bids = dict(BIDS5) | {100.0: 1.25, 99.5: 7.0}
    expected_asks = {p: q for p, q in ASKS5 if p != 101.0} | {102.0: 9.0}
    assert st.book.bids == expected_bids and st.book.asks == expected_asks and st.book.update_id == 110
    assert st.take_gaps() == []
    epoch = st.sync.epoch

    # U jumps past u + 1: updates were lost.
    proto.feed(_diff(120, 125, [(95.0, 1.0)]), 10)
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested
    assert st.sync.resyncs["gap"] == 1 and st.sync.epoch == epoch + 1
    assert st.book.bids == {} and st.sample(11) is False and st.take_gaps() == []
    assert st.on_snapshot(122, BIDS5, ASKS5, 1000, 20) is True
    assert _state(st) is BookState.LIVE and st.book.bids == dict(BIDS5) | {95.0: 1.0} and st.book.update_id == 125
    assert st.take_gaps() == [Gap(10, 20, "book_gap")]
    assert st.take_gaps() == []

    # Diffs in flight are lost with the connection.
    epoch = st.sync.epoch
    st.connection_lost(30)
    assert _state(st) is BookState.RESYNCING and not st.sync.snapshot_requested
    assert st.sync.epoch == epoch + 1 and st.book.bids == {} and not _bn(st).buffer
    proto.feed(_diff(200, 204), 31)
    assert st.sync.snapshot_requested
    assert st.on_snapshot(201, BIDS5, ASKS5, 1000, 40) is True
    assert st.take_gaps() == [Gap(30, 40, "book_disconnected")]
    assert st.sync.resyncs == {"gap": 1, "disconnected": 1} and st.snapshots == 3


def test_binance_usdm_book_follows_the_pu_chain() -> None:
    proto, st = _binance_book(Market.USDM)
    proto.feed(_diff(100, 110, [(100.0, 2.0)], pu=95), 1)
    proto.feed(_diff(115, 120, [(99.0, 0.0)], pu=110), 2)  # U > prev u + 1 is normal on USD-M
    assert st.on_snapshot(105, BIDS5, ASKS5, 1000, 3) is True  # U <= lastUpdateId <= u
    assert st.book.bids == {p: q for p, q in BIDS5 if p != 99.0} | {100.0: 2.0}
    proto.feed(_diff(115, 120, [(50.0, 1.0)], pu=110), 4)  # the same event from an overlapping connection
    assert _state(st) is BookState.LIVE and st.sync.duplicates == 1 and 50.0 not in st.book.bids
    proto.feed(_diff(130, 140, pu=125), 5)  # pu is not the previous u
    assert _state(st) is BookState.RESYNCING and st.sync.snapshot_requested and st.sync.last_reason == "gap"


def test_crossed_book_resyncs_and_is_recorded() -> None:
    proto, st = _binance_book(Market.SPOT)
    proto.feed(_diff(11, 12), 1)
    st.on_snapshot(11, BIDS5, ASKS5, 1000, 2)
    proto.feed(_diff(13, 14, [(101.5, 1.0)]), 3)  # bid above the best ask
    assert _state(st) is BookState.RESYNCING and st.sync.resyncs["crossed"] == 1
    proto.feed(_diff(15, 16), 4)
    st.on_snapshot(15, BIDS5, ASKS5, 1000, 5)
    assert st.take_gaps() == [Gap(3, 5, "book_crossed")]


# ---- trusted bounds -------------------------------------------------------------------------


def test_full_snapshot_bounds_what_is_served() -> None:
    proto, st = _binance_book(Market.SPOT)
    proto.feed(_diff(1, 1), 0)
    assert st.on_snapshot(1, BIDS5, ASKS5, 5, 1) is True
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
    assert st.sample(1) is False and st.take() is None
    proto.feed(_diff(7, 8, event_ms=1_700_000_000_123), 50)
    st.on_snapshot(7, BIDS5, ASKS5, 1000, 60)
    assert st.sample(1_000) is True and st.sample(2_000) is True and st.pending == 2
    st.connection_lost(2_500)
    assert st.sample(3_000) is False and st.pending == 2
    frame = st.take()
    assert frame is not None and st.take() is None and st.pending == 0
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
    assert proto.feed(BYBIT_SNAPSHOT, 1) is None
    assert proto.feed(BYBIT_DELTA, 2) is None
    assert _state(st) is BookState.LIVE and st.book.update_id == 15076953
    assert st.book.bids == BYBIT_BIDS and st.book.asks == BYBIT_ASKS
    assert (st.ts_update, st.ts_recv, st.updates, st.snapshots) == (1786310818130 * MS, 2, 2, 1)
    assert proto.feed(BYBIT_DELTA, 3) is None  # a repeated u is a duplicate, not a gap
    assert _state(st) is BookState.LIVE and st.sync.duplicates == 1
    assert st.take_gaps() == []  # the first snapshot is not a gap
    bids, asks = st.levels(2)
    assert bids == [(65114.2, 6.054), (65114.1, 0.002)] and asks == [(65114.3, 10.486), (65115.4, 0.002)]


def test_bybit_u_jump_resubscribes_and_a_new_snapshot_restores() -> None:
    proto, st = _bybit_book()
    proto.feed(BYBIT_SNAPSHOT, 1)
    event = proto.feed(_bybit_msg("delta", 15076960, [["65000", "1"]], []), 5)
    assert isinstance(event, SendFrames) and event.reason == "gap"
    requests = [orjson.loads(f) for f in event.frames]
    assert [(r["op"], r["args"]) for r in requests] == [("unsubscribe", [TOPIC]), ("subscribe", [TOPIC])]
    assert _state(st) is BookState.RESYNCING and st.book.bids == {} and st.resubscribes == 1
    # Deltas before the fresh snapshot are ignored, without another resubscription.
    assert proto.feed(_bybit_msg("delta", 15076961, [["65000", "1"]], []), 6) is None
    assert _state(st) is BookState.RESYNCING and st.resubscribes == 1
    assert proto.feed(_bybit_msg("snapshot", 15077000, [["65001", "2"]], [["65002", "3"]]), 9) is None
    assert _state(st) is BookState.LIVE and st.book.bids == {65001.0: 2.0} and st.book.asks == {65002.0: 3.0}
    assert st.take_gaps() == [Gap(5, 9, "book_gap")]
    st.connection_lost(20)
    assert _state(st) is BookState.RESYNCING and st.book.asks == {}
    proto.feed(_bybit_msg("snapshot", 15078000, [["65001", "2"]], [["65002", "3"]]), 25)
    assert st.take_gaps() == [Gap(20, 25, "book_disconnected")]


def test_bybit_u_equal_one_resets_the_book() -> None:
    proto, st = _bybit_book(Market.SPOT)
    proto.feed(BYBIT_SNAPSHOT, 1)
    # A service restart: a "delta" with u == 1 carries a whole book (spot: ts before type, no trailing zeros).
    restart = (b'{"topic":"orderbook.200.BTCUSDT","ts":1786310900000,"type":"delta","data":{"s":"BTCUSDT",'
               b'"b":[["65140","0.014"]],"a":[["65141","0.5"]],"u":1,"seq":1}}')
    assert proto.feed(restart, 2) is None
    assert _state(st) is BookState.LIVE and st.book.update_id == 1
    assert st.book.bids == {65140.0: 0.014} and st.book.asks == {65141.0: 0.5}
    assert st.snapshots == 2 and _by(st).resets == 1 and st.take_gaps() == []
    assert proto.feed(_bybit_msg("delta", 2, [["65139", "1"]], []), 3) is None
    assert st.book.bids == {65140.0: 0.014, 65139.0: 1.0}


def test_live_book_with_an_empty_side_can_be_stored() -> None:
    proto, st = _bybit_book()
    proto.feed(_bybit_msg("snapshot", 5, [["100", "1"]], []), 1)  # e.g. a thin market, or after a delisting
    assert _state(st) is BookState.LIVE
    assert st.sample(10) is True
    frame = st.take()
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
    assert proto.feed(_bn_kline(T0, False, "61795.00"), 1) is None
    assert st.open_bar == _bn_row(T0, 1, 61795.0) and st.rows == [] and st.take() is None
    proto.feed(_bn_kline(T0, False, "61799.00"), 2)
    assert st.open_bar == _bn_row(T0, 2, 61799.0)
    proto.feed(_bn_kline(T0, True), 3)
    assert st.rows == [_bn_row(T0, 3)] and st.open_bar is None
    proto.feed(_bn_kline(T0, True), 4)  # repeated (e.g. an overlapping connection): stored once
    assert st.pending == 1 and st.missing == []
    # The next bar starts two minutes later: the bar at T0 + 1 min closed unseen.
    proto.feed(_bn_kline(T0 + 2 * MIN, False), 5)
    assert st.missing == [(T0 + MIN, T0 + MIN)] and st.open_bar == _bn_row(T0 + 2 * MIN, 5)
    assert st.bars == 5

    # REST answer around the range: only the missing bar is kept.
    rest = orjson.dumps([[t, "61790.10", "61850.00", "61780.00", "61800.00", "12.5", t + MIN - 1, "772500.5", 340,
                          "7.25", "448000.25", "0"] for t in (T0, T0 + MIN, T0 + 2 * MIN)])
    assert st.add_backfill(binance.decode_klines(rest, 6), T0 + MIN, T0 + MIN) == 1 and st.backfilled == 1
    frame = st.take()
    assert frame is not None and st.take() is None
    assert frame.schema == pl.Schema(KLINE_SCHEMA)
    assert frame.rows() == [_bn_row(T0, 3), _bn_row(T0 + MIN, 6)]


def test_kline_gap_of_several_bars_and_stale_open_bar() -> None:
    proto, st = _binance_klines()
    proto.feed(_bn_kline(T0, False), 1)
    st.connection_lost(2)
    proto.feed(_bn_kline(T0 + 3 * MIN, False), 3)  # T0 .. T0 + 2 min closed while we were away
    assert st.missing == [(T0, T0 + 2 * MIN)] and st.open_bar is not None and st.open_bar[0] == (T0 + 3 * MIN) * MS
    proto.feed(_bn_kline(T0 + 2 * MIN, True), 4)  # a late bar already handed to backfill is not stored again
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
    assert proto.feed(BYBIT_KLINE, 7) is None
    assert st.bars == 1 and st.missing == []
    assert st.open_bar == (1786310820000 * MS, 7, 1922.48, 1922.48, 1922.48, 1922.48, 0.0, 0.0, None, None, None)
    proto.feed(BYBIT_KLINE, 8)  # pushed again: the closed candle is not stored twice
    frame = st.take()
    assert frame is not None and frame.schema == pl.Schema(KLINE_SCHEMA)
    assert frame.rows() == [(1786310760000 * MS, 7, 1922.43, 1922.48, 1922.42, 1922.48, 15.7, 30182.0724,
                             None, None, None)]
    assert frame["trades"].null_count() == frame["taker_buy_volume"].null_count() == 1


# ---- REST decoders --------------------------------------------------------------------------


def test_binance_rest_snapshot_and_agg_trades() -> None:
    snap = binance.decode_snapshot(b'{"lastUpdateId":5123107852948,"E":1723161256501,"T":1723161256493,'
                                   b'"bids":[["61800.20","2.909"],["61800.10","0.696"]],"asks":[["61800.30","3.330"]]}')
    assert snap.lastUpdateId == 5123107852948
    assert snap.bids == [(61800.2, 2.909), (61800.1, 0.696)] and snap.asks == [(61800.3, 3.33)]
    trades = binance.decode_agg_trades(
        b'[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true},'
        b'{"a":26130,"p":"0.01633200","q":"1.00000000","f":27782,"l":27783,"T":1498793709160,"m":false,"M":true}]')
    assert [(t.id, t.p, t.q, t.T, t.m) for t in trades] == [(26129, 0.01633102, 4.70443515, 1498793709153, True),
                                                            (26130, 0.016332, 1.0, 1498793709160, False)]
    frame = binance.trades_to_frame(trades, [1, 2])
    assert frame["side"].to_list() == [-1, 1] and frame["id"].to_list() == [26129, 26130]
    for bad, decode in ((b'{"bids":[]}', binance.decode_snapshot), (b'{"code":-1121}', binance.decode_agg_trades),
                        (b"[[1,2]]", lambda b: binance.decode_klines(b, 0))):
        with pytest.raises(VenueProtocolError) as info:
            decode(bad)
        assert info.value.kind == "invalid_rest_answer"


def test_binance_rest_klines() -> None:
    payload = (b'[[1723161240000,"61790.10","61850.00","61780.00","61800.00","12.50000000",1723161299999,'
               b'"772500.50000000",340,"7.25000000","448000.25000000","0"]]')
    assert binance.decode_klines(payload, 9) == [_bn_row(T0, 9)]


def _trade(exec_id: str, t: int, side: str = "Buy", price: str = "65000.1") -> dict[str, Any]:
    return {"execId": exec_id, "symbol": "BTCUSDT", "price": price, "size": "0.01", "side": side, "time": str(t),
            "isBlockTrade": False}


def _answer(rows: list[Any], code: int = 0, category: str = "linear") -> bytes:
    return orjson.dumps({"retCode": code, "retMsg": "OK", "result": {"category": category, "list": rows},
                         "retExtInfo": {}, "time": 1786310820000})


def test_bybit_recent_trades_oldest_first() -> None:
    wire = [_trade("c", 1786310819682, "Sell", "65000.3"), _trade("b", 1786310819681), _trade("a", 1786310819680)]
    trades = bybit.decode_recent_trades(_answer(wire))
    assert [(t.i, t.T, t.S, t.p, t.v) for t in trades] == [("a", 1786310819680, "Buy", 65000.1, 0.01),
                                                           ("b", 1786310819681, "Buy", 65000.1, 0.01),
                                                           ("c", 1786310819682, "Sell", 65000.3, 0.01)]
    assert bybit.trades_to_frame(trades, [0, 0, 0])["side"].to_list() == [1, 1, -1]
    with pytest.raises(VenueProtocolError) as info:
        bybit.decode_recent_trades(b'{"retCode":10001,"retMsg":"params error","time":1}')
    assert info.value.kind == "venue_error" and "params error" in str(info.value)
    with pytest.raises(VenueProtocolError) as info:
        bybit.decode_recent_trades(b'{"retCode":0,"retMsg":"OK","result":{"list":[{"execId":"a"}]}}')
    assert info.value.kind == "invalid_rest_answer"


def test_bybit_recent_trades_in_one_millisecond_come_oldest_first() -> None:
    # Spot ids grow with time; one taker order filled three makers in one millisecond.
    wire = [_trade("2280000001739247419", 1786310821917), _trade("2280000001739247418", 1786310821917),
            _trade("2280000001739247417", 1786310821917), _trade("2280000001739247416", 1786310821916)]
    trades = bybit.decode_recent_trades(_answer(wire, category="spot"))
    assert [t.i[-2:] for t in trades] == ["16", "17", "18", "19"]


def test_bybit_error_answer_with_empty_result_is_a_venue_error() -> None:
    with pytest.raises(VenueProtocolError) as info:
        bybit.decode_recent_trades(b'{"retCode":10001,"retMsg":"Not supported symbols","result":{},'
                                   b'"retExtInfo":{},"time":1726147060461}')
    assert info.value.kind == "venue_error" and "Not supported symbols" in str(info.value)


def test_bybit_rest_klines_oldest_first() -> None:
    wire = [[str(T0 + 2 * MIN), "3", "4", "2", "3.5", "10", "35"], [str(T0 + MIN), "2", "3", "1", "3", "20", "50"],
            [str(T0), "1", "2", "0.5", "2", "30", "45.5"]]
    rows = bybit.decode_klines(_answer(wire), 4)
    assert rows == [(T0 * MS, 4, 1.0, 2.0, 0.5, 2.0, 30.0, 45.5, None, None, None),
                    ((T0 + MIN) * MS, 4, 2.0, 3.0, 1.0, 3.0, 20.0, 50.0, None, None, None),
                    ((T0 + 2 * MIN) * MS, 4, 3.0, 4.0, 2.0, 3.5, 10.0, 35.0, None, None, None)]
    st = KlineStream(Venue.BYBIT, Market.LINEAR, StreamSpec("kline.1.BTCUSDT", "klines", "BTCUSDT"))
    assert st.add_backfill(rows, T0, T0 + MIN) == 2  # the newest may still be open: outside the range
    frame = st.take()
    assert frame is not None and frame["ts_event"].to_list() == [T0 * MS, (T0 + MIN) * MS]


def test_bybit_accept_backfill_keeps_only_undelivered_trades_in_the_window() -> None:
    proto = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://stream.bybit.com")[0].protocol
    assert isinstance(proto, BybitProtocol)
    topic = "publicTrade.BTCUSDT"
    live = [{"T": t, "s": "BTCUSDT", "S": "Buy", "v": "0.01", "p": "65000.1", "i": i, "BT": False}
            for i, t in (("b", 1_000), ("e", 5_000))]
    proto.feed(orjson.dumps({"topic": topic, "type": "snapshot", "ts": 1, "data": live}), 1)
    wire = [_trade(i, t) for i, t in (("f", 6_000), ("e", 5_000), ("d", 4_000), ("c", 2_000), ("b", 1_000),
                                      ("a", 500))]
    rest = bybit.decode_recent_trades(_answer(wire))
    start, end = 1_000 * MS, 5_000 * MS  # [start, end): the last trade before the window, the first after
    assert [t.i for t in proto.accept_backfill(topic, rest, start, end)] == ["c", "d"]
    assert proto.accept_backfill(topic, rest, start, end) == []  # now delivered


# ---- plans and weights ----------------------------------------------------------------------


@pytest.mark.parametrize(("market", "limit", "weight"), [
    (Market.SPOT, 100, 5), (Market.SPOT, 500, 25), (Market.SPOT, 1000, 50), (Market.SPOT, 5000, 250),
    (Market.USDM, 1000, 20), (Market.USDM, 500, 10), (Market.USDM, 100, 5), (Market.USDM, 50, 2),
])
def test_snapshot_weight(market: Market, limit: int, weight: int) -> None:
    assert binance.snapshot_weight(market, limit) == weight


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


@pytest.mark.parametrize(("market", "depth", "limit"), [
    (Market.SPOT, 1000, 1000), (Market.SPOT, 200, 200), (Market.SPOT, 5000, 5000),
    (Market.USDM, 1000, 1000), (Market.USDM, 200, 100), (Market.USDM, 5000, 1000), (Market.USDM, 3, 5),
])
def test_snapshot_limit_is_one_the_venue_accepts(market: Market, depth: int, limit: int) -> None:
    assert binance.snapshot_limit(market, depth) == limit


# ---- moving the trusted bounds ----------------------------------------------------------------


def test_a_book_walking_to_its_bound_is_reseeded_beside_the_live_one() -> None:
    proto, st = _binance_book(Market.SPOT, snapshot_depth=3)
    proto.feed(_diff(1, 1), 0)
    assert st.on_snapshot(1, BIDS5, ASKS5, 5, 1)
    assert st.sample(10) and not st.short and not st.wants_refresh(10)
    # The price falls: the three best bids are taken out; two trusted bids remain (fewer than 3).
    proto.feed(_diff(2, 2, [(100.0, 0.0), (99.0, 0.0), (98.0, 0.0)], [(99.5, 1.0)]), 2)
    assert st.sample(20) and st.short and st.wants_refresh(20)
    shadow = st.start_refresh(20)
    assert not st.wants_refresh(21)  # one refresh at a time, and at most one a minute
    proto.feed(_diff(3, 3, [(95.0, 2.0)]), 3)  # beyond the old floor: not served yet
    assert shadow.snapshot_requested and _state(st) is BookState.LIVE
    assert st.levels(5)[0] == [(97.0, 4.0), (96.0, 5.0)]
    # A fresh snapshot of the same depth, centred on the new price, bridges the buffered diff.
    fresh_bids = [(97.0, 4.0), (96.0, 5.0), (95.0, 2.0), (94.0, 1.0), (93.0, 1.0)]
    fresh_asks = [(99.5, 1.0), (101.0, 1.5), (102.0, 2.5), (103.0, 3.5), (104.0, 4.5)]
    assert st.on_refresh_snapshot(3, fresh_bids, fresh_asks, 5)
    assert st.shadow is None and st.refreshes == 1
    assert (st.bid_floor, st.ask_ceiling) == (93.0, 104.0)
    assert st.levels(5) == (fresh_bids, fresh_asks)
    assert _bn(st).resyncs == {} and st.take_gaps() == []  # live throughout: no resync, no gap


def test_a_refresh_is_dropped_when_the_book_breaks() -> None:
    proto, st = _binance_book(Market.SPOT, snapshot_depth=3)
    proto.feed(_diff(1, 1), 0)
    st.on_snapshot(1, BIDS5, ASKS5, 5, 1)
    st.start_refresh(2)
    proto.feed(_diff(2, 2), 2)
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
    frame_cut = st.take()
    assert frame_cut is not None and frame_cut["id"].to_list() == [1, 2, 3]
    assert st.take_gaps() == [Gap(1004 * MS, 1007 * MS, "buffer_full", 4, 4, 7)]  # ids 4-7: backfillable


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


@pytest.mark.parametrize(("stored", "first_live", "gap"), [
    (100, 101, None),  # nothing missed
    (100, 106, (101, 105)),  # five trades while we were down: a gap of ids REST can fill
    (100, 90, "time"),  # ids went backwards (another id space, a replay): a window of time
    (100, 100 + 10_000_000, "time"),  # no venue trades that much in an hour: a window of time
    (None, 101, "time"),  # the stored trades end before the retention horizon
])
def test_a_restart_resumes_from_the_newest_stored_trade(stored: int | None, first_live: int,
                                                        gap: tuple[int, int] | str | None) -> None:
    plan = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), "wss://x")[0]
    st = plan.protocol.streams["btcusdt@aggTrade"]
    assert isinstance(st, TradeStream)
    st.resume(999 * MS, stored)
    plan.protocol.feed(_agg(first_live), 0)
    plan.protocol.feed(_agg(first_live + 1), 0)
    got = st.take_gaps()
    if gap is None:
        assert got == []
    elif gap == "time":
        assert got == [Gap(999 * MS, (1000 + first_live) * MS, "restart")]  # recorded, not backfilled
    else:
        assert [(g.first_id, g.last_id, g.reason) for g in got] == [(*gap, "missing_ids")]
    assert st.pending == 2 and st.duplicates == 0  # live trades are never dropped


def test_a_bybit_restart_does_not_store_the_stored_trades_again() -> None:
    plan = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://x")[0]
    proto = plan.protocol
    assert isinstance(proto, BybitProtocol)
    st = proto.streams["publicTrade.BTCUSDT"]
    assert isinstance(st, TradeStream)
    st.resume(1000 * MS, "b")
    proto.remember("publicTrade.BTCUSDT", ["a", "b"])  # the newest stored batch
    frame = {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1,
             "data": [{"T": 1005, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "100", "i": "d"}]}
    proto.feed(orjson.dumps(frame), 0)
    assert st.take_gaps() == [Gap(1000 * MS, 1005 * MS, "restart")]
    rest = [bybit.RestTrade(1000, "Buy", 1.0, 100.0, "b"), bybit.RestTrade(1000, "Sell", 1.0, 100.0, "c"),
            bybit.RestTrade(1005, "Buy", 1.0, 100.0, "d")]
    assert [t.i for t in proto.accept_backfill("publicTrade.BTCUSDT", rest, 1000 * MS, 1005 * MS)] == ["c"]
