"""Order books against the in-process emulator: a shallow snapshot re-seeded as the price walks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import links, streams, until
from wadm.book.sync import BookState
from wadm.config import Settings, StreamTarget
from wadm.emulator import Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.service import Service
from wadm.records import Market, Venue
from wadm.store import SqliteStore
from wadm.venues.streams import BookStream

pytestmark = pytest.mark.asyncio


async def test_a_shallow_book_is_reseeded_as_the_price_walks_and_stays_exact(tmp_path: Path) -> None:
    # 20-level snapshots, 10 levels stored: trades eat the touch, the price walks past the
    # snapshot's edge within seconds, and the book must be re-seeded without ever going down.
    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=400, book=True, max_fills=3)
    async with Emulator(synthetic=[spec], seed=5) as emu:
        settings = Settings(
            collectors_start_delay=0.0,
            targets=(StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT",)),),
            channels=("book",),
            binance_spot_ws_url=emu.urls["binance"]["spot"],
            binance_spot_rest_url=emu.rest_urls["binance"]["spot"],
            book_depth=20,
            book_snapshot_depth=10,
            book_snapshot_interval=0.2,
            stale_after=5.0,
        )
        svc = Service(settings, SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            book = next(st for st in streams(svc) if isinstance(st, BookStream))
            await until(lambda: book.state is BookState.LIVE, 10, "the book to go live")
            await until(lambda: book.refreshes >= 1, 30, "the book to be re-seeded")
            emu.pause()
            await until(lambda: book.book.update_id == emu.true_book("binance", "spot", "BTCUSDT", 1)[2], 10,
                        "the last update to arrive")
            bids, asks = book.levels(10)
            true_bids, true_asks, update_id = emu.true_book("binance", "spot", "BTCUSDT", 10)
            assert book.book.update_id == update_id
            assert len(bids) >= 5 and len(asks) >= 5  # the re-seeded bounds hold the touch again
            assert bids == [(float(p), float(q)) for p, q in true_bids[: len(bids)]]
            assert asks == [(float(p), float(q)) for p, q in true_asks[: len(asks)]]
            assert not book.sync.resyncs  # re-seeding never took the book down
            assert svc.writer.stats.gaps[book.spec.name] == 0  # no gap was recorded
        finally:
            await svc.stop()


async def test_books_stay_live_through_make_before_break_rotations(tmp_path: Path) -> None:
    specs = [SyntheticSpec(market="usdm", symbol="BTCUSDT", rate=300, book=True),
             SyntheticSpec(market="spot", symbol="BTCUSDT", rate=300, book=True),
             SyntheticSpec(market="linear", symbol="ETHUSDT", rate=300, venue="bybit", book=True)]
    async with Emulator(synthetic=specs, seed=8) as emu:
        settings = Settings(
            collectors_start_delay=0.0,
            targets=(StreamTarget(venue=Venue.BINANCE, market=Market.USDM, symbols=("BTCUSDT",)),
                     StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT",)),
                     StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("ETHUSDT",))),
            channels=("book",),
            binance_spot_ws_url=emu.urls["binance"]["spot"],
            binance_spot_rest_url=emu.rest_urls["binance"]["spot"],
            binance_usdm_ws_url=emu.urls["binance"]["usdm"],
            binance_usdm_rest_url=emu.rest_urls["binance"]["usdm"],
            bybit_ws_url=emu.urls["bybit"]["linear"].rsplit("/v5/", 1)[0],
            rotate_after=2.0,
            stale_after=5.0,
        )
        svc = Service(settings, SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            books = [st for st in streams(svc) if isinstance(st, BookStream)]
            await until(lambda: all(b.state is BookState.LIVE for b in books), 10, "the books to go live")
            await until(lambda: all(link.state.rotations >= 3 for link in links(svc)), 30, "three rotations each")
            emu.pause()

            def exact(book: BookStream) -> bool:
                true_bids, true_asks, _ = emu.true_book(str(book.venue), str(book.market), book.spec.symbol, 20)
                bids, asks = book.levels(20)
                return (bids == [(float(p), float(q)) for p, q in true_bids]
                        and asks == [(float(p), float(q)) for p, q in true_asks])

            await until(lambda: all(exact(b) for b in books), 10, "every book to equal the true book")
            for book in books:
                # The hand-overs never broke a book: no resync, no gap.
                assert not book.sync.resyncs and svc.writer.stats.gaps[book.spec.name] == 0, (book.spec,
                                                                                              book.sync.resyncs)
        finally:
            await svc.stop()
