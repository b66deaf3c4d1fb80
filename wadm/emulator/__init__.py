"""Loopback exchange emulator: a real WebSocket server with synthetic or replayed data.

Importing this package starts nothing. Typical use in a test::

    from wadm.emulator import Emulator, SyntheticSpec

    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=100)
    async with Emulator(synthetic=[spec]) as emu:
        spot_url = emu.urls["binance"]["spot"]   # ws://127.0.0.1:PORT/binance/spot
        ...
        ids = emu.delivered("btcusdt@trade", "spot")

Modules: `server` (the `Emulator`), `hub` (connections, channels, delivered log),
`connection` (per-connection rules), `binance`/`bybit` (routes, control
messages, trade frames), `binance_streams`/`bybit_streams` (depth, order-book
and kline streams), `market` (synthetic trades), `model`/`book`/`klines`
(order book and candles of a feed in market mode), `history` (trades kept for
REST), `rest`/`rest_binance`/`rest_bybit` (REST market data, weights),
`gateway` (the listening socket: REST here, WebSocket to picows), `streams`
(timed-stream scheduler), `faults` (fault injection), `replay` (recordings),
`control` (HTTP control endpoints), `frames` (frame encoding), `cli` (command
line).
"""

from wadm.emulator.binance import SPOT_POLICY, USDM_POLICY
from wadm.emulator.bybit import BYBIT_POLICY
from wadm.emulator.connection import ConnectionPolicy
from wadm.emulator.market import Clock, Instrument, SyntheticFeed, SyntheticSpec, wall_clock_ms
from wadm.emulator.replay import ReplayHandle, ReplaySpec
from wadm.emulator.rest import RestLimits
from wadm.emulator.server import MALFORMED_KINDS, Emulator
from wadm.emulator.streams import StreamTiming

__all__ = [
    "BYBIT_POLICY",
    "MALFORMED_KINDS",
    "SPOT_POLICY",
    "USDM_POLICY",
    "Clock",
    "ConnectionPolicy",
    "Emulator",
    "Instrument",
    "ReplayHandle",
    "ReplaySpec",
    "RestLimits",
    "StreamTiming",
    "SyntheticFeed",
    "SyntheticSpec",
    "wall_clock_ms",
]
