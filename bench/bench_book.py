"""Order books: diff frames -> decode + sync + apply, and the stored top-100 snapshot with metrics.

Every figure is measured against a baseline timed in the same run (interleaved pairs, as in
``bench_parse.py``); nothing here asserts on time. The checks are about correctness: every
variant must leave the book an independent rebuild gives, and every way of taking a snapshot
must produce ``BookStream.sample()``'s row.

**Diffs** (``book-<venue>-<frames>`` groups). All frames of a stream go through the shipped
protocol's ``feed`` (:class:`wadm.venues.binance.BinanceBookProtocol`,
:class:`wadm.venues.bybit.BybitBookProtocol`): msgspec decode, stream lookup, the venue's
sequence rule (:mod:`wadm.book.sync`), the level updates and the crossed-book check
(:class:`wadm.book.l2.L2Book`). Every round starts from a fresh *live* book, seeded untimed
from the snapshot the stream starts at, so state never drifts between rounds. Baseline:
``orjson.loads`` of the same frames, result dropped.

* ``synthetic``: a seeded random stream (:func:`synthetic`) around 60,000.00 with 0.01 ticks and
  5,000 levels per side, sparse like Binance spot BTCUSDT (one level per ~20 ticks); each diff
  changes 5-30 levels (updates near the touch, deletions with quantity ``"0"``, inserts near or
  inside the spread), prices and quantities as decimal strings. The Binance frames (spot
  ``@depth@100ms``, contiguous ``U``/``u``) and the Bybit frames (``orderbook.200`` deltas after
  an in-band snapshot of the same book) carry the *same* level changes.
* ``recorded``: the depth frames of the two real captures in ``tests/data/binance`` that end
  after each file's own 1,000-level REST snapshot (spot: 3,449 diffs, 36 levels each on
  average; USD-M: 6,547 diffs of its ``@depth@0ms`` stream, 68 levels each).

Rows marked "part of wadm" split the path: msgspec decode alone, sync + apply of pre-decoded
diffs (``BookStream.on_diff``), ``L2Book.apply`` + ``crossed()`` alone. ``SortedDict book`` is
the alternative to L2Book's dicts + lazy heaps: the same diffs into a ``sortedcontainers``
``SortedDict`` per side.

**Snapshot** (``book-snapshot-<book>`` groups). :meth:`wadm.venues.streams.BookStream.sample`
(the top 100 levels per side within the trusted bounds + mid, spread and the band metrics: one
stored row) on a live book. Baseline: choosing the 100 best prices per side alone
(``heapq.nlargest``/``nsmallest`` over the dict keys, what ``L2Book.top`` starts with). Books:

* ``synthetic``: the synthetic book after its 10,000 diffs (about 5,000 levels per side, the
  1% band holding ~2,900 of them); its dicts are still nearly in price order.
* ``synthetic-shuffled``: the same levels loaded in random order. In a book that has run for
  hours the dicts' insertion order drifts away from price order and the level objects are spread
  over memory; this is the worst case of that drift.
* ``recorded-spot``: the real spot book after its 3,449 diffs (~1,200 bid and ~2,200 ask levels).

Alternatives produce the same row: ``sorted() keys + bisect`` (sort each side's keys, slice the
top, bisect the band edges, ``sum(map(dict.__getitem__, slice))`` per nested band) and the same
from a ``SortedDict`` book (no sort needed).

Targets (the book issue): at least 50,000 diff messages/s through decode + sync + apply on one
core; a top-100 snapshot with metrics in under 1 ms. The summary prints both verdicts.

Run: ``uv run pytest bench/bench_book.py --benchmark-only``.
"""

from __future__ import annotations

import bisect
import gzip
import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import pytest
from sortedcontainers import SortedDict

from bench.conftest import DATA, RECORDINGS, Row, group, paired_ratios, record
from wadm.book.l2 import L2Book, Level
from wadm.book.sync import BookState
from wadm.records import Market
from wadm.venues import binance, bybit
from wadm.venues.streams import BookStream

