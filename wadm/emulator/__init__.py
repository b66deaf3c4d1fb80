"""Loopback exchange emulator: a real WebSocket server with synthetic or replayed data.

Importing this package starts nothing. Typical use in a test::

    from wadm.emulator import Emulator, SyntheticSpec

    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=100)
    async with Emulator(synthetic=[spec]) as emu:
        spot_url = emu.urls["binance"]["spot"]   # ws://127.0.0.1:PORT/binance/spot
        ...
        ids = emu.delivered("btcusdt@trade", "spot")

Modules: `server` (the `Emulator`), `hub` (connections, channels, delivered log),
`binance` (routes, control messages, frame templates), `market` (synthetic
trades), `replay` (recordings), `control` (HTTP endpoints), `frames` (frame
encoding), `cli` (command line).
"""

from wadm.emulator.binance import SPOT_POLICY, USDM_POLICY
from wadm.emulator.connection import ConnectionPolicy
from wadm.emulator.market import Instrument, SyntheticFeed, SyntheticSpec
from wadm.emulator.replay import ReplayHandle, ReplaySpec
from wadm.emulator.server import MALFORMED_KINDS, Emulator

__all__ = [
    "MALFORMED_KINDS",
    "SPOT_POLICY",
    "USDM_POLICY",
    "ConnectionPolicy",
    "Emulator",
    "Instrument",
    "ReplayHandle",
    "ReplaySpec",
    "SyntheticFeed",
    "SyntheticSpec",
]
