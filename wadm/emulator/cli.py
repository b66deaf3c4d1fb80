"""Command line of the emulator: ``wadm emulate ...`` or ``python -m wadm.emulator``.

`add_arguments` fills a parser, `run` blocks until SIGINT/SIGTERM. On start it
prints one line with the bound URLs and flushes, so a parent process can read
the port (``--port 0`` picks a free one)::

    emulator listening on ws://127.0.0.1:9443 (binance spot: ws://127.0.0.1:9443/..., bybit linear: ...)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from wadm.emulator.binance import MARKETS, SPOT_POLICY, USDM_POLICY
from wadm.emulator.bybit import BYBIT_POLICY
from wadm.emulator.bybit import MARKETS as BYBIT_MARKETS
from wadm.emulator.market import SyntheticSpec
from wadm.emulator.replay import ReplaySpec, infer_market
from wadm.emulator.rest import RestLimits
from wadm.emulator.server import Emulator

__all__ = ["add_arguments", "build_emulator", "run"]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to a parser.

    Args:
        parser: The (sub)command parser to extend.
    """
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=9443,
        help="TCP port; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--symbols",
        type=_csv,
        default=None,
        help="synthetic symbols for every market, comma separated (default BTCUSDT, or none when --replay is given)",
    )
    parser.add_argument(
        "--markets",
        type=_csv,
        default=list(MARKETS),
        help="markets of the synthetic symbols (default spot,usdm)",
    )
    parser.add_argument(
        "--bybit-markets",
        type=_csv,
        default=[],
        help="Bybit categories of the synthetic symbols, comma separated: spot,linear (default none)",
    )
    parser.add_argument(
        "--bybit-symbols",
        type=_csv,
        default=None,
        help="synthetic Bybit symbols (default: the --symbols)",
    )
    parser.add_argument(
        "--book",
        choices=["auto", "on", "off"],
        default="auto",
        help="order-book model: on first depth/kline need (auto), always, or never (default %(default)s)",
    )
    parser.add_argument(
        "--book-levels",
        type=int,
        default=1000,
        help="price levels per side of each synthetic book (default %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="trades/s per symbol per market (default %(default)s)",
    )
    parser.add_argument(
        "--max-fills",
        type=int,
        default=1,
        help="max fills per aggregate trade (default %(default)s)",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="recording to replay (repeatable); market from --replay-market or the file name",
    )
    parser.add_argument("--replay-market", choices=MARKETS, help="market of every --replay file")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="replay speed; 0 = as fast as possible (default 1)",
    )
    parser.add_argument("--loop", action="store_true", help="replay in a loop")
    parser.add_argument(
        "--replay-wait",
        action="store_true",
        help="hold each replay until a client of its market subscribes",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument(
        "--max-lifetime",
        type=float,
        default=None,
        help="connection lifetime in seconds (default 24 h)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=None,
        help="server ping interval in seconds, both markets (default spot 20, usdm 180)",
    )
    parser.add_argument(
        "--pong-timeout",
        type=float,
        default=None,
        help="seconds to wait for a pong (default spot 60, usdm 600)",
    )
    parser.add_argument(
        "--spot-msg-limit",
        type=int,
        default=SPOT_POLICY.max_messages_per_s,
        help="spot incoming messages/s per connection (default %(default)s)",
    )
    parser.add_argument(
        "--usdm-msg-limit",
        type=int,
        default=USDM_POLICY.max_messages_per_s,
        help="USD-M incoming messages/s per connection (default %(default)s)",
    )
    parser.add_argument(
        "--bybit-idle-timeout",
        type=float,
        default=BYBIT_POLICY.idle_timeout,
        help="seconds without a client message before Bybit closes a connection (default %(default)s)",
    )
    parser.add_argument(
        "--spot-weight",
        type=int,
        default=RestLimits().spot_weight,
        help="Binance spot REST weight per minute (default %(default)s)",
    )
    parser.add_argument(
        "--usdm-weight",
        type=int,
        default=RestLimits().usdm_weight,
        help="Binance USD-M REST weight per minute (default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        help="seconds between serverShutdown and close (default %(default)s)",
    )


def build_emulator(args: argparse.Namespace) -> Emulator:
    """Create (but do not start) an emulator from parsed arguments.

    Raises:
        ValueError: For an unknown market or a replay whose market is unknown.
    """
    overrides: dict[str, Any] = {}
    if args.max_lifetime is not None:
        overrides["max_lifetime"] = args.max_lifetime
    if args.ping_interval is not None:
        overrides["ping_interval"] = args.ping_interval
    if args.pong_timeout is not None:
        overrides["pong_timeout"] = args.pong_timeout
    spot = dataclasses.replace(SPOT_POLICY, max_messages_per_s=args.spot_msg_limit, **overrides)
    usdm = dataclasses.replace(USDM_POLICY, max_messages_per_s=args.usdm_msg_limit, **overrides)
    for market in args.markets:
        if market not in MARKETS:
            raise ValueError(f"unknown market {market!r}; expected one of {', '.join(MARKETS)}")
    for market in args.bybit_markets:
        if market not in BYBIT_MARKETS:
            raise ValueError(f"unknown Bybit market {market!r}; expected one of {', '.join(BYBIT_MARKETS)}")
    symbols = args.symbols if args.symbols is not None else ([] if args.replay else ["BTCUSDT"])
    bybit_symbols = args.bybit_symbols if args.bybit_symbols is not None else symbols
    book = {"auto": None, "on": True, "off": False}[args.book]
    common = {"rate": args.rate, "max_fills": args.max_fills, "book": book, "book_levels": args.book_levels}
    synthetic = [SyntheticSpec(market=m, symbol=s.upper(), **common) for s in symbols for m in args.markets]
    synthetic += [
        SyntheticSpec(venue="bybit", market=m, symbol=s.upper(), **common)
        for s in bybit_symbols
        for m in args.bybit_markets
    ]
    replays = []
    for path in args.replay:
        market = args.replay_market or infer_market(path)
        if market is None:
            raise ValueError(f"cannot infer the market of {path}; pass --replay-market")
        replays.append(
            ReplaySpec(
                path=path,
                market=market,
                speed=args.speed,
                loop=args.loop,
                wait_for_subscriber=args.replay_wait,
            )
        )
    bybit_overrides = {k: v for k, v in overrides.items() if k == "max_lifetime"}
    bybit = dataclasses.replace(BYBIT_POLICY, idle_timeout=args.bybit_idle_timeout, **bybit_overrides)
    return Emulator(
        host=args.host,
        port=args.port,
        spot_policy=spot,
        usdm_policy=usdm,
        bybit_policy=bybit,
        rest_limits=RestLimits(spot_weight=args.spot_weight, usdm_weight=args.usdm_weight),
        synthetic=synthetic,
        replays=replays,
        seed=args.seed,
        shutdown_grace=args.shutdown_grace,
    )


async def _serve(emu: Emulator) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await emu.start()
    try:
        urls = emu.urls["binance"]
        bybit = emu.urls["bybit"]
        print(
            f"emulator listening on {emu.url} (binance spot: {urls['spot']}, binance usdm: {urls['usdm']}, "
            f"bybit spot: {bybit['spot']}, bybit linear: {bybit['linear']})",
            flush=True,
        )
        await stop.wait()
    finally:
        await emu.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGINT or SIGTERM.

    Args:
        args: Arguments parsed with a parser that `add_arguments` filled.

    Returns:
        0 after a signal; 2 for invalid arguments; 1 when the port cannot be bound.
    """
    try:
        emu = build_emulator(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for replay in args.replay:
        if not replay.is_file():
            print(f"error: replay file not found: {replay}", file=sys.stderr)
            return 2
    try:
        _run_loop(_serve(emu))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