BASELINE = "orjson.loads (baseline)"
WADM = "wadm: feed() = decode + sync + apply"
SNAP_BASELINE = "heapq top-100 prices alone (baseline)"
SNAP_WADM = "wadm: BookStream.sample()"
TARGET_RATE = 50_000  # diff messages/s
TARGET_SNAPSHOT = 1e-3  # s
SEED = 20240808
LEVELS = 5_000  # per side
FRAMES = 10_000
ROUNDS = 15
DEPTH = 100
_MS = 1_000_000
_URL = "ws://127.0.0.1:1"
_SYMBOL = "BTCUSDT"
_BINANCE_STREAM = "btcusdt@depth@100ms"
_BYBIT_TOPIC = "orderbook.200.BTCUSDT"


# -- synthetic stream ----------------------------------------------------------------------------


@dataclass
class Synthetic:
    """A seeded book and a diff stream on it, as Binance spot and as Bybit frames."""

    bids: list[Level]  # the book the stream starts from
    asks: list[Level]
    last_update_id: int
    binance: list[bytes]
    bybit_snapshot: bytes
    bybit: list[bytes]
    ts_recv: list[int]
    levels_changed: int


def _qty(rng: random.Random) -> int:
    """A quantity in units of 1e-5 (Binance BTCUSDT's step), mostly small, sometimes large."""
    return max(1, int(rng.lognormvariate(7.5, 1.6)))


