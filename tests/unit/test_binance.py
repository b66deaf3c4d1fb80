"""Binance venue protocol against real recorded frames and bad input."""

from __future__ import annotations

import orjson
import polars as pl
import pytest

from tests.conftest import recorded_frames
from wadm.errors import VenueProtocolError
from wadm.records import TRADE_SCHEMA_INT_ID, Market
from wadm.venues.base import Ack, Event, Gap, RecoverTrades, ServerShutdown, Taken, VenueErrorReply
from wadm.venues.binance import MAX_STREAMS_PER_CONNECTION, plan_trade_connections

MS = 1_000_000


def _protocol(market: Market, stream: str = "trade", symbols: tuple[str, ...] = ("BTCUSDT",), max_rows: int = 10**6):
    plan = plan_trade_connections(market, symbols, "wss://example.invalid", trade_stream=stream, max_rows=max_rows)[0]
    return plan.protocol


def _independent_rebuild(frames: list[bytes]) -> pl.DataFrame:
    rows = []
    for frame in frames:
        d = orjson.loads(frame)["data"]
        rows.append((d["T"] * 1_000_000, d["t"], float(d["p"]), float(d["q"]), -1 if d["m"] else 1))
    return pl.DataFrame(
        rows, schema=["ts_event", "id", "price", "qty", "side"], orient="row"
    ).cast({"side": pl.Int8})


@pytest.mark.parametrize(("name", "market"), [("spot_btcusdt_20240808.gz", Market.SPOT),
                                               ("usdm_btcusdt_20240808.gz", Market.USDM)])
def test_recorded_trades_decode_exactly(name: str, market: Market) -> None:
    recorded = list(recorded_frames(name, b"@trade"))
    assert len(recorded) > 9000
    proto = _protocol(market)
    for ts_recv, frame in recorded:
        assert proto.feed(frame, ts_recv) == ()
    st = proto.streams["btcusdt@trade"]
    got, actions = st.take()
    assert got is not None and actions == ()
    assert got.schema == pl.Schema(TRADE_SCHEMA_INT_ID)
    expected = _independent_rebuild([f for _, f in recorded])
    assert got.drop("ts_recv").equals(expected)
    assert got["ts_recv"].to_list() == [ts for ts, _ in recorded]
    assert st.messages == len(recorded) and st.trades == len(recorded)
    assert st.missing_ids == 0 and st.duplicates == 0 and st.rejected == 0
    assert st.take() == Taken(None)  # the buffer was reset


def test_overlapping_connections_are_deduplicated() -> None:
    recorded = [f for _, f in recorded_frames("spot_btcusdt_20240808.gz", b"@trade")][:500]
    proto = _protocol(Market.SPOT)
    # Two sockets during a make-before-break rotation deliver the same trades, interleaved.
    for i, frame in enumerate(recorded):
        proto.feed(frame, i)
        if i >= 100:
            proto.feed(recorded[i - 50], i)
    st = proto.streams["btcusdt@trade"]
    got = st.take().frame
    assert got is not None
    assert got["id"].to_list() == [orjson.loads(f)["data"]["t"] for f in recorded]
    assert st.duplicates == 400


def test_missing_ids_are_counted() -> None:
    recorded = [f for _, f in recorded_frames("spot_btcusdt_20240808.gz", b"@trade")][:100]
    proto = _protocol(Market.SPOT)
    events: list[Event] = []
    for frame in recorded[:40] + recorded[45:]:
        events += proto.feed(frame, 0)
    st = proto.streams["btcusdt@trade"]
    assert st.missing_ids == 5
    before, after = (orjson.loads(recorded[i])["data"]["T"] * 1_000_000 for i in (39, 45))
    first, last = (orjson.loads(recorded[i])["data"]["t"] for i in (40, 44))
    # The gap names the missing ids, so a REST backfill can fetch exactly them.
    assert events == [RecoverTrades("btcusdt@trade", Gap(before, after, "missing_ids", 5, first, last))]
    assert st.take().actions == ()  # the gap came back once, from the frame that showed it


def test_agg_trades_and_side_mapping() -> None:
    proto = _protocol(Market.USDM, "aggTrade")
    sell = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"a":7,"s":"BTCUSDT","p":"61800.30",' \
           b'"q":"0.5","f":1,"l":2,"T":1723161256322,"m":true}}'
    buy = sell.replace(b'"a":7', b'"a":8').replace(b'"m":true', b'"m":false')
    proto.feed(sell, 10)
    proto.feed(buy, 11)
    got = proto.streams["btcusdt@aggTrade"].take().frame
    assert got is not None
    assert got.select("id", "price", "qty", "side").rows() == [(7, 61800.3, 0.5, -1), (8, 61800.3, 0.5, 1)]
    assert got["ts_event"].to_list() == [1723161256322_000_000] * 2


