"""Bybit v5 venue protocol against the venue's real frame shapes and bad input."""

from __future__ import annotations

import orjson
import pytest

from wadm.errors import VenueProtocolError
from wadm.records import TRADE_SCHEMA_STR_ID, Market
from wadm.venues.base import Ack, Gap, RecoverTrades, VenueErrorReply
from wadm.venues.bybit import MAX_TOPICS_PER_REQUEST, plan_trade_connections, subscribe_frames

MS = 1_000_000

# Real captured frames (PROTOCOLS.md §3.3): linear (UUID ids, with L) and spot (numeric ids).
LINEAR = (b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1786310819681,"data":[{"T":1786310819680,'
          b'"s":"BTCUSDT","S":"Sell","v":"0.004","p":"65114.20","L":"MinusTick",'
          b'"i":"a9188a0a-82bc-50de-be60-03eedbe3cdd7","BT":false,"RPI":false,"seq":753843954913}]}')
SPOT = (b'{"topic":"publicTrade.ETHUSDT","ts":1786310821917,"type":"snapshot","data":[{"i":"2280000001739247417",'
        b'"T":1786310821917,"p":"1923.28","v":"0.04537","S":"Sell","seq":178477362706,"s":"ETHUSDT","BT":false,'
        b'"RPI":false}]}')


def _proto(market: Market, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")):  # type: ignore[no-untyped-def]
    return plan_trade_connections(market, symbols, "wss://stream.bybit.com")[0].protocol


def _batch(n: int, start: int = 0, side: str = "Buy") -> bytes:
    data = [{"T": 1786310819680 + start + k, "s": "BTCUSDT", "S": side, "v": "0.5", "p": f"{65000 + k}.10",
             "i": f"id-{start + k}", "BT": k % 2 == 0, "RPI": False} for k in range(n)]
    return orjson.dumps({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1, "data": data})


def test_real_frames_decode() -> None:
    proto = _proto(Market.LINEAR)
    assert proto.feed(LINEAR, 11) == ()
    frame, actions = proto.streams["publicTrade.BTCUSDT"].take()
    assert frame is not None and actions == () and frame.schema == dict(TRADE_SCHEMA_STR_ID)
    assert frame.rows() == [(1786310819680_000_000, 11, "a9188a0a-82bc-50de-be60-03eedbe3cdd7", 65114.2, 0.004, -1)]
    spot = _proto(Market.SPOT)
    assert spot.feed(SPOT, 12) == ()
    frame = spot.streams["publicTrade.ETHUSDT"].take().frame
    assert frame is not None
    assert frame.rows() == [(1786310821917_000_000, 12, "2280000001739247417", 1923.28, 0.04537, -1)]


def test_arrays_keep_order_and_overlaps_are_removed() -> None:
    proto = _proto(Market.LINEAR)
    proto.feed(_batch(1024), 1)
    proto.feed(_batch(100, start=1000), 2)  # 24 repeated from a second connection, 76 new
    st = proto.streams["publicTrade.BTCUSDT"]
    frame = st.take().frame
    assert frame is not None
    assert frame["id"].to_list() == [f"id-{k}" for k in range(1100)]
    assert frame["side"].unique().to_list() == [1]
    assert st.duplicates == 24 and st.messages == 2


def test_zero_price_trades_are_rejected() -> None:
    proto = _proto(Market.SPOT)
    proto.feed(_batch(3).replace(b'"65001.10"', b'"0"'), 1)
    st = proto.streams["publicTrade.BTCUSDT"]
    frame = st.take().frame
    assert frame is not None and frame.height == 2 and st.rejected == 1


def test_control_frames() -> None:
    proto = _proto(Market.SPOT)
    spot_ack = b'{"success":true,"ret_msg":"subscribe","conn_id":"d9avt8shteepr00gfc1g-4zd1x","op":"subscribe"}'
    linear_ack = b'{"success":true,"ret_msg":"","conn_id":"d8bu1olkndm7crnfs1e0-j6akw","req_id":"","op":"subscribe"}'
    assert proto.feed(spot_ack, 0) == (Ack(None),)
    assert proto.feed(linear_ack, 0) == (Ack(None),)
    assert proto.feed(b'{"success":true,"ret_msg":"pong","conn_id":"x","op":"ping"}', 0) == ()
    refused = (b'{"success":false,"ret_msg":"error:handler not found,topic:publicTrade.NOTASYMBOL",'
               b'"conn_id":"x","op":"subscribe"}')
    (event,) = proto.feed(refused, 0)
    assert isinstance(event, VenueErrorReply) and event.stream == "publicTrade.NOTASYMBOL"
    too_many = b'{"success":false,"ret_msg":"args size >10","conn_id":"x","op":"subscribe"}'
    (event,) = proto.feed(too_many, 0)
    assert isinstance(event, VenueErrorReply) and event.stream is None and "args size" in event.message


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b'{"topic":"publicTrade.BTCUSDT","data":[{"T":1', "invalid_json"),
        (b"[1]", "unknown_event"),
        (b'{"hello":1}', "unknown_event"),
        (b'{"topic":"publicTrade.SOLUSDT","data":[]}', "unknown_stream"),
        (b'{"topic":"publicTrade.BTCUSDT","data":[{"T":1,"S":"Buy"}]}', "missing_field"),
        (b'{"topic":"publicTrade.BTCUSDT","data":{"T":1}}', "missing_field"),
    ],
)
def test_bad_frames(frame: bytes, kind: str) -> None:
    proto = _proto(Market.LINEAR)
    with pytest.raises(VenueProtocolError) as info:
        proto.feed(frame, 0)
    assert info.value.kind == kind
    assert proto.streams["publicTrade.BTCUSDT"].pending == 0


