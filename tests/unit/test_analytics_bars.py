"""Trade bars, delta candles, CVD and footprints against the of_01/of_02 vectors and resampling."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tests.vectors import MIN, MS, T0, frame, of01_trades, vector
from wadm.analytics.bars import (
    BAR_SCHEMA,
    FOOTPRINT_SCHEMA,
    NS_PER_DAY,
    footprints,
    resample,
    resample_footprints,
    trade_bars,
)
from wadm.analytics.grid import Grid
from wadm.errors import UsageError
from wadm.records import Market
from wadm.venues import binance, bybit


def close(a: object, b: object) -> bool:
    return abs(float(a) - float(b)) <= 1e-9  # type: ignore[arg-type]


# ---- of_01 ---------------------------------------------------------------------------------------


def test_of01_bars() -> None:
    expected = vector("of_01_footprint_delta_cvd_imbalance")["expected"]["bars"]
    bars = trade_bars(of01_trades(), MIN)
    assert bars.schema == pl.Schema(BAR_SCHEMA)
    assert bars.height == len(expected)
    names = {"buy": "buy_volume", "sell": "sell_volume", "delta_max": "max_delta", "delta_min": "min_delta",
             "cvd": "cvd_close"}
    for got, want in zip(bars.iter_rows(named=True), expected, strict=True):
        assert got["start"] == want["start"] * MS
        assert got["trades"] == want["trades"]
        for column in ("open", "high", "low", "close", "volume", "buy", "sell", "delta", "delta_max", "delta_min",
                       "cvd_open", "cvd"):
            assert close(got[column], want[names.get(column, column)]), (column, got, want)


@pytest.mark.parametrize("tick", [1.0, 0.01])
def test_of01_footprints_are_dense_bid_by_ask(tick: float) -> None:
    expected = vector("of_01_footprint_delta_cvd_imbalance")["expected"]["bars"]
    fp = footprints(of01_trades(), Grid(tick, 1), MIN)
    assert fp.schema == pl.Schema(FOOTPRINT_SCHEMA)
    assert fp.equals(fp.sort("start", "index"))
    for want in expected:
        rows = fp.filter(pl.col("start") == want["start"] * MS)
        want_rows = sorted((int(r["price"]), float(r["bid"]), float(r["ask"])) for r in want["footprint"])
        assert rows.select("index", "sell", "buy").rows() == want_rows  # bid = sell aggressor, ask = buy
    # bar 2's row 102 traded nothing and is present as a zero row
    assert fp.filter(pl.col("start") == T0 + 2 * MIN, pl.col("index") == 102).rows() == [(T0 + 2 * MIN, 102, 0.0, 0.0)]


# ---- of_02: aggressor mapping through the real venue decoders -------------------------------------


def _of02() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    v = vector("of_02_aggressor_mapping")
    return v["input"], v["expected"]["normalised"]


def _check_normalised(trades: pl.DataFrame, expected: list[dict[str, Any]]) -> None:
    assert trades.height == len(expected)
    for got, want in zip(trades.iter_rows(named=True), expected, strict=True):
        assert got["ts_event"] == want["ts"] * MS
        assert got["price"] == float(want["price"]) and got["qty"] == float(want["qty"])
        assert got["side"] == (1 if want["side"] == "buy" else -1)
    bars = trade_bars(trades, MIN)
    want_delta = sum(Decimal(str(w["delta"])) for w in expected)
    assert close(bars["delta"].sum(), want_delta)
    assert close(bars["buy"].sum(), sum(Decimal(str(w["qty"])) for w in expected if w["side"] == "buy"))


def test_of02_binance_rest_and_stream_decoders() -> None:
    given_, expected = _of02()
    raw = given_["binance_aggTrade"]
    want = [w for w in expected if w["exchange"] == "binance"]
    items = binance.decode_agg_trades(orjson.dumps(raw))  # the REST rows carry the stream's fields
    _check_normalised(binance.trades_to_frame(items, [7] * len(items)), want)
    proto = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), "wss://example.invalid")[0].protocol
    for message in raw:
        assert proto.feed(orjson.dumps({"stream": "btcusdt@aggTrade", "data": message}), 7) == ()
    got = proto.streams["btcusdt@aggTrade"].take().frame
    assert got is not None
    _check_normalised(got, want)


def test_of02_bybit_rest_and_stream_decoders() -> None:
    given_, expected = _of02()
    data = given_["bybit_v5_publicTrade_data"]
    want = [w for w in expected if w["exchange"] == "bybit"]
    rest = [{"execId": d["i"], "symbol": d["s"], "price": d["p"], "size": d["v"], "side": d["S"],
             "time": str(d["T"]), "isBlockTrade": d["BT"]} for d in reversed(data)]  # newest first on the wire
    answer = {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": rest}}
    items = bybit.decode_recent_trades(orjson.dumps(answer))
    _check_normalised(bybit.trades_to_frame(items, [7] * len(items)), want)
    proto = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), "wss://example.invalid")[0].protocol
    topic = {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1704067200401, "data": data}
    assert proto.feed(orjson.dumps(topic), 7) == ()
    got = proto.streams["publicTrade.BTCUSDT"].take().frame
    assert got is not None
    _check_normalised(got, want)


# ---- bars: order, sparseness, CVD sessions -----------------------------------------------------------


def test_ohlc_follow_input_order_and_bars_are_sparse() -> None:
    trades = frame([
        (T0 + 5, 10.0, 1.0, 1),
        (T0 + 5, 12.0, 1.0, -1),  # same ns: input order decides
        (T0 + 5, 11.0, 2.0, 1),
        (T0 + 3 * MIN, 9.0, 1.0, -1),  # minutes 1 and 2 have no trades and no bars
    ])
    bars = trade_bars(trades, MIN)
    assert bars["start"].to_list() == [T0, T0 + 3 * MIN]
    assert bars.row(0, named=True) == {
        "start": T0, "open": 10.0, "high": 12.0, "low": 10.0, "close": 11.0, "volume": 4.0, "buy": 3.0,
        "sell": 1.0, "delta": 2.0, "delta_min": 0.0, "delta_max": 2.0, "trades": 3, "cvd_open": 0.0, "cvd": 2.0}
    assert bars.row(1, named=True)["cvd_open"] == 2.0 and bars.row(1, named=True)["cvd"] == 1.0


def test_delta_candle_includes_zero() -> None:
    only_buys = trade_bars(frame([(T0, 1.0, 2.0, 1), (T0 + 1, 1.0, 3.0, 1)]), MIN).row(0, named=True)
    assert (only_buys["delta_min"], only_buys["delta_max"], only_buys["delta"]) == (0.0, 5.0, 5.0)
    only_sells = trade_bars(frame([(T0, 1.0, 2.0, -1), (T0 + 1, 1.0, 3.0, -1)]), MIN).row(0, named=True)
    assert (only_sells["delta_min"], only_sells["delta_max"], only_sells["delta"]) == (-5.0, 0.0, -5.0)


def test_cvd_resets_at_midnight_utc() -> None:
    day2 = T0 + NS_PER_DAY
    trades = frame([
        (day2 - 2 * MIN, 1.0, 4.0, 1),
        (day2 - MIN + 1, 1.0, 1.0, -1),
        (day2 + 3 * MIN, 1.0, 2.0, -1),  # a new session: the first bar of the day is not at 00:00
        (day2 + 4 * MIN, 1.0, 5.0, 1),
    ])
    bars = trade_bars(trades, MIN, cvd_open=10.0)  # the CVD of day 1 before the first bar
    assert bars.select("cvd_open", "cvd").rows() == [(10.0, 14.0), (14.0, 13.0), (0.0, -2.0), (-2.0, 3.0)]
    hourly = resample(bars, 60 * MIN)
    assert hourly.select("cvd_open", "cvd").rows() == [(10.0, 13.0), (0.0, 3.0)]


def test_cvd_open_is_ignored_when_the_first_bar_starts_the_session() -> None:
    trades = frame([(T0 + 1, 1.0, 4.0, 1), (T0 + MIN, 1.0, 1.0, -1)])
    assert trade_bars(trades, MIN, cvd_open=99.0)["cvd"].to_list() == [4.0, 3.0]
    later = frame([(T0 + MIN + 1, 1.0, 4.0, 1)])
    assert trade_bars(later, MIN, cvd_open=99.0)["cvd"].to_list() == [103.0]


def test_bars_continue_from_stored_bars() -> None:
    rows = [(T0 + k * 7_000 * MS, 100.0 + k % 5, 0.5 + k % 3, 1 if k % 4 else -1) for k in range(60)]
    whole = trade_bars(frame(rows), MIN)
    cut = 35  # trade 35 opens a new minute (35 * 7 s = 245 s, trade 34 at 238 s)
    first = trade_bars(frame(rows[:cut]), MIN)
    rest = trade_bars(frame(rows[cut:]), MIN, cvd_open=first["cvd"][-1])
    assert_frame_equal(pl.concat([first, rest]), whole)


def test_session_length_and_interval_checks() -> None:
    trades = frame([(T0, 1.0, 1.0, 1)])
    with pytest.raises(UsageError):
        trade_bars(trades, 7 * MIN)  # does not divide a day
    with pytest.raises(UsageError):
        trade_bars(trades, 0)
    with pytest.raises(UsageError):
        resample(trade_bars(trades, MIN), 7 * MIN)
    with pytest.raises(UsageError):
        footprints(trades, Grid(1, 1), -1)
    with pytest.raises(UsageError):
        resample_footprints(footprints(trades, Grid(1, 1), MIN), 0)
    # a 4-hour session works with 1 h bars
    assert trade_bars(trades, 60 * MIN, session_ns=240 * MIN).height == 1


def test_empty_inputs_keep_their_schemas() -> None:
    empty = pl.DataFrame(schema={"ts_event": pl.Int64, "price": pl.Float64, "qty": pl.Float64, "side": pl.Int8})
    assert trade_bars(empty, MIN).schema == pl.Schema(BAR_SCHEMA)
    assert footprints(empty, Grid(1, 1), MIN).schema == pl.Schema(FOOTPRINT_SCHEMA)
    assert resample(pl.DataFrame(schema=BAR_SCHEMA), 5 * MIN).schema == pl.Schema(BAR_SCHEMA)
    assert resample_footprints(pl.DataFrame(schema=FOOTPRINT_SCHEMA), 5 * MIN).schema == pl.Schema(FOOTPRINT_SCHEMA)


def test_footprint_rows_are_exact_ticks() -> None:
    # float floor(price / row) puts 0.3 in row 2 and 0.7 in row 6; integer ticks do not (C1)
    trades = frame([(T0, 0.3, 1.0, 1), (T0 + 1, 0.7, 2.0, -1)])
    fp = footprints(trades, Grid(0.1, 0.1), MIN)
    assert fp["index"].to_list() == [3, 4, 5, 6, 7]
    assert fp.filter(pl.col("index").is_in([3, 7])).select("buy", "sell").rows() == [(1.0, 0.0), (0.0, 2.0)]


# ---- resampling ----------------------------------------------------------------------------------


def test_resampled_delta_candle_offsets_each_finer_extreme() -> None:
    bars = trade_bars(of01_trades(), MIN)
    merged = resample(bars, 5 * MIN).row(0, named=True)
    # bar 0 peaks at +24; bar 1 starts at +21 and peaks 5 higher (+26) and bottoms at 21 - 24 = -3;
    # bar 2 starts at -3 and bottoms 13 lower (-16)
    assert (merged["delta_max"], merged["delta_min"], merged["delta"]) == (26.0, -16.0, -13.0)
    assert (merged["open"], merged["high"], merged["low"], merged["close"]) == (101.0, 104.0, 100.0, 103.0)
    assert (merged["trades"], merged["cvd_open"], merged["cvd"]) == (22, 0.0, -13.0)
    assert_frame_equal(resample(bars, 5 * MIN), trade_bars(of01_trades(), 5 * MIN))


def test_resampled_footprint_fills_the_union_of_ranges() -> None:
    trades = frame([(T0, 100.0, 1.0, 1), (T0 + MIN, 104.0, 2.0, -1), (T0 + 2 * MIN, 101.0, 3.0, 1)])
    fine = footprints(trades, Grid(1, 1), MIN)
    assert fine.height == 3  # three one-row bars
    coarse = resample_footprints(fine, 5 * MIN)
    assert coarse.rows() == [(T0, 100, 1.0, 0.0), (T0, 101, 3.0, 0.0), (T0, 102, 0.0, 0.0), (T0, 103, 0.0, 0.0),
                             (T0, 104, 0.0, 2.0)]
    assert_frame_equal(coarse, footprints(trades, Grid(1, 1), 5 * MIN))


_DAY_END = T0 + NS_PER_DAY - 10 * MIN  # 23:50 UTC: generated data crosses midnight

trade_rows = st.lists(
    st.tuples(
        st.integers(0, 30 * 60_000),  # ms after 23:50
        st.integers(9_990, 10_010),  # price in ticks of 0.01
        st.integers(1, 2_000),  # qty in lots of 0.001
        st.sampled_from([1, -1]),
    ),
    min_size=1,
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(rows=trade_rows, carry=st.integers(-500, 500), coarse=st.sampled_from([5, 15, 60]))
def test_resample_equals_bars_from_trades(rows: list[tuple[int, int, int, int]], carry: int, coarse: int) -> None:
    rows = sorted(rows, key=lambda r: r[0])  # stable: equal times keep their generated order
    trades = frame([(_DAY_END + ms * MS, t / 100, lot / 1000, s) for ms, t, lot, s in rows])
    interval = coarse * MIN
    # The carried CVD is the CVD at the first bar's start; both bar sizes must agree on whether a
    # session starts there (not so when the data begins inside the first coarse bar of a day).
    first_ms = _DAY_END + rows[0][0] * MS
    cvd_open = carry / 10 if (first_ms // interval * interval) % NS_PER_DAY else 0.0
    direct = trade_bars(trades, interval, cvd_open=cvd_open)
    merged = resample(trade_bars(trades, MIN, cvd_open=cvd_open), interval)
    assert_frame_equal(merged, direct, rel_tol=1e-12, abs_tol=1e-9)
    grid = Grid(0.01, 0.05)  # five ticks per row
    assert_frame_equal(
        resample_footprints(footprints(trades, grid, MIN), interval),
        footprints(trades, grid, interval),
        rel_tol=1e-12,
        abs_tol=1e-9,
    )


@settings(max_examples=60, deadline=None)
@given(markets=st.lists(trade_rows, min_size=1, max_size=4), coarse=st.sampled_from([5, 15, 60]))
def test_markets_resampled_in_one_pass_equal_each_resampled_alone(markets: list[list[tuple[int, int, int, int]]],
                                                                    coarse: int) -> None:
    fine = [trade_bars(frame([(_DAY_END + ms * MS, t / 100, lot / 1000, s) for ms, t, lot, s in
                              sorted(rows, key=lambda r: r[0])]), MIN) for rows in markets]
    tagged = pl.concat([b.with_columns(market=pl.lit(i, pl.Int32)) for i, b in enumerate(fine)])
    together = resample(tagged, coarse * MIN, by="market")
    assert together.columns == ["market", *BAR_SCHEMA]
    for i, bars in enumerate(fine):
        alone = together.filter(pl.col("market") == i).drop("market")
        assert_frame_equal(alone, resample(bars, coarse * MIN))
    assert resample(tagged.clear(), coarse * MIN, by="market").columns == ["market", *BAR_SCHEMA]