def synthetic(frames: int = FRAMES, levels: int = LEVELS, seed: int = SEED) -> Synthetic:
    """Generate the book and ``frames`` diffs; the book never crosses and keeps about ``levels`` per side."""
    rng = random.Random(seed)
    mid = 6_000_000  # ticks of 0.01
    # Levels are sparse, as on Binance spot BTCUSDT (its 1,000-level snapshot in tests/data spans
    # about 0.33% of the price, one level per ~20 ticks): gaps of 1 + Exp(mean 20) ticks, so 5,000
    # levels reach about 1.7% from the mid and the 1% band holds about 60% of them.
    bid_ticks, ask_ticks = [mid - 1], [mid]  # a one-tick spread to start with
    while len(bid_ticks) < levels:
        bid_ticks.append(bid_ticks[-1] - 1 - int(rng.expovariate(1 / 20)))
    while len(ask_ticks) < levels:
        ask_ticks.append(ask_ticks[-1] + 1 + int(rng.expovariate(1 / 20)))
    bids = {t: _qty(rng) for t in bid_ticks}
    asks = {t: _qty(rng) for t in ask_ticks}
    # sorted keys, ascending, for picking levels by distance from the touch
    bid_keys = sorted(bids)
    ask_keys = sorted(asks)

    def price_b(t: int) -> str:  # Binance: 8 decimals
        return f"{t // 100}.{t % 100:02d}000000"

    def qty_b(q: int) -> str:
        return f"{q // 100_000}.{q % 100_000:05d}000"

    def price_y(t: int) -> str:  # Bybit: as short as the tick
        return f"{t // 100}.{t % 100:02d}"

    def qty_y(q: int) -> str:
        return f"{q // 100_000}.{q % 100_000:05d}"

    start_bids = [(t / 100, q / 100_000) for t, q in sorted(bids.items(), reverse=True)]
    start_asks = [(t / 100, q / 100_000) for t, q in sorted(asks.items())]
    last = 40_000_000_000
    ts_ms = 1_723_161_255_208
    ts_ns = ts_ms * _MS + 3_000_000
    out_b: list[bytes] = []
    out_y: list[bytes] = []
    ts_recv: list[int] = []
    changed = 0
    seq = 90_000_000_000
    bybit_snapshot = orjson.dumps({
        "topic": _BYBIT_TOPIC, "type": "snapshot", "ts": ts_ms - 100,
        "data": {"s": _SYMBOL, "b": [[price_y(t), qty_y(bids[t])] for t in sorted(bids, reverse=True)],
                 "a": [[price_y(t), qty_y(asks[t])] for t in sorted(asks)], "u": 1_000, "seq": seq},
        "cts": ts_ms - 101,
    })
    u_y = 1_000
    for _ in range(frames):
        n = rng.randint(5, 30)
        changes: dict[tuple[int, int], int] = {}  # (side, tick) -> qty, one entry per level per diff
        for _ in range(n):
            side = rng.random() < 0.5
            book, keys = (bids, bid_keys) if side else (asks, ask_keys)
            size = len(keys)
            depth = min(int(rng.expovariate(1 / 15)), size - 1)  # distance from the touch, in levels
            idx = size - 1 - depth if side else depth
            kind = rng.random()
            # keep the side near ``levels``: fewer inserts when it is large, fewer deletions when small
            p_del = 0.2 + 0.1 * (size > levels) - 0.1 * (size < levels)
            if kind < p_del and size > 10:
                t = keys.pop(idx)
                del book[t]
                q = 0
            elif kind < 0.45:
                # a new level: inside the spread, or in a free tick near the touch
                best_other = ask_keys[0] if side else bid_keys[-1]
                best_own = keys[-1] if side else keys[0]
                if rng.random() < 0.15 and abs(best_other - best_own) > 1:
                    t = best_own + 1 if side else best_own - 1
                else:
                    offset = 1 + int(rng.expovariate(1 / 40))
                    t = best_own - offset if side else best_own + offset
                if t in book:
                    q = book[t] = _qty(rng)
                else:
                    bisect.insort(keys, t)
                    q = book[t] = _qty(rng)
            else:
                t = keys[idx]
                q = book[t] = _qty(rng)
            changes[(side, t)] = q
        changed += len(changes)
        b = sorted(((t, q) for (s, t), q in changes.items() if s), reverse=True)
        a = sorted((t, q) for (s, t), q in changes.items() if not s)
        first = last + 1
        last = first + len(changes) - 1 + rng.randint(0, 8)
        ts_ms += 100
        ts_ns += 100 * _MS + rng.randint(-500_000, 500_000)
        out_b.append(orjson.dumps({
            "stream": _BINANCE_STREAM,
            "data": {"e": "depthUpdate", "E": ts_ms, "s": _SYMBOL, "U": first, "u": last,
                     "b": [[price_b(t), qty_b(q)] for t, q in b], "a": [[price_b(t), qty_b(q)] for t, q in a]},
        }))
        u_y += 1
        seq += rng.randint(1, 50)
        out_y.append(orjson.dumps({
            "topic": _BYBIT_TOPIC, "type": "delta", "ts": ts_ms,
            "data": {"s": _SYMBOL, "b": [[price_y(t), qty_y(q)] for t, q in b],
                     "a": [[price_y(t), qty_y(q)] for t, q in a], "u": u_y, "seq": seq},
            "cts": ts_ms - 1,
        }))
        ts_recv.append(ts_ns)
        assert bid_keys[-1] < ask_keys[0]
    return Synthetic(start_bids, start_asks, 40_000_000_000, out_b, bybit_snapshot, out_y, ts_recv, changed)


# -- recorded streams ------------------------------------------------------------------------------


@dataclass
class Recorded:
    """A recording's REST snapshot and the ``@depth@100ms`` frames that end after it."""

    bids: list[Level]
    asks: list[Level]
    last_update_id: int
    limit: int
    frames: list[bytes]
    ts_recv: list[int]


