"""Binance trade decoding: recorded frames -> columnar batch, against plain ``orjson.loads``.

Every variant takes all ``@trade`` frames of a real recording (spot: about 9.8k frames, USD-M:
about 21k), does what the collector does per frame (decode, find the stream, check the trade id
against the high-water mark, append) and then cuts one batch into the stored trade schema. The
baseline only parses each frame with ``orjson.loads`` and keeps nothing, so the ratio is the
cost of the whole decode path relative to the cheapest possible JSON parse.

Variants:

* ``orjson.loads (baseline)``: bare parse of each frame, result dropped.
* ``wadm: msgspec typed, float on decode``: the shipped path, :class:`wadm.venues.binance.BinanceProtocol`
  with a fresh protocol per round, then :meth:`TradeStream.take`.
* ``msgspec typed, str + polars cast``: the same typed structs but prices and quantities kept as
  ``str``; polars casts the two string columns at batch time.
* ``orjson + dict -> column lists, cast``: ``orjson.loads`` and dict access into per-column lists
  of strings; polars casts at batch time.
* ``orjson + dict -> column lists, float()``: the same with ``float()`` per field while decoding.

Two diagnostic rows split the wadm path: its msgspec decoder alone, and ``feed()`` without the
final ``take()``; the rest of the wadm row is the batch cut.

Target (DESIGN.md section 5, STYLE.md 14): the wadm path at most 1.5x ``orjson.loads``.

Run: ``uv run pytest bench/bench_parse.py --benchmark-only``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from functools import partial
from operator import attrgetter
from typing import Any

import msgspec
import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from bench.conftest import Row, group, paired_ratios, record, recorded_trade_frames
from wadm.errors import VenueProtocolError
from wadm.records import Market
from wadm.venues import binance
from wadm.venues.base import TradeStream
from wadm.venues.binance import plan_trade_connections

BASELINE = "orjson.loads (baseline)"
WADM = "wadm: msgspec typed, float on decode"
TARGET_RATIO = 1.5
_MS = 1_000_000
_STORED = ("ts_event", "ts_recv", "id", "price", "qty", "side")
_STREAM = "btcusdt@trade"
_URL = "ws://127.0.0.1:1"


def _check(rows: dict[str, Row]) -> str:
    ratio = rows[WADM].ratio if WADM in rows else None
    if ratio is None:
        return ""
    return f"-> wadm paired x{ratio:.2f}: {'MET' if ratio <= TARGET_RATIO else 'NOT MET'}"


for _market in ("spot", "usdm"):
    group(f"parse-{_market}", f"parse: Binance {_market} @trade frames -> batch", kind="time", baseline=BASELINE,
          target=f"wadm decode path <= {TARGET_RATIO}x orjson.loads", check=_check)


# -- alternative 1: typed msgspec structs, prices kept as strings ------------------------------


class _TradeS(msgspec.Struct, tag_field="e", tag="trade", frozen=True, gc=False):
    id: int = msgspec.field(name="t")
    p: str
    q: str
    T: int
    m: bool


class _AggTradeS(msgspec.Struct, tag_field="e", tag="aggTrade", frozen=True, gc=False):
    id: int = msgspec.field(name="a")
    p: str
    q: str
    T: int
    m: bool


class _CombinedS(msgspec.Struct, frozen=True, gc=False):
    stream: str
    data: _TradeS | _AggTradeS | binance.Shutdown


_STR_SCHEMA = {"T": pl.Int64(), "ts_recv": pl.Int64(), "id": pl.Int64(), "p": pl.String(), "q": pl.String(),
               "m": pl.Boolean()}
_get_t, _get_id, _get_p, _get_q, _get_m = (attrgetter(a) for a in ("T", "id", "p", "q", "m"))


def _to_stored(raw: pl.DataFrame) -> pl.DataFrame:
    """The select of :func:`wadm.venues.binance.trades_to_frame`, with the string columns cast."""
    return raw.select(
        ts_event=pl.col("T") * _MS,
        ts_recv="ts_recv",
        id="id",
        price=pl.col("p").cast(pl.Float64),
        qty=pl.col("q").cast(pl.Float64),
        side=pl.when(pl.col("m")).then(-1).otherwise(1).cast(pl.Int8),
    ).filter(pl.col("price") > 0, pl.col("qty") > 0)


def _str_structs_to_frame(items: list[Any], ts_recv: list[int]) -> pl.DataFrame:
    raw = pl.DataFrame(
        {
            "T": list(map(_get_t, items)),
            "ts_recv": ts_recv,
            "id": list(map(_get_id, items)),
            "p": list(map(_get_p, items)),
            "q": list(map(_get_q, items)),
            "m": list(map(_get_m, items)),
        },
        schema=_STR_SCHEMA,
    )
    return _to_stored(raw)


# The shipped ``BinanceProtocol.feed`` byte for byte, with only its module-level decoder swapped:
# the per-frame bookkeeping (stream lookup, de-duplication, counters, bound) stays identical.
_feed_str = types.FunctionType(
    binance.BinanceProtocol.feed.__code__,
    {**vars(binance), "_decode_combined": msgspec.json.Decoder(_CombinedS).decode},
)


def _msgspec_str(market: Market, frames: list[bytes], ts_recv: list[int]) -> pl.DataFrame:
    (plan,) = plan_trade_connections(market, ("BTCUSDT",), _URL, trade_stream="trade")
    st = plan.protocol.streams[_STREAM]
    proto = binance.BinanceProtocol({_STREAM: dataclasses.replace(st, to_frame=_str_structs_to_frame)})
    for payload, ts in zip(frames, ts_recv, strict=True):
        _feed_str(proto, payload, ts)
    frame = proto.streams[_STREAM].take().frame
    assert frame is not None
    return frame


# -- alternative 2: orjson + dict access into column lists -------------------------------------


class _ColumnsProtocol:
    """``BinanceProtocol.feed`` rewritten over ``orjson.loads``: same bookkeeping, rows into column lists."""

    def __init__(self, streams: dict[str, TradeStream], to_float: bool) -> None:
        self.streams = streams
        self.to_float = to_float
        self.cols: dict[str, tuple[list[Any], ...]] = {name: ([], [], [], [], []) for name in streams}

    def feed(self, payload: bytes, ts_recv: int) -> None:
        obj = orjson.loads(payload)
        d = obj["data"]
        name = obj["stream"]
        st = self.streams.get(name)
        if st is None:
            raise VenueProtocolError("unknown_stream", name[:60])
        tid = d["t"] if d["e"] == "trade" else d["a"]
        last = st.last_id
        if tid != last + 1:
            if tid <= last:
                st.duplicates += 1
                return
            if last >= 0:
                st.missing_ids += tid - last - 1
        st.last_id = tid
        t_col, id_col, p_col, q_col, m_col = self.cols[name]
        if len(t_col) >= st.max_rows:
            st.dropped += 1
            return
        t_col.append(d["T"])
        id_col.append(tid)
        if self.to_float:
            p_col.append(float(d["p"]))
            q_col.append(float(d["q"]))
        else:
            p_col.append(d["p"])
            q_col.append(d["q"])
        m_col.append(d["m"])
        st.ts_recv.append(ts_recv)

    def take(self, name: str) -> pl.DataFrame:
        st = self.streams[name]
        cols, self.cols[name] = self.cols[name], ([], [], [], [], [])
        ts_recv, st.ts_recv = st.ts_recv, []
        num = pl.Float64() if self.to_float else pl.String()
        raw = pl.DataFrame(
            {"T": cols[0], "ts_recv": ts_recv, "id": cols[1], "p": cols[2], "q": cols[3], "m": cols[4]},
            schema={**_STR_SCHEMA, "p": num, "q": num},
        )
        return _to_stored(raw)


def _orjson_columns(market: Market, frames: list[bytes], ts_recv: list[int], to_float: bool) -> pl.DataFrame:
    (plan,) = plan_trade_connections(market, ("BTCUSDT",), _URL, trade_stream="trade")
    proto = _ColumnsProtocol(plan.protocol.streams, to_float)
    feed = proto.feed
    for payload, ts in zip(frames, ts_recv, strict=True):
        feed(payload, ts)
    return proto.take(_STREAM)


# -- wadm and the baseline ------------------------------------------------------------------------


def _wadm(market: Market, frames: list[bytes], ts_recv: list[int]) -> pl.DataFrame:
    (plan,) = plan_trade_connections(market, ("BTCUSDT",), _URL, trade_stream="trade")
    feed = plan.protocol.feed
    for payload, ts in zip(frames, ts_recv, strict=True):
        feed(payload, ts)
    frame = plan.protocol.streams[_STREAM].take().frame
    assert frame is not None
    return frame


def _wadm_decoder_only(market: Market, frames: list[bytes], ts_recv: list[int]) -> None:
    decode = binance._decode_combined
    for payload in frames:
        decode(payload)


def _wadm_feed_only(market: Market, frames: list[bytes], ts_recv: list[int]) -> None:
    (plan,) = plan_trade_connections(market, ("BTCUSDT",), _URL, trade_stream="trade")
    feed = plan.protocol.feed
    for payload, ts in zip(frames, ts_recv, strict=True):
        feed(payload, ts)


def _orjson_loads(market: Market, frames: list[bytes], ts_recv: list[int]) -> None:
    loads = orjson.loads
    for payload in frames:
        loads(payload)


VARIANTS: dict[str, Callable[[Market, list[bytes], list[int]], pl.DataFrame | None]] = {
    BASELINE: _orjson_loads,
    WADM: _wadm,
    "msgspec typed, str + polars cast": _msgspec_str,
    "orjson + dict -> column lists, cast": partial(_orjson_columns, to_float=False),
    "orjson + dict -> column lists, float()": partial(_orjson_columns, to_float=True),
    # Where the wadm path's time goes (diagnostics, not alternatives):
    "  part of wadm: msgspec decode only": _wadm_decoder_only,
    "  part of wadm: feed() without take()": _wadm_feed_only,
}

_frames_cache: dict[str, tuple[list[bytes], list[int]]] = {}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_parse(benchmark: Any, market: str, variant: str) -> None:
    """Decode every recorded trade frame of one market into one batch."""
    if market not in _frames_cache:
        _frames_cache[market] = recorded_trade_frames(market)
    frames, ts_recv = _frames_cache[market]
    mkt = Market(market)
    fn = VARIANTS[variant]
    # Every variant must produce the same batch as wadm's shipped path (a correctness check, not timing).
    out = fn(mkt, frames, ts_recv)
    if out is not None:
        assert out.columns == list(_STORED)
        assert_frame_equal(out, _wadm(mkt, frames, ts_recv))
        assert out.height == len(frames)
    benchmark.group = f"parse-{market}"
    benchmark.extra_info["frames"] = len(frames)
    benchmark(fn, mkt, frames, ts_recv)
    paired = [] if variant == BASELINE else paired_ratios(
        partial(_orjson_loads, mkt, frames, ts_recv), partial(fn, mkt, frames, ts_recv))
    record(f"parse-{market}", variant, benchmark, per=len(frames), paired=paired)