def test_plans_subscribe_in_chunks_and_ping() -> None:
    symbols = tuple(f"S{i:02d}USDT" for i in range(23))
    plan = plan_trade_connections(Market.SPOT, symbols, "wss://stream.bybit.com/")[0]
    assert plan.url == "wss://stream.bybit.com/v5/public/spot"
    requests = [orjson.loads(f) for f in plan.subscribe_frames]
    assert [len(r["args"]) for r in requests] == [10, 10, 3]
    assert all(r["op"] == "subscribe" for r in requests)
    assert [a for r in requests for a in r["args"]] == [f"publicTrade.{s}" for s in symbols]
    assert orjson.loads(plan.app_ping or b"{}")["op"] == "ping" and plan.app_ping_interval == 20
    linear = plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://stream.bybit.com")[0]
    assert linear.url.endswith("/v5/public/linear")
    assert len(subscribe_frames([f"t{i}" for i in range(25)])) == 3 and MAX_TOPICS_PER_REQUEST == 10
    with pytest.raises(ValueError):
        plan_trade_connections(Market.USDM, ("BTCUSDT",), "wss://x")


def test_a_taking_over_connection_is_taken_at_once() -> None:
    # Bybit ids are de-duplicated by id, so the two connections may interleave: nothing is held.
    proto = _proto(Market.LINEAR)
    st = proto.streams["publicTrade.BTCUSDT"]
    proto.feed(_batch(3), 1)
    st.connection_lost(2)
    events = proto.feed_standby(_batch(3, start=3), 3)  # taken right away, the window too
    assert events == (RecoverTrades("publicTrade.BTCUSDT", Gap(1786310819682 * MS, 1786310819683 * MS,
                                                                "disconnected")),)
    assert st.pending == 6
    assert proto.feed(_batch(5), 4) == ()  # the old connection, still open: repeats only
    proto.discard_standby()  # nothing was held, so nothing is undone
    assert proto.promote() == []
    frame = st.take().frame
    assert frame is not None and frame["id"].to_list() == [f"id-{k}" for k in range(6)]
    assert st.duplicates == 5