def recorded(market: str) -> Recorded:
    """Read one recording in ``tests/data/binance``: its snapshot and the diffs the sync would apply."""
    snapshot: dict[str, Any] | None = None
    frames: list[tuple[bytes, int]] = []
    with gzip.open(DATA / RECORDINGS[market], "rb") as fh:
        for line in fh:
            ts, _, frame = line.rstrip(b"\n").partition(b" ")
            if frame.startswith(b'{"lastUpdateId"'):
                snapshot = orjson.loads(frame)
            elif b"@depth" in frame[:40]:
                # The USD-M capture subscribed to ``@depth@0ms`` (same payload, no batching); wadm
                # plans ``@depth@100ms``, so the stream name is rewritten to match the plan.
                frames.append((frame.replace(b'"btcusdt@depth@0ms"', b'"btcusdt@depth@100ms"', 1), int(ts)))
    assert snapshot is not None
    last = snapshot["lastUpdateId"]
    # Diffs the snapshot already holds are left out (spot: u <= lastUpdateId; USD-M: u < lastUpdateId).
    usdm = market == "usdm"
    kept = [(f, t) for f, t in frames if (u := orjson.loads(f)["data"]["u"]) > last or (usdm and u == last)]
    return Recorded(
        bids=[(float(p), float(q)) for p, q in snapshot["bids"]],
        asks=[(float(p), float(q)) for p, q in snapshot["asks"]],
        last_update_id=last,
        limit=len(snapshot["bids"]),
        frames=[f for f, _ in kept],
        ts_recv=[t for _, t in kept],
    )


# -- live books ------------------------------------------------------------------------------------


def _binance_live(market: Market, bids: list[Level], asks: list[Level], last_update_id: int,
                  limit: int) -> tuple[Any, BookStream]:
    """A Binance book protocol whose one stream is live on the given REST snapshot."""
    (plan,) = binance.plan_book_connections(market, (_SYMBOL,), _URL)
    proto = plan.protocol
    st = proto.streams[_BINANCE_STREAM]  # type: ignore[attr-defined]
    st.on_snapshot(last_update_id, bids, asks, limit, 0)
    assert st.state is BookState.LIVE
    return proto, st


def _bybit_live(snapshot: bytes) -> tuple[Any, BookStream]:
    """A Bybit book protocol whose one stream is live on an in-band snapshot frame."""
    (plan,) = bybit.plan_book_connections(Market.SPOT, (_SYMBOL,), _URL, depth=200)
    proto = plan.protocol
    assert proto.feed(snapshot, 0) == ()
    st = proto.streams[_BYBIT_TOPIC]  # type: ignore[attr-defined]
    assert st.state is BookState.LIVE
    return proto, st


class SortedBook:
    """The alternative to :class:`~wadm.book.l2.L2Book`: each side a ``SortedDict`` (price -> qty).

    Same semantics for a diff (a zero quantity deletes) and the same crossed check; the best
    prices and any price range come from the sorted keys instead of lazy heaps and full scans.
    """

    __slots__ = ("asks", "bids")

    def __init__(self, bids: list[Level], asks: list[Level]) -> None:
        self.bids = SortedDict({p: q for p, q in bids if q > 0})
        self.asks = SortedDict({p: q for p, q in asks if q > 0})

    def apply(self, bids: list[Level], asks: list[Level]) -> None:
        book = self.bids
        for p, q in bids:
            if q == 0:
                book.pop(p, None)
            else:
                book[p] = q
        book = self.asks
        for p, q in asks:
            if q == 0:
                book.pop(p, None)
            else:
                book[p] = q

    def crossed(self) -> bool:
        return bool(self.bids) and bool(self.asks) and self.bids.peekitem(-1)[0] >= self.asks.peekitem(0)[0]


# -- the stored snapshot row, three ways -------------------------------------------------------------


def _row_from_sorted(st: BookStream, now: int, bk: Any, ak: Any, bids: dict[float, float], asks: dict[float, float],
                     bid_left: Callable[[float], int], ask_right: Callable[[float], int]) -> tuple[object, ...]:
    """``sample()``'s row from ascending price sequences ``bk``/``ak`` and bisections into them."""
    bid, ask = bk[-1], ak[0]
    mid = (bid + ask) / 2
    n = len(bk)
    lo_i, hi_j = bid_left(st.bid_floor), ask_right(st.ask_ceiling)  # the trusted part
    top_b = bk[max(lo_i, n - DEPTH):][::-1]
    top_a = ak[:min(hi_j, DEPTH)]
    bget, aget = bids.__getitem__, asks.__getitem__
    # Bands are nested: sum the narrowest, then add each ring once (one pass over the widest band).
    sums: dict[float, tuple[float, float]] = {}
    b = a = 0.0
    prev_i, prev_j = n, 0
    for band in sorted(st.bands):
        i = max(bid_left(mid * (1 - band)), lo_i)
        j = min(ask_right(mid * (1 + band)), hi_j)
        b += sum(map(bget, bk[i:prev_i]))
        a += sum(map(aget, ak[prev_j:j]))
        prev_i, prev_j = min(i, prev_i), max(j, prev_j)
        sums[band] = (b, a)
    values: list[float] = []
    for band in st.bands:
        b, a = sums[band]
        values += (b, a, (b - a) / (b + a) if b + a else 0.0)
    return (now, st.ts_update, st.ts_recv, st.sync.book.update_id, mid, ask - bid, *values,
            top_b, list(map(bget, top_b)), top_a, list(map(aget, top_a)))