def test_zero_price_trades_are_rejected_and_counted() -> None:
    proto = _protocol(Market.USDM)
    good = b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"T":1,"s":"BTCUSDT","t":5,"p":"61800.30",' \
           b'"q":"0.006","X":"MARKET","m":false}}'
    zero = good.replace(b'"t":5', b'"t":6').replace(b'"61800.30"', b'"0.00"').replace(b'"0.006"', b'"0.000"')
    proto.feed(good, 0)
    proto.feed(zero, 0)
    st = proto.streams["btcusdt@trade"]
    got = st.take().frame
    assert got is not None and got["id"].to_list() == [5]
    assert st.rejected == 1 and st.trades == 1


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"t":', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1,2,3]", "unknown_event"),
        (b'{"stream":"btcusdt@trade","data":{"e":"fancyTrade","E":1}}', "unknown_event"),
        (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"p":"1"}}', "missing_field"),
        (b'{"stream":"btcusdt@trade","data":{"e":"trade","t":"x","p":"1","q":"1","T":1,"m":true}}', "missing_field"),
        (b'{"stream":"ethusdt@trade","data":{"e":"trade","t":1,"p":"1","q":"1","T":1,"m":true}}', "unknown_stream"),
        (b'{"e":"trade","t":1,"p":"1","q":"1","T":1,"m":true}', "unknown_event"),
    ],
)
def test_bad_frames_raise_a_kind_and_leave_state_intact(frame: bytes, kind: str) -> None:
    proto = _protocol(Market.SPOT)
    with pytest.raises(VenueProtocolError) as info:
        proto.feed(frame, 0)
    assert info.value.kind == kind
    st = proto.streams["btcusdt@trade"]
    assert st.pending == 0 and st.last_id == -1


def test_control_frames() -> None:
    proto = _protocol(Market.SPOT)
    assert proto.feed(b'{"result":null,"id":1}', 0) == (Ack(1),)
    assert proto.feed(b'{"code":2,"msg":"Invalid request","id":3}', 0) == (VenueErrorReply(2, "Invalid request", 3),)
    assert proto.feed(b'{"error":{"code":4,"msg":"Too many subscriptions"},"id":19}', 0) == (
        VenueErrorReply(4, "Too many subscriptions", 19),
    )
    combined = b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}'
    assert proto.feed(combined, 0) == (ServerShutdown(1770123456789_000_000),)
    assert proto.feed(b'{"e":"serverShutdown","E":1770123456789}', 0) == (ServerShutdown(1770123456789_000_000),)


def test_full_buffer_drops_newest_and_counts() -> None:
    proto = _protocol(Market.SPOT, max_rows=10)
    for frame in [f for _, f in recorded_frames("spot_btcusdt_20240808.gz", b"@trade")][:25]:
        proto.feed(frame, 0)
    st = proto.streams["btcusdt@trade"]
    assert st.pending == 10 and st.dropped == 15


def test_plans_route_usdm_streams_and_group_symbols() -> None:
    spot = plan_trade_connections(Market.SPOT, ("BTCUSDT", "ETHUSDT"), "wss://stream.binance.com:9443")
    assert [p.url for p in spot] == [
        "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
    ]
    usdm = plan_trade_connections(Market.USDM, ("BTCUSDT",), "wss://fstream.binance.com")
    assert usdm[0].url == "wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade"
    usdm_trade = plan_trade_connections(Market.USDM, ("BTCUSDT",), "wss://fstream.binance.com", trade_stream="trade")
    assert usdm_trade[0].url == "wss://fstream.binance.com/public/stream?streams=btcusdt@trade"
    many = tuple(f"S{i:03d}USDT" for i in range(MAX_STREAMS_PER_CONNECTION + 5))
    plans = plan_trade_connections(Market.SPOT, many, "wss://x")
    assert [len(p.streams) for p in plans] == [MAX_STREAMS_PER_CONNECTION, 5]
    assert plans[0].max_lifetime == 24 * 3600
    with pytest.raises(ValueError):
        plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://x")


# ---- make-before-break hand-over ----------------------------------------------------------------


def _agg(i: int) -> bytes:
    return orjson.dumps({"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": i,
                                                                 "p": "100.0", "q": "1.0", "f": i, "l": i,
                                                                 "T": 1000 + i, "m": False}})


def test_a_taking_over_connection_is_held_until_promoted() -> None:
    proto = _protocol(Market.SPOT, "aggTrade")
    st = proto.streams["btcusdt@aggTrade"]
    for i in (1, 2, 3):
        proto.feed(_agg(i), i)
    # The new connection is a little ahead (and skipped id 7); its frames wait, the old one goes on.
    for i in (3, 4, 5, 6, 8):
        assert proto.feed_standby(_agg(i), 10 + i) == ()
    assert proto.feed_standby(b"\xff", 20) == ()  # a bad frame is held too, and dropped on replay
    assert st.pending == 3 and st.last_id == 3
    assert proto.feed(_agg(4), 4) == ()
    events = proto.promote()
    # Replayed in order: 3 and 4 are duplicates, 5, 6 and 8 continue the sequence, 7 is missing.
    assert events == [RecoverTrades("btcusdt@aggTrade", Gap(1006 * MS, 1008 * MS, "missing_ids", 1, 7, 7))]
    assert st.duplicates == 2 and st.last_id == 8
    got = st.take().frame
    assert got is not None and got["id"].to_list() == [1, 2, 3, 4, 5, 6, 8]
    assert got["ts_recv"].to_list() == [1, 2, 3, 4, 15, 16, 18]
    assert proto.promote() == []  # nothing is replayed twice


def test_a_failed_takeover_is_forgotten() -> None:
    proto = _protocol(Market.SPOT, "aggTrade")
    st = proto.streams["btcusdt@aggTrade"]
    proto.feed(_agg(1), 1)
    for i in (2, 3):
        proto.feed_standby(_agg(i), i)
    proto.discard_standby()
    assert proto.promote() == []
    assert st.pending == 1 and st.last_id == 1
    assert proto.feed(_agg(2), 2) == ()  # the old connection continues where it was
