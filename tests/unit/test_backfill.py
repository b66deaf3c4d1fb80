"""Venue REST, sans-IO: request specs, decoders, and the jobs that page them (klines, aggTrades,
recent trades, listings), fed the venues' real JSON shapes and decoded with each request's own decoder."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from wadm.errors import VenueProtocolError
from wadm.records import Market, Venue
from wadm.venues import binance, bybit, listing_query, rest_limit
from wadm.venues.base import NOT_LISTED, Gap, RecoverTrades, RestRequest, StreamSpec, TradeStream
from wadm.venues.binance import AggTradeBackfill, BinanceListing
from wadm.venues.bybit import BybitListing, BybitProtocol, RecentTradeBackfill
from wadm.venues.streams import DepthSnapshot, KlineBackfill, KlineStream

MS = 1_000_000
T0 = 1_723_161_240_000  # a minute boundary, ms
MIN = 60_000


def _bn_row(t: int, ts_recv: int, close: float = 61800.0) -> tuple[object, ...]:
    return (t * MS, ts_recv, 61790.1, 61850.0, 61780.0, close, 12.5, 772500.5, 340, 7.25, 448000.25)


def _answer(rows: list[Any], code: int = 0, category: str = "linear") -> bytes:
    return orjson.dumps({"retCode": code, "retMsg": "OK", "result": {"category": category, "list": rows},
                         "retExtInfo": {}, "time": 1786310820000})


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
    frame = st.take().frame
    assert frame is not None and frame["ts_event"].to_list() == [T0 * MS, (T0 + MIN) * MS]


def test_bybit_accept_backfill_keeps_only_undelivered_trades_in_the_window() -> None:
    proto = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://stream.bybit.com")[0].protocol
    assert isinstance(proto, BybitProtocol)
    topic = "publicTrade.BTCUSDT"
    st = proto.streams[topic]
    live = [{"T": t, "s": "BTCUSDT", "S": "Buy", "v": "0.01", "p": "65000.1", "i": i, "BT": False}
            for i, t in (("b", 1_000), ("e", 5_000))]
    proto.feed(orjson.dumps({"topic": topic, "type": "snapshot", "ts": 1, "data": live}), 1)
    wire = [_trade(i, t) for i, t in (("f", 6_000), ("e", 5_000), ("d", 4_000), ("c", 2_000), ("b", 1_000),
                                      ("a", 500))]
    rest = bybit.decode_recent_trades(_answer(wire))
    start, end = 1_000 * MS, 5_000 * MS  # [start, end): the last trade before the window, the first after
    assert [t.i for t in st.accept_backfill(rest, start, end)] == ["c", "d"]
    assert st.accept_backfill(rest, start, end) == []  # now delivered




# ---- snapshot requests ---------------------------------------------------------------------


@pytest.mark.parametrize(("market", "limit", "weight"), [
    (Market.SPOT, 100, 5), (Market.SPOT, 500, 25), (Market.SPOT, 1000, 50), (Market.SPOT, 5000, 250),
    (Market.USDM, 1000, 20), (Market.USDM, 500, 10), (Market.USDM, 100, 5), (Market.USDM, 50, 2),
])
def test_snapshot_weight(market: Market, limit: int, weight: int) -> None:
    assert binance.snapshot_weight(market, limit) == weight


@pytest.mark.parametrize(("market", "depth", "limit"), [
    (Market.SPOT, 1000, 1000), (Market.SPOT, 200, 200), (Market.SPOT, 5000, 5000),
    (Market.USDM, 1000, 1000), (Market.USDM, 200, 100), (Market.USDM, 5000, 1000), (Market.USDM, 3, 5),
])
def test_snapshot_limit_is_one_the_venue_accepts(market: Market, depth: int, limit: int) -> None:
    assert binance.snapshot_limit(market, depth) == limit




def test_snapshot_request_asks_for_a_limit_the_venue_accepts_and_decodes_the_answer() -> None:
    req = binance.snapshot_request(Market.USDM, "BTCUSDT", 200)
    assert (req.path, dict(req.params), req.weight) == ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 100}, 5)
    spot = binance.snapshot_request(Market.SPOT, "BTCUSDT", 1000)
    assert (spot.path, dict(spot.params), spot.weight) == ("/api/v3/depth", {"symbol": "BTCUSDT", "limit": 1000}, 50)
    snap = req.decode(b'{"lastUpdateId":1027024,"E":1589436922972,"T":1589436922959,'
                      b'"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}')
    assert snap == DepthSnapshot(1027024, [(4.0, 431.0)], [(4.000002, 12.0)])
    plan = binance.plan_book_connections(Market.SPOT, ("BTCUSDT",), "wss://x", book_depth=500)[0]
    st = plan.protocol.streams["btcusdt@depth@100ms"]
    assert st.snapshot_request == binance.snapshot_request(Market.SPOT, "BTCUSDT", 500)  # type: ignore[attr-defined]
    assert st.snapshot_limit == 500  # type: ignore[attr-defined]


# ---- klines: KlineBackfill ----------------------------------------------------------------------


def _bn_klines(starts: list[int]) -> bytes:
    """``GET /api/v3/klines``: one array per bar (open time, OHLCV, close time, quote, trades, taker buy)."""
    return orjson.dumps([[t, "61790.10", "61850.00", "61780.00", "61800.00", "12.50000000", t + MIN - 1,
                          "772500.50000000", 340, "7.25000000", "448000.25000000", "0"] for t in starts])


def _kline_stream(venue: Venue = Venue.BINANCE) -> KlineStream:
    if venue is Venue.BINANCE:
        plan = binance.plan_kline_connections(Market.SPOT, ("BTCUSDT",), "wss://x")[0]
        st = plan.protocol.streams["btcusdt@kline_1m"]
    else:
        plan = bybit.plan_kline_connections(Market.LINEAR, ("BTCUSDT",), "wss://x")[0]
        st = plan.protocol.streams["kline.1.BTCUSDT"]
    assert isinstance(st, KlineStream)
    return st


def _answer_page(job: KlineBackfill, req: RestRequest[Any], skip: set[int], ts_recv: int) -> None:
    first, last = int(req.params["startTime"]), int(req.params["endTime"])
    # The venue answers from startTime on; the newest bar may still be open (past endTime).
    payload = _bn_klines([t for t in range(first, last + 2 * MIN, MIN) if t not in skip])
    assert job.on_answer(req.decode(payload), ts_recv) is None  # the bars wait in the stream's queue


def test_kline_backfill_pages_and_records_what_the_venue_did_not_have() -> None:
    st = _kline_stream()
    job = KlineBackfill(st, T0, T0 + 2499 * MIN)  # 2500 bars: pages of 1000, 1000, 500
    req = job.next_request()
    assert req is not None and (req.path, req.weight) == ("/api/v3/klines", 2)
    assert dict(req.params) == {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0, "endTime": T0 + 999 * MIN,
                                "limit": 1000}
    # Until the job is done, what it has not fetched yet is what missing() records (a deadline, shutdown).
    assert job.missing() == [Gap(T0 * MS, (T0 + 2500 * MIN) * MS, "klines_missing", 2500)]
    _answer_page(job, req, set(), 7)
    assert st.pending == 1000 and st.backfilled == 1000
    assert job.missing() == [Gap((T0 + 1000 * MIN) * MS, (T0 + 2500 * MIN) * MS, "klines_missing", 1500)]
    assert st.rows[0] == _bn_row(T0, 7) and st.rows[-1][0] == (T0 + 999 * MIN) * MS
    # The second page comes back three bars short (a trading halt): the page is a gap with the count.
    req = job.next_request()
    assert req is not None and (req.params["startTime"], req.params["endTime"]) == (T0 + 1000 * MIN,
                                                                                    T0 + 1999 * MIN)
    _answer_page(job, req, {T0 + 1500 * MIN, T0 + 1501 * MIN, T0 + 1502 * MIN}, 8)
    short = Gap((T0 + 1000 * MIN) * MS, (T0 + 2000 * MIN) * MS, "klines_missing", 3)
    assert st.backfilled == 1997
    # Interrupted here: the short page and the pages not fetched are missing.
    req = job.next_request()
    assert req is not None and (req.params["startTime"], req.params["endTime"]) == (T0 + 2000 * MIN,
                                                                                    T0 + 2499 * MIN)
    assert job.missing() == [short, Gap((T0 + 2000 * MIN) * MS, (T0 + 2500 * MIN) * MS, "klines_missing", 500)]
    _answer_page(job, req, set(), 9)
    assert job.next_request() is None and job.missing() == [short]
    frame = st.take().frame
    assert frame is not None and frame.height == 2497 and frame["ts_event"].is_sorted()
    assert frame["ts_event"][-1] == (T0 + 2499 * MIN) * MS  # the open bar past the range is not kept


def test_kline_backfill_of_one_bar_on_bybit() -> None:
    st = _kline_stream(Venue.BYBIT)
    job = KlineBackfill(st, T0 + MIN, T0 + MIN)
    req = job.next_request()
    assert req is not None and (req.path, req.weight) == ("/v5/market/kline", 1)
    assert dict(req.params) == {"category": "linear", "symbol": "BTCUSDT", "interval": "1", "start": T0 + MIN,
                                "end": T0 + MIN, "limit": 1000}
    wire = [[str(t), "2", "3", "1", "3", "20", "50"] for t in (T0 + 2 * MIN, T0 + MIN, T0)]  # newest first
    job.on_answer(req.decode(_answer(wire)), 4)
    assert job.next_request() is None and job.missing() == [] and st.backfilled == 1
    assert st.rows == [((T0 + MIN) * MS, 4, 2.0, 3.0, 1.0, 3.0, 20.0, 50.0, None, None, None)]


def test_a_kline_backfill_with_no_answer_is_all_missing() -> None:
    job = KlineBackfill(_kline_stream(), T0, T0 + 4 * MIN)
    assert job.missing() == [Gap(T0 * MS, (T0 + 5 * MIN) * MS, "klines_missing", 5)]
    req = job.next_request()
    assert req is not None
    job.on_answer(req.decode(b"[]"), 1)
    assert job.next_request() is None and job.missing() == [Gap(T0 * MS, (T0 + 5 * MIN) * MS, "klines_missing", 5)]


# ---- Binance aggTrades: AggTradeBackfill ---------------------------------------------------------

T_BASE = 1_723_161_000_000  # ms; aggregate trade ``i`` happened at T_BASE + i


def _t(i: int) -> int:
    return (T_BASE + i) * MS


def _agg_trades(ids: list[int]) -> bytes:
    """``GET /api/v3/aggTrades``: oldest first."""
    return orjson.dumps([{"a": i, "p": "61800.30", "q": "0.5", "f": 10 * i, "l": 10 * i + 2, "T": T_BASE + i,
                          "m": i % 2 == 0, "M": True} for i in ids])


def _agg_stream() -> TradeStream:
    st = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), "wss://x")[0].protocol.streams["btcusdt@aggTrade"]
    assert isinstance(st, TradeStream)
    return st


def _agg_job(st: TradeStream, gap: Gap) -> AggTradeBackfill:
    assert st.recover is not None
    job = st.recover(st, gap)
    assert isinstance(job, AggTradeBackfill)
    return job


def test_skipped_ids_are_recovered_page_by_page_and_the_venues_own_holes_stay_gaps() -> None:
    st = _agg_stream()
    gap = Gap(_t(100), _t(1601), "missing_ids", 1500, 101, 1600)
    job = _agg_job(st, gap)
    req = job.next_request()
    assert req is not None and (req.path, req.weight) == ("/api/v3/aggTrades", 4)
    assert dict(req.params) == {"symbol": "BTCUSDT", "fromId": 101, "limit": 1000}
    # A full page, except that the venue itself never had ids 501-503.
    page = [*range(101, 501), *range(504, 1104)]
    frame = job.on_answer(req.decode(_agg_trades(page)), 42)
    assert frame is not None and frame["id"].to_list() == page and frame["ts_recv"].unique().to_list() == [42]
    assert frame["side"].to_list()[:2] == [1, -1]  # m: True for even ids, the seller was the aggressor
    hole = Gap(_t(500), _t(504), "missing_ids", 3, 501, 503)
    assert job.missing() == [hole, Gap(_t(1103), _t(1601), "missing_ids", 497, 1104, 1600)]
    # The next page starts at the first id still missing; trades past the gap were delivered live.
    req = job.next_request()
    assert req is not None and req.params["fromId"] == 1104
    frame = job.on_answer(req.decode(_agg_trades(list(range(1104, 2104)))), 43)
    assert frame is not None and frame["id"].to_list() == list(range(1104, 1601))
    assert job.next_request() is None and job.missing() == [hole] and st.backfilled == 1497


def test_an_empty_answer_ends_the_job_with_the_rest_missing() -> None:
    st = _agg_stream()
    job = _agg_job(st, Gap(_t(100), _t(201), "buffer_full", 100, 101, 200))
    req = job.next_request()
    assert req is not None
    frame = job.on_answer(req.decode(_agg_trades(list(range(101, 151)))), 1)  # a short page
    assert frame is not None and frame.height == 50
    req = job.next_request()
    assert req is not None and req.params["fromId"] == 151
    assert job.on_answer(req.decode(b"[]"), 2) is None  # the venue has nothing more
    assert job.next_request() is None and st.backfilled == 50
    assert job.missing() == [Gap(_t(150), _t(201), "buffer_full", 50, 151, 200)]


def test_only_gaps_with_ids_are_backfilled_from_agg_trades() -> None:
    st = _agg_stream()
    assert st.recover is not None and st.recover(st, Gap(1, 2, "restart")) is None  # a window of time only
    trade = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), "wss://x", trade_stream="trade")[0]
    other = trade.protocol.streams["btcusdt@trade"]
    assert isinstance(other, TradeStream) and other.recover is None  # REST knows aggTrade ids only


# ---- Bybit recent trades: RecentTradeBackfill -----------------------------------------------------


def _live(i: str, t: int) -> dict[str, Any]:
    return {"T": t, "s": "BTCUSDT", "S": "Buy", "v": "0.01", "p": "65000.1", "i": i, "BT": False}


def _bybit_disconnect(market: Market = Market.LINEAR) -> tuple[TradeStream, Gap]:
    """A stream that saw trade "a" at 1000 ms, lost its connection, and saw "e" at 5000 ms."""
    proto = bybit.plan_trade_connections(market, ("BTCUSDT",), "wss://x")[0].protocol
    st = proto.streams["publicTrade.BTCUSDT"]
    assert isinstance(st, TradeStream)
    topic = "publicTrade.BTCUSDT"
    proto.feed(orjson.dumps({"topic": topic, "type": "snapshot", "ts": 1, "data": [_live("a", 1000)]}), 1)
    st.connection_lost(2)
    (action,) = proto.feed(orjson.dumps({"topic": topic, "type": "snapshot", "ts": 1, "data": [_live("e", 5000)]}), 3)
    assert isinstance(action, RecoverTrades) and action == RecoverTrades(topic, Gap(1000 * MS, 5000 * MS,
                                                                                     "disconnected"))
    return st, action.gap


def _recent_job(st: TradeStream, gap: Gap) -> RecentTradeBackfill:
    assert st.recover is not None
    job = st.recover(st, gap)
    assert isinstance(job, RecentTradeBackfill)
    return job


def test_recent_trades_reaching_back_past_the_window_recover_it_all() -> None:
    st, gap = _bybit_disconnect()
    job = _recent_job(st, gap)
    req = job.next_request()
    assert req is not None and (req.path, req.weight) == ("/v5/market/recent-trade", 1)
    assert dict(req.params) == {"category": "linear", "symbol": "BTCUSDT", "limit": 1000}
    assert job.next_request() is None  # one request: the venue has no cursor
    wire = [_trade(i, t) for i, t in (("f", 6000), ("e", 5000), ("d", 4000), ("c", 2000), ("a", 1000), ("z", 500))]
    frame = job.on_answer(req.decode(_answer(wire)), 9)
    assert frame is not None and frame["id"].to_list() == ["c", "d"] and frame["ts_recv"].to_list() == [9, 9]
    assert job.missing() == [] and st.backfilled == 2
    # Asked again over the same window: everything in it was delivered by now.
    again = _recent_job(st, gap)
    req = again.next_request()
    assert req is not None and again.on_answer(req.decode(_answer(wire)), 10) is None and st.backfilled == 2


def test_recent_trades_not_reaching_back_leave_the_start_of_the_window_missing() -> None:
    st, gap = _bybit_disconnect(Market.SPOT)
    job = _recent_job(st, gap)
    req = job.next_request()
    assert req is not None and req.params["limit"] == 60 and req.params["category"] == "spot"
    wire = [_trade(i, t) for i, t in (("f", 6000), ("e", 5000), ("d", 4000), ("c", 2000))]
    frame = job.on_answer(req.decode(_answer(wire, category="spot")), 9)
    assert frame is not None and frame["id"].to_list() == ["c", "d"]
    assert job.missing() == [Gap(1000 * MS, 2000 * MS, "disconnected")]  # before the oldest trade it returned


def test_recent_trades_skip_what_the_store_held_before_a_restart() -> None:
    proto = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://x")[0].protocol
    st = proto.streams["publicTrade.BTCUSDT"]
    assert isinstance(st, TradeStream)
    st.resume(1000 * MS, "b")
    st.remember(["a", "b"])  # the stored trades of the newest millisecond
    (action,) = proto.feed(orjson.dumps({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1,
                                         "data": [_live("e", 5000)]}), 1)
    assert isinstance(action, RecoverTrades) and action.gap == Gap(1000 * MS, 5000 * MS, "restart")
    job = _recent_job(st, action.gap)
    req = job.next_request()
    assert req is not None
    wire = [_trade(i, t) for i, t in (("e", 5000), ("c", 1000), ("b", 1000), ("a", 900))]
    frame = job.on_answer(req.decode(_answer(wire)), 2)
    assert frame is not None and frame["id"].to_list() == ["c"] and job.missing() == []


def test_only_disconnects_and_restarts_are_recovered_from_recent_trades() -> None:
    st, _ = _bybit_disconnect()
    assert st.recover is not None and st.recover(st, Gap(1, 2, "buffer_full", 3)) is None


# ---- listings --------------------------------------------------------------------------------------

# ``GET /api/v3/exchangeInfo`` as the venue answers it (fields we do not read trimmed from symbols).
SPOT_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]
USDM_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]


def _spot_symbol(symbol: str, status: str = "TRADING") -> dict[str, Any]:
    return {"symbol": symbol, "status": status, "baseAsset": symbol[:-4], "baseAssetPrecision": 8,
            "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"], "icebergAllowed": True, "ocoAllowed": True,
            "isSpotTradingAllowed": True, "isMarginTradingAllowed": True,
            "filters": [{"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                         "tickSize": "0.01000000"},
                        {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
                         "stepSize": "0.00001000"},
                        {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True}],
            "permissions": [], "permissionSets": [["SPOT", "MARGIN"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER"}


def _usdm_symbol(symbol: str, status: str = "TRADING") -> dict[str, Any]:
    return {"symbol": symbol, "pair": symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000, "status": status, "baseAsset": symbol[:-4], "quoteAsset": "USDT",
            "marginAsset": "USDT", "pricePrecision": 2, "quantityPrecision": 3, "underlyingType": "COIN",
            "filters": [{"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764",
                         "tickSize": "0.10"},
                        {"filterType": "LOT_SIZE", "maxQty": "1000", "minQty": "0.001", "stepSize": "0.001"}],
            "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"]}


def _exchange_info(symbols: list[dict[str, Any]], limits: list[dict[str, Any]], usdm: bool = False) -> bytes:
    body: dict[str, Any] = {"timezone": "UTC", "serverTime": 1723161256501}
    if usdm:
        body["futuresType"] = "U_MARGINED"
    body |= {"rateLimits": limits, "exchangeFilters": [], "symbols": symbols}
    if usdm:
        body["assets"] = [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}]
    return orjson.dumps(body)


def _asked(req: RestRequest[Any]) -> list[str]:
    return orjson.loads(str(req.params["symbols"]))  # type: ignore[no-any-return]


def test_binance_spot_listing_asks_once_for_the_whole_list_and_reads_the_weight_limit() -> None:
    listing = listing_query(Venue.BINANCE, Market.SPOT, ["ETHUSDT", "BTCUSDT"])
    assert isinstance(listing, BinanceListing) and listing.trading == "TRADING"
    req = listing.next_request()
    assert req is not None and (req.path, req.weight, _asked(req)) == ("/api/v3/exchangeInfo", 20,
                                                                       ["BTCUSDT", "ETHUSDT"])
    # Another minute-long limit that is not the request weight must not be taken for it.
    limits = [*SPOT_LIMITS, {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 1, "limit": 9}]
    listing.on_answer(req.decode(_exchange_info([_spot_symbol("BTCUSDT"), _spot_symbol("ETHUSDT", "BREAK")],
                                                limits)))
    assert listing.statuses == {"BTCUSDT": "TRADING", "ETHUSDT": "BREAK"} and listing.weight_limit == 6000
    assert listing.next_request() is None


def test_binance_spot_listing_splits_on_400_and_marks_the_unknown_symbol() -> None:
    listing = BinanceListing(Market.SPOT, ["BTCUSDT", "NOTACOIN", "ETHUSDT"])
    req = listing.next_request()
    assert req is not None and _asked(req) == ["BTCUSDT", "ETHUSDT", "NOTACOIN"]
    listing.on_error(400)  # {"code":-1121,"msg":"Invalid symbol."}: one unknown symbol refuses the whole list
    asked = []
    while (req := listing.next_request()) is not None:
        asked += _asked(req)
        symbol = _asked(req)[0]
        if symbol == "NOTACOIN":
            listing.on_error(400)
        else:
            listing.on_answer(req.decode(_exchange_info([_spot_symbol(symbol)], SPOT_LIMITS)))
    assert asked == ["BTCUSDT", "ETHUSDT", "NOTACOIN"]  # one request per symbol
    assert listing.statuses == {"BTCUSDT": "TRADING", "ETHUSDT": "TRADING", "NOTACOIN": NOT_LISTED}


@pytest.mark.parametrize("status", [503, 429, None])
def test_binance_listing_stops_when_the_venue_cannot_answer(status: int | None) -> None:
    listing = BinanceListing(Market.SPOT, ["BTCUSDT", "ETHUSDT", "NOTACOIN"])
    assert listing.next_request() is not None
    listing.on_error(400)
    req = listing.next_request()
    assert req is not None
    listing.on_answer(req.decode(_exchange_info([_spot_symbol("BTCUSDT")], SPOT_LIMITS)))
    assert listing.next_request() is not None
    listing.on_error(status)  # nothing is assumed about the symbols not asked yet
    assert listing.next_request() is None and listing.statuses == {"BTCUSDT": "TRADING"}


def test_binance_usdm_listing_answers_for_every_symbol() -> None:
    listing = BinanceListing(Market.USDM, ["ETHUSDT", "BTCUSDT", "NOTACOIN"])
    req = listing.next_request()
    assert req is not None and (req.path, dict(req.params), req.weight) == ("/fapi/v1/exchangeInfo", {}, 1)
    symbols = [_usdm_symbol("BTCUSDT"), _usdm_symbol("ETHUSDT", "SETTLING"), _usdm_symbol("XRPUSDT")]
    listing.on_answer(req.decode(_exchange_info(symbols, USDM_LIMITS, usdm=True)))
    assert listing.statuses == {"BTCUSDT": "TRADING", "ETHUSDT": "SETTLING", "NOTACOIN": NOT_LISTED}
    assert listing.weight_limit == 2400 and listing.next_request() is None


def test_an_exchange_info_that_is_not_one_is_refused() -> None:
    req = BinanceListing(Market.SPOT, ["BTCUSDT"]).next_request()
    assert req is not None
    with pytest.raises(VenueProtocolError) as info:
        req.decode(b'{"symbols":{"symbol":"BTCUSDT"}}')
    assert info.value.kind == "invalid_rest_answer"


def _instrument(symbol: str, status: str = "Trading") -> dict[str, Any]:
    """One ``GET /v5/market/instruments-info`` row of category linear."""
    return {"symbol": symbol, "contractType": "LinearPerpetual", "status": status, "baseCoin": symbol[:-4],
            "quoteCoin": "USDT", "launchTime": "1585526400000", "deliveryTime": "0", "deliveryFeeRate": "",
            "priceScale": "2", "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00",
                                                  "leverageStep": "0.01"},
            "priceFilter": {"minPrice": "0.10", "maxPrice": "199999.80", "tickSize": "0.10"},
            "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": "0.001", "qtyStep": "0.001"},
            "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin": "USDT", "copyTrading": "both"}


def _instruments(rows: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"retCode": 0, "retMsg": "OK",
                         "result": {"category": "linear", "list": rows, "nextPageCursor": ""},
                         "retExtInfo": {}, "time": 1707186451514})


def test_bybit_listing_asks_symbol_by_symbol() -> None:
    listing = listing_query(Venue.BYBIT, Market.LINEAR, ["NOTACOIN", "ETHUSDT", "BTCUSDT", "SOLUSDT"])
    assert isinstance(listing, BybitListing) and listing.trading == "Trading"
    asked = []
    while (req := listing.next_request()) is not None:
        assert (req.path, req.weight, req.params["category"]) == ("/v5/market/instruments-info", 1, "linear")
        symbol = str(req.params["symbol"])
        asked.append(symbol)
        if symbol == "ETHUSDT":
            listing.on_error(503)  # nothing is assumed about it; the others are still asked
        elif symbol == "NOTACOIN":
            listing.on_answer(req.decode(_instruments([])))
        else:
            listing.on_answer(req.decode(_instruments([_instrument(symbol, "PreLaunch" if symbol == "SOLUSDT"
                                                                    else "Trading")])))
    assert asked == ["BTCUSDT", "ETHUSDT", "NOTACOIN", "SOLUSDT"]
    assert listing.statuses == {"BTCUSDT": "Trading", "NOTACOIN": NOT_LISTED, "SOLUSDT": "PreLaunch"}
    assert listing.weight_limit is None


def test_rest_limits_per_venue_market() -> None:
    assert rest_limit(Venue.BINANCE, Market.SPOT) == binance.REST_LIMITS[Market.SPOT]
    assert rest_limit(Venue.BINANCE, Market.USDM).limit == 2400
    assert rest_limit(Venue.BYBIT, Market.SPOT) == rest_limit(Venue.BYBIT, Market.LINEAR) == bybit.REST_LIMIT


def test_listings_give_each_symbol_its_tick_and_lot() -> None:
    spot = BinanceListing(Market.SPOT, ["BTCUSDT"])
    req = spot.next_request()
    assert req is not None
    spot.on_answer(req.decode(_exchange_info([_spot_symbol("BTCUSDT")], SPOT_LIMITS)))
    (btc,) = spot.instruments.values()
    assert (btc.tick, btc.lot, btc.tick_text, btc.lot_text) == (0.01, 0.00001, "0.01000000", "0.00001000")
    usdm = BinanceListing(Market.USDM, ["BTCUSDT"])
    req = usdm.next_request()
    assert req is not None
    no_lot = {**_usdm_symbol("ETHUSDT"), "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01"}]}
    usdm.on_answer(req.decode(_exchange_info([_usdm_symbol("BTCUSDT"), no_lot], USDM_LIMITS, usdm=True)))
    assert {s: (i.tick, i.lot) for s, i in usdm.instruments.items()} == {"BTCUSDT": (0.1, 0.001)}  # asked only
    linear = BybitListing(Market.LINEAR, ["BTCUSDT"])
    req = linear.next_request()
    assert req is not None
    linear.on_answer(req.decode(_instruments([_instrument("BTCUSDT")])))
    assert (linear.instruments["BTCUSDT"].tick, linear.instruments["BTCUSDT"].lot) == (0.1, 0.001)
    # Spot describes its lot as basePrecision; a zero or missing tick describes nothing.
    spot_row = {"symbol": "BTCUSDT", "status": "Trading", "lotSizeFilter": {"basePrecision": "0.000001"},
                "priceFilter": {"tickSize": "0.01"}}
    bybit_spot = BybitListing(Market.SPOT, ["BTCUSDT", "ETHUSDT"])
    for row in (spot_row, {**spot_row, "symbol": "ETHUSDT", "priceFilter": {"tickSize": "0"}}):
        req = bybit_spot.next_request()
        assert req is not None
        bybit_spot.on_answer(req.decode(_instruments([row])))
    assert {s: (i.tick, i.lot) for s, i in bybit_spot.instruments.items()} == {"BTCUSDT": (0.01, 0.000001)}