def sample_sorted_keys(st: BookStream, now: int) -> tuple[object, ...]:
    """``sample()``'s row from the same dicts: ``sorted()`` of the keys, bisect, sums of slices."""
    book = st.sync.book
    bk, ak = sorted(book.bids), sorted(book.asks)
    return _row_from_sorted(st, now, bk, ak, book.bids, book.asks,
                            partial(bisect.bisect_left, bk), partial(bisect.bisect_right, ak))


def sample_sorted_dict(st: BookStream, sb: SortedBook, now: int) -> tuple[object, ...]:
    """``sample()``'s row from a :class:`SortedBook` holding the same levels as the stream's book."""
    return _row_from_sorted(st, now, sb.bids.keys(), sb.asks.keys(), sb.bids, sb.asks,
                            sb.bids.bisect_left, sb.asks.bisect_right)


def _same_row(got: tuple[object, ...], want: tuple[object, ...]) -> None:
    """Equal rows: ids and levels exactly, the sums up to float rounding (they add in another order)."""
    assert len(got) == len(want)
    assert got[:4] == want[:4] and got[-4:] == want[-4:]
    for x, y in zip(got[4:-4], want[4:-4], strict=True):
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (x, y)  # type: ignore[arg-type]


# -- diffs: cases and variants ---------------------------------------------------------------------

DECODE = "  part of wadm: msgspec decode only"
ON_DIFF = "  part of wadm: sync + apply (on_diff)"
L2_APPLY = "  part of wadm: L2Book.apply + crossed"
SORTED_APPLY = "SortedDict book: apply + crossed"

DIFF_CASES: dict[str, tuple[str, list[str]]] = {
    "binance-synthetic": (f"book: synthetic Binance spot diffs ({FRAMES:,} frames, {LEVELS:,} levels/side)",
                          [BASELINE, WADM, DECODE, ON_DIFF, L2_APPLY, SORTED_APPLY]),
    "bybit-synthetic": (f"book: synthetic Bybit orderbook.200 deltas (same changes, {LEVELS:,} levels/side)",
                        [BASELINE, WADM, DECODE]),
    "binance-recorded-spot": ("book: recorded Binance spot diffs (tests/data, 1,000-level snapshot)",
                              [BASELINE, WADM, DECODE, ON_DIFF, L2_APPLY, SORTED_APPLY]),
    "binance-recorded-usdm": ("book: recorded Binance USD-M diffs (tests/data, 1,000-level snapshot)",
                              [BASELINE, WADM, DECODE, ON_DIFF, L2_APPLY, SORTED_APPLY]),
}

Prepare = Callable[[], Any]
Run = Callable[[Any], object]


@dataclass
class DiffCase:
    frames: list[bytes]
    variants: dict[str, tuple[Prepare, Run]]
    check: Callable[[str, Any], None]  # correctness after one run of a variant on its state
    levels: float  # level changes per frame


_cache: dict[str, Any] = {}


def _cached(key: str, make: Callable[[], Any]) -> Any:
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def _loads_all(frames: list[bytes]) -> Run:
    def run(_: object) -> None:
        loads = orjson.loads
        for payload in frames:
            loads(payload)
    return run


def _feed_all(frames: list[bytes], ts_recv: list[int]) -> Run:
    def run(proto: Any) -> None:
        feed = proto.feed
        for payload, ts in zip(frames, ts_recv, strict=True):
            feed(payload, ts)
    return run


