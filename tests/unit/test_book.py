"""Order books: real recordings replay exactly; generated streams never leave a wrong book live."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.conftest import rebuild, recorded_frames
from wadm.book import BinanceBookSync, BookState, BybitBookSync, L2Book, NeedSnapshot, Resubscribe, book_metrics


def _levels(rows: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in rows]


@pytest.mark.parametrize(("name", "futures"), [("spot_btcusdt_20240808.gz", False),
                                                ("usdm_btcusdt_20240808.gz", True)])
def test_recording_replays_with_zero_gaps_and_equals_an_independent_rebuild(name: str, futures: bool) -> None:
    sync = BinanceBookSync("BTCUSDT", futures=futures)
    actions = []
    snapshot = None
    diffs = []
    for _, frame in recorded_frames(name):
        obj = orjson.loads(frame)
        if "lastUpdateId" in obj:
            snapshot = obj
            actions.append(sync.on_snapshot(obj["lastUpdateId"], _levels(obj["bids"]), _levels(obj["asks"])))
            continue
        d = obj["data"]
        if d.get("e") != "depthUpdate":
            continue
        diffs.append(d)
        actions.append(sync.on_diff(d["U"], d["u"], d.get("pu", -1), _levels(d["b"]), _levels(d["a"])))
    assert snapshot is not None
    assert [a for a in actions if a is not None] == [NeedSnapshot("BTCUSDT", "initial")]
    assert sync.state is BookState.LIVE and not sync.resyncs

    bids, asks = rebuild(snapshot, diffs, futures)
    assert sync.book.bids == bids
    assert sync.book.asks == asks
    assert sync.book.update_id == diffs[-1]["u"]
    assert not sync.book.crossed()


def test_top_and_metrics() -> None:
    book = L2Book()
    book.load([(100.0, 1.0), (99.9, 2.0), (90.0, 5.0)], [(100.1, 3.0), (100.2, 1.0), (120.0, 9.0)], 7)
    bids, asks = book.top(2)
    assert bids == [(100.0, 1.0), (99.9, 2.0)] and asks == [(100.1, 3.0), (100.2, 1.0)]
    mid, spread, bands = book_metrics(book)
    assert mid == pytest.approx(100.05) and spread == pytest.approx(0.1)
    assert (bands["bid_depth_0.1pct"], bands["ask_depth_0.1pct"]) == (1.0, 3.0)  # 99.95 .. 100.15
    assert (bands["bid_depth_0.5pct"], bands["ask_depth_0.5pct"]) == (3.0, 4.0)  # 99.55 .. 100.55
    assert bands["imbalance_0.5pct"] == pytest.approx((3 - 4) / 7)
    assert bands["bid_depth_1pct"] == 3.0
    book.apply([(100.0, 0.0), (100.05, 4.0)], [(100.1, 0.0)])
    assert (book.best_bid(), book.best_ask()) == (100.05, 100.2)
    book.apply([(100.3, 1.0)], [])
    assert book.crossed()


# ---- property tests: generated diff streams with injected faults -----------------------------

PRICES = st.integers(min_value=1, max_value=40)


@st.composite
def _market(draw: st.DrawFn) -> list[tuple[list[tuple[float, float]], list[tuple[float, float]]]]:
    """A sequence of diffs that never crosses: bids on ticks 1..20, asks on 21..40."""
    n = draw(st.integers(min_value=1, max_value=60))
    out = []
    for _ in range(n):
        bids = [(float(p), float(draw(st.integers(0, 5)))) for p in draw(st.lists(st.integers(1, 20), max_size=4))]
        asks = [(float(p), float(draw(st.integers(0, 5)))) for p in draw(st.lists(st.integers(21, 40), max_size=4))]
        out.append((bids, asks))
    return out


def _truth(diffs: list[tuple[list[tuple[float, float]], list[tuple[float, float]]]], upto: int) -> L2Book:
    book = L2Book()
    for bids, asks in diffs[:upto]:
        book.apply(bids, asks)
    return book


@settings(max_examples=200, deadline=None)
@given(diffs=_market(), futures=st.booleans(), data=st.data())
def test_binance_book_is_never_silently_wrong(diffs: list, futures: bool, data: st.DataObject) -> None:  # type: ignore[type-arg]
    # Diff i covers update ids [10*i+1, 10*i+10] (with gaps in between on USD-M, as there).
    def ids(i: int) -> tuple[int, int, int]:
        first, last = 10 * i + 1, 10 * i + 10
        if futures:
            first += 3  # USD-M update ids are not contiguous between events; pu links them
        return first, last, 10 * i if i else 0

    deliveries = list(range(len(diffs)))
    for fault in data.draw(st.lists(st.sampled_from(["drop", "dup", "swap"]), min_size=1, max_size=4)):
        if len(deliveries) < 2:
            break
        k = data.draw(st.integers(0, len(deliveries) - 2))
        if fault == "drop":
            del deliveries[k]
        elif fault == "dup":
            deliveries.insert(k + 1, deliveries[k])
        else:
            deliveries[k], deliveries[k + 1] = deliveries[k + 1], deliveries[k]
    snap_after = data.draw(st.integers(0, len(deliveries)))

    sync = BinanceBookSync("X", futures=futures)
    asked = 0
    for n, i in enumerate(deliveries):
        if n == snap_after and asked:
            applied_upto = max(deliveries[:n]) + 1 if n else 0  # diffs the venue has produced by now
            truth = _truth(diffs, applied_upto)
            sync.on_snapshot(ids(applied_upto)[1] - 10 if applied_upto else 0, list(truth.bids.items()),
                             list(truth.asks.items()))
        first, last, prev = ids(i)
        if sync.on_diff(first, last, prev, diffs[i][0], diffs[i][1]) is not None:
            asked += 1
        if sync.state is BookState.LIVE:
            # A live book at update id 10*k must equal the venue's book after its first k diffs.
            assert sync.book.update_id % 10 == 0
            truth = _truth(diffs, sync.book.update_id // 10)
            assert sync.book.bids == truth.bids and sync.book.asks == truth.asks, "live book differs from truth"
    event(f"resyncs={sum(sync.resyncs.values())}")
    # After a resync with a fresh snapshot of the truth, the book equals the truth again.
    if sync.state is BookState.RESYNCING:
        end = len(diffs)
        truth = _truth(diffs, end)
        assert sync.on_snapshot(ids(end)[1] - 10, list(truth.bids.items()), list(truth.asks.items())) is None
        assert sync.state is BookState.LIVE
        assert sync.book.bids == truth.bids and sync.book.asks == truth.asks


@settings(max_examples=200, deadline=None)
@given(diffs=_market(), data=st.data())
def test_bybit_book_is_never_silently_wrong(diffs: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    sync = BybitBookSync("X")
    truth = L2Book()
    sync.on_message(True, 5, [], [])
    u = 5
    resubscribed = 0
    for bids, asks in diffs:
        truth.apply(bids, asks)
        u += 1
        fault = data.draw(st.sampled_from(["none", "none", "none", "drop", "dup", "restart"]))
        if fault == "drop":
            continue
        if fault == "restart":  # service restart: u=1 snapshot of the truth
            u = 1
            action = sync.on_message(False, 1, list(truth.bids.items()), list(truth.asks.items()))
        else:
            action = sync.on_message(False, u, bids, asks)
            if fault == "dup":
                sync.on_message(False, u, bids, asks)
        if isinstance(action, Resubscribe):
            resubscribed += 1
            assert sync.state is BookState.RESYNCING
            # The venue answers a resubscription with a snapshot of the truth.
            sync.on_message(True, u, list(truth.bids.items()), list(truth.asks.items()))
        if sync.state is BookState.LIVE:
            assert sync.book.bids == truth.bids and sync.book.asks == truth.asks
    event(f"resubscribed={resubscribed}")
    assert sync.state is BookState.LIVE


def test_binance_snapshot_older_than_the_buffer_is_refused_and_the_buffer_kept() -> None:
    sync = BinanceBookSync("X", futures=False)
    assert sync.on_diff(101, 110, -1, [(1.0, 1.0)], []) == NeedSnapshot("X", "initial")
    assert sync.on_diff(111, 120, -1, [(1.0, 2.0)], []) is None
    assert sync.on_snapshot(90, [], [(5.0, 1.0)]) == NeedSnapshot("X", "snapshot_older_than_buffer")
    assert sync.state is BookState.RESYNCING and len(sync.buffer) == 2
    assert sync.on_snapshot(105, [(1.0, 1.0)], [(5.0, 1.0)]) is None
    assert sync.state is BookState.LIVE and sync.book.bids == {1.0: 2.0} and sync.book.update_id == 120


def test_binance_crossed_book_resyncs() -> None:
    sync = BinanceBookSync("X", futures=True)
    sync.on_diff(5, 10, 4, [], [])
    sync.on_snapshot(8, [(1.0, 1.0)], [(2.0, 1.0)])
    assert sync.state is BookState.LIVE
    assert sync.on_diff(11, 12, 10, [(3.0, 1.0)], []) == NeedSnapshot("X", "crossed")
    assert sync.state is BookState.RESYNCING and sync.resyncs == {"crossed": 1}


def test_band_edges_are_exact() -> None:
    # mid 100: the 0.5 % band is [99.5, 100.5]. In floats 100 * 1.005 is 100.49999999999999, which
    # would leave out the ask at 100.5 (imbalance 0.667 instead of (45 - 29) / 74).
    book = L2Book()
    book.load([(99.9, 20.0), (99.6, 25.0), (99.5, 7.0), (99.4, 1.0)],
              [(100.1, 4.0), (100.3, 5.0), (100.5, 20.0), (100.6, 100.0)], 1)
    mid, spread, metrics = book_metrics(book)
    assert (mid, spread) == (100.0, 0.2)
    assert (metrics["bid_depth_0.5pct"], metrics["ask_depth_0.5pct"]) == (52.0, 29.0)  # 99.5 and 100.5 both in
    assert metrics["imbalance_0.5pct"] == round((52 - 29) / 81, 10)
    assert (metrics["bid_depth_0.1pct"], metrics["ask_depth_0.1pct"]) == (20.0, 4.0)  # [99.9, 100.1], both ends in