def _decode_binance_all(frames: list[bytes]) -> Run:
    def run(_: object) -> None:
        decode = binance._decode_depth
        for payload in frames:
            decode(payload)
    return run


def _decode_bybit_all(frames: list[bytes]) -> Run:
    def run(_: object) -> None:
        envelope, data = bybit._decode_envelope, bybit._decode_book
        for payload in frames:
            data(envelope(payload).data)
    return run


def _on_diff_all(decoded: list[Any], ts_recv: list[int]) -> Run:
    def run(st: BookStream) -> None:
        on_diff = st.on_diff
        for d, ts in zip(decoded, ts_recv, strict=True):
            on_diff(d.U, d.u, d.pu, d.b, d.a, d.E * _MS, ts)
    return run


def _apply_all(decoded: list[Any]) -> Run:
    def run(book: L2Book | SortedBook) -> None:
        apply, crossed = book.apply, book.crossed
        for d in decoded:
            apply(d.b, d.a)
            crossed()
    return run


def _rebuild(bids: list[Level], asks: list[Level], frames: list[bytes]) -> tuple[dict[float, float], ...]:
    """The book after ``frames``, rebuilt independently (orjson and ``float()``), for the checks."""
    book = ({p: q for p, q in bids}, {p: q for p, q in asks})
    for frame in frames:
        obj = orjson.loads(frame)
        d = obj.get("data", obj)
        for side, key in zip(book, ("b", "a"), strict=True):
            for p, q in d[key]:
                if float(q) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = float(q)
    return book


def _binance_case(market: Market, bids: list[Level], asks: list[Level], last: int, limit: int,
                  frames: list[bytes], ts_recv: list[int]) -> DiffCase:
    decoded = [binance._decode_depth(f).data for f in frames]
    want = _rebuild(bids, asks, frames)

    def live_stream() -> BookStream:
        return _binance_live(market, bids, asks, last, limit)[1]

    def l2() -> L2Book:
        book = L2Book()
        book.load(bids, asks, last)
        return book

    def check(variant: str, state: Any) -> None:
        if variant in (WADM, ON_DIFF):
            st = state.streams[_BINANCE_STREAM] if variant == WADM else state
            assert st.state is BookState.LIVE and not st.sync.resyncs  # no resync: no gap either
            assert st.updates == len(frames) and st.sync.book.update_id == decoded[-1].u
            state = st.sync.book
        if variant in (WADM, ON_DIFF, L2_APPLY, SORTED_APPLY):
            assert (dict(state.bids), dict(state.asks)) == want

    return DiffCase(frames, {
        BASELINE: (lambda: None, _loads_all(frames)),
        WADM: (lambda: _binance_live(market, bids, asks, last, limit)[0], _feed_all(frames, ts_recv)),
        DECODE: (lambda: None, _decode_binance_all(frames)),
        ON_DIFF: (live_stream, _on_diff_all(decoded, ts_recv)),
        L2_APPLY: (l2, _apply_all(decoded)),
        SORTED_APPLY: (lambda: SortedBook(bids, asks), _apply_all(decoded)),
    }, check, sum(len(d.b) + len(d.a) for d in decoded) / len(decoded))


def _diff_case(name: str) -> DiffCase:
    if name == "binance-synthetic":
        s: Synthetic = _cached("synthetic", synthetic)
        return _binance_case(Market.SPOT, s.bids, s.asks, s.last_update_id, LEVELS, s.binance, s.ts_recv)
    if name == "bybit-synthetic":
        s = _cached("synthetic", synthetic)
        want = _rebuild(s.bids, s.asks, s.bybit)

        def check(variant: str, proto: Any) -> None:
            if variant == WADM:
                st = proto.streams[_BYBIT_TOPIC]
                assert st.state is BookState.LIVE and not st.sync.resyncs and not st.resubscribes
                assert (st.book.bids, st.book.asks) == want

        return DiffCase(s.bybit, {
            BASELINE: (lambda: None, _loads_all(s.bybit)),
            WADM: (lambda: _bybit_live(s.bybit_snapshot)[0], _feed_all(s.bybit, s.ts_recv)),
            DECODE: (lambda: None, _decode_bybit_all(s.bybit)),
        }, check, s.levels_changed / len(s.bybit))
    market = name.rsplit("-", 1)[1]
    r: Recorded = _cached(f"recorded-{market}", lambda: recorded(market))
    return _binance_case(Market(market), r.bids, r.asks, r.last_update_id, r.limit, r.frames, r.ts_recv)


def paired_with_setup(baseline: tuple[Prepare, Run], variant: tuple[Prepare, Run], *, budget: float = 2.0,
                      min_pairs: int = 15, max_pairs: int = 400) -> list[float]:
    """:func:`bench.conftest.paired_ratios` for runs that need fresh state: each side's ``prepare`` is untimed."""
    clock = time.perf_counter
    (b_prep, b_run), (v_prep, v_run) = baseline, variant
    v_run(v_prep())  # warm up both
    b_run(b_prep())
    ratios: list[float] = []
    started = clock()
    while len(ratios) < max_pairs and (len(ratios) < min_pairs or clock() - started < budget):
        b_state, v_state = b_prep(), v_prep()
        if len(ratios) % 2:
            t0 = clock()
            v_run(v_state)
            t1 = clock()
            b_run(b_state)
            t2 = clock()
            ratios.append((t1 - t0) / (t2 - t1))
        else:
            t0 = clock()
            b_run(b_state)
            t1 = clock()
            v_run(v_state)
            t2 = clock()
            ratios.append((t2 - t1) / (t1 - t0))
    return ratios


def _check_rate(rows: dict[str, Row]) -> str:
    row, base = rows.get(WADM), rows.get(BASELINE)
    if row is None or not row.per:
        return ""
    rate = row.per / row.value
    out = f"-> wadm {rate:,.0f} msgs/s (median round)"
    if base is not None and row.ratio:
        out += f", {row.per / base.value / row.ratio:,.0f} msgs/s (baseline median / paired x)"
    return out + (": MET" if rate >= TARGET_RATE else ": NOT MET")


for _case, (_title, _) in DIFF_CASES.items():
    group(f"book-{_case}", _title, kind="time", baseline=BASELINE,
          target=f">= {TARGET_RATE:,} diff messages/s through decode + sync + apply", check=_check_rate)


@pytest.mark.parametrize(("case", "variant"), [(c, v) for c, (_, vs) in DIFF_CASES.items() for v in vs])
def test_diffs(benchmark: Any, case: str, variant: str) -> None:
    """All frames of one diff stream through one variant, on a fresh live book per round."""
    dc: DiffCase = _cached(f"diffs-{case}", lambda: _diff_case(case))
    prepare, run = dc.variants[variant]
    state = prepare()  # correctness first (not timed): the book ends where an independent rebuild does
    run(state)
    dc.check(variant, state)
    n = len(dc.frames)
    benchmark.group = f"book-{case}"
    benchmark.extra_info["frames"] = n
    benchmark.pedantic(run, setup=lambda: ((prepare(),), {}), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    paired = [] if variant == BASELINE else paired_with_setup(dc.variants[BASELINE], (prepare, run))
    rate = n / float(benchmark.stats.stats.median)
    note = f"{rate:>10,.0f} msgs/s"
    if variant == BASELINE:
        note += f"  ({n:,} frames, {dc.levels:.1f} levels/frame)"
    record(f"book-{case}", variant, benchmark, per=n, note=note, paired=paired)


# -- snapshot: top-100 + metrics ---------------------------------------------------------------------

LEVELS_100 = "  part of wadm: levels(100)"
METRICS = "  part of wadm: metrics()"
SORTED_KEYS = "alternative: sorted() keys + bisect"
SORTED_DICT = "alternative: SortedDict book + bisect"
SNAP_VARIANTS = [SNAP_BASELINE, SNAP_WADM, LEVELS_100, METRICS, SORTED_KEYS, SORTED_DICT]
SNAP_CASES = {
    "synthetic": f"book snapshot: top-{DEPTH} + metrics, synthetic book after {FRAMES:,} diffs",
    "synthetic-shuffled": "book snapshot: the same levels, loaded in random order (an aged book's dicts)",
    "recorded-spot": "book snapshot: recorded Binance spot book after its diffs",
}


def _snapshot_stream(case: str) -> BookStream:
    """A live Binance stream for the snapshot benchmark."""
    if case == "recorded-spot":
        r: Recorded = _cached("recorded-spot", lambda: recorded("spot"))
        proto, st = _binance_live(Market.SPOT, r.bids, r.asks, r.last_update_id, r.limit)
        _feed_all(r.frames, r.ts_recv)(proto)
        return st
    s: Synthetic = _cached("synthetic", synthetic)
    proto, st = _binance_live(Market.SPOT, s.bids, s.asks, s.last_update_id, LEVELS)
    _feed_all(s.binance, s.ts_recv)(proto)
    if case == "synthetic":
        return st
    # The same book, its levels inserted in random order: in a book that has run for hours the
    # dicts' insertion order no longer follows price, and the levels sit all over the heap.
    rng = random.Random(SEED)
    bids, asks = list(st.book.bids.items()), list(st.book.asks.items())
    rng.shuffle(bids)
    rng.shuffle(asks)
    fresh = _binance_live(Market.SPOT, bids, asks, st.book.update_id, len(bids))[1]
    fresh.bid_floor, fresh.ask_ceiling = st.bid_floor, st.ask_ceiling
    return fresh


def _check_snapshot(rows: dict[str, Row]) -> str:
    row = rows.get(SNAP_WADM)
    if row is None:
        return ""
    ok = row.value < TARGET_SNAPSHOT
    return f"-> wadm sample() {row.value * 1e6:,.0f} us (median): {'MET' if ok else 'NOT MET'}"


for _case, _title in SNAP_CASES.items():
    group(f"book-snapshot-{_case}", _title, kind="time", baseline=SNAP_BASELINE,
          target=f"top-{DEPTH} snapshot with metrics < {TARGET_SNAPSHOT * 1e3:g} ms", check=_check_snapshot)


@pytest.mark.parametrize(("case", "variant"), [(c, v) for c in SNAP_CASES for v in SNAP_VARIANTS])
def test_snapshot(benchmark: Any, case: str, variant: str) -> None:
    """One stored book snapshot (top 100 per side + mid, spread and band metrics) of a live book."""
    st: BookStream = _cached(f"snapshot-{case}", lambda: _snapshot_stream(case))
    book = st.book
    assert st.state is BookState.LIVE
    sb: SortedBook = _cached(f"sorted-{case}", lambda: SortedBook(list(book.bids.items()), list(book.asks.items())))

    def wadm_sample() -> None:
        st.sample(1)
        st.rows.pop()

    fns: dict[str, Callable[[], object]] = {
        SNAP_BASELINE: lambda: (heapq.nlargest(DEPTH, book.bids), heapq.nsmallest(DEPTH, book.asks)),
        SNAP_WADM: wadm_sample,
        LEVELS_100: lambda: st.levels(DEPTH),
        METRICS: st.metrics,
        SORTED_KEYS: lambda: sample_sorted_keys(st, 1),
        SORTED_DICT: lambda: sample_sorted_dict(st, sb, 1),
    }
    fn = fns[variant]
    # Correctness (not timed): every way of taking the row gives sample()'s row.
    assert st.sample(1)
    want = st.rows.pop()
    _same_row(sample_sorted_keys(st, 1), want)
    _same_row(sample_sorted_dict(st, sb, 1), want)
    benchmark.group = f"book-snapshot-{case}"
    benchmark(fn)
    paired = [] if variant == SNAP_BASELINE else paired_ratios(fns[SNAP_BASELINE], fn)
    note = f"({len(book.bids):,} bid + {len(book.asks):,} ask levels)" if variant == SNAP_BASELINE else ""
    record(f"book-snapshot-{case}", variant, benchmark, note=note, paired=paired)
