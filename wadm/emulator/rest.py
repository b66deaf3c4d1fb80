"""REST market-data endpoints: routing, weight limits and injected REST faults.

Served on the emulator's port by `wadm.emulator.gateway` (plain HTTP GET):

- ``/binance/spot/api/v3/...`` and ``/binance/usdm/fapi/v1/...`` (`wadm.emulator.rest_binance`);
- ``/bybit/v5/market/...`` (`wadm.emulator.rest_bybit`).

Binance request weight is counted per market in fixed windows of
`RestLimits.window` seconds aligned to the emulator clock (one minute by
default), reported in ``X-MBX-USED-WEIGHT-1M``. A request that takes the total
over the budget gets 429 with ``Retry-After`` (seconds to the next window);
after `RestLimits.ban_after` such 429s in one window every request gets 418
for `RestLimits.ban_seconds`.

`RestFaults` holds the injected REST faults; each applies to the next N
matching requests: ``status`` (any endpoint answers a forced status such as
429 or 418), and for book snapshots (Binance ``depth``, Bybit ``orderbook``)
``fail`` (5xx), ``slow`` (answer delayed) and ``stale`` (a book N updates old).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from wadm.emulator.market import Clock
from wadm.emulator.query import QueryParams

if TYPE_CHECKING:
    from wadm.emulator.server import Emulator

__all__ = [
    "JSON_HEADERS",
    "REST_PREFIXES",
    "BadParam",
    "HttpResponse",
    "Params",
    "RestApi",
    "RestFault",
    "RestFaults",
    "RestLimits",
    "WeightLimiter",
]

REST_PREFIXES = ("/binance/spot/api/", "/binance/usdm/fapi/", "/bybit/v5/market/")
"""Path prefixes served by `RestApi`."""

JSON_HEADERS = {"Content-Type": "application/json;charset=UTF-8"}


@dataclass(slots=True)
class HttpResponse:
    """A plain HTTP response.

    Attributes:
        status: HTTP status.
        body: Response body.
        headers: Extra headers (``Content-Length`` and ``Connection`` are added).
        delay: Seconds to wait before sending it.
    """

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    delay: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RestLimits:
    """Binance request-weight budgets (per market, all clients share them).

    Attributes:
        spot_weight: Spot weight per window (``exchangeInfo`` shows it).
        usdm_weight: USD-M weight per window.
        window: Window length in seconds (aligned to the emulator clock).
        ban_after: 429 answers in one window before the client is banned (418).
        ban_seconds: Length of a ban.
    """

    spot_weight: int = 6000
    usdm_weight: int = 2400
    window: float = 60.0
    ban_after: int = 3
    ban_seconds: float = 120.0


class WeightLimiter:
    """Fixed-window weight accounting of one Binance market."""

    def __init__(self, budget: int, limits: RestLimits, clock: Clock) -> None:
        """Create a limiter with nothing used.

        Args:
            budget: Weight allowed per window.
            limits: Window, ban threshold and ban length.
            clock: Emulator clock (ms).
        """
        self.budget = budget
        self.limits = limits
        self.clock = clock
        self.used = 0
        self.rejected = 0
        self.banned_until = 0
        self._window = -1

    def charge(self, weight: int) -> tuple[int | None, float]:
        """Count a request.

        Args:
            weight: The request's weight.

        Returns:
            ``(None, 0)`` when allowed, else ``(429 or 418, retry_after_seconds)``.
        """
        now = self.clock()
        size = max(1, int(self.limits.window * 1000))
        if now < self.banned_until:
            return 418, (self.banned_until - now) / 1000
        window = now // size
        if window != self._window:
            self._window = window
            self.used = 0
            self.rejected = 0
        retry = ((window + 1) * size - now) / 1000
        if self.used > self.budget:
            self.rejected += 1
            if self.rejected > self.limits.ban_after:
                self.banned_until = now + int(self.limits.ban_seconds * 1000)
                self.rejected = 0
                return 418, self.limits.ban_seconds
            return 429, retry
        self.used += weight
        if self.used > self.budget:
            self.rejected += 1
            return 429, retry
        return None, 0.0


@dataclass(slots=True)
class RestFault:
    """One injected REST fault (see the module docstring for the kinds)."""

    kind: str
    remaining: int
    value: float = 0.0
    retry_after: float = 1.0
    venue: str | None = None
    market: str | None = None
    symbol: str | None = None

    def matches(self, venue: str, market: str, symbol: str | None) -> bool:
        """Whether the fault applies to a request."""
        return (
            (self.venue is None or self.venue == venue)
            and (self.market is None or self.market == market)
            and (self.symbol is None or (symbol is not None and self.symbol == symbol.upper()))
        )


class RestFaults:
    """Pending REST faults, consumed by matching requests in order."""

    KINDS = ("status", "fail", "slow", "stale")

    def __init__(self) -> None:
        self.pending: list[RestFault] = []

    def add(self, fault: RestFault) -> None:
        """Queue a fault (replacing nothing; faults of one kind apply in order)."""
        if fault.kind not in self.KINDS:
            raise ValueError(f"unknown REST fault {fault.kind!r}")
        if fault.remaining > 0:
            self.pending.append(fault)

    def take(self, kind: str, venue: str, market: str, symbol: str | None) -> RestFault | None:
        """Consume one use of the first matching fault of ``kind``."""
        for fault in self.pending:
            if fault.kind == kind and fault.matches(venue, market, symbol):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.pending.remove(fault)
                return fault
        return None


class BadParam(Exception):
    """A query parameter is missing or malformed (mapped to the venue's error)."""

    def __init__(self, name: str, *, missing: bool = False) -> None:
        super().__init__(name)
        self.name = name
        self.missing = missing


class Params(QueryParams):
    """Query parameters (last value wins) with typed getters."""

    def missing(self, name: str) -> Exception:
        """A missing parameter is reported in the venue's error shape."""
        return BadParam(name, missing=True)

    def integer(self, name: str, default: int | None = None) -> int | None:
        """An integer parameter (``default`` when absent)."""
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            try:
                real = float(value)
            except ValueError:
                raise BadParam(name) from None
            if not math.isfinite(real):
                raise BadParam(name) from None
            number = int(real)
        return number


BinanceHandler = Callable[["Emulator", str, str, Params], HttpResponse]
"""``(emulator, market, endpoint, params)`` -> response."""
BybitHandler = Callable[["Emulator", str, Params], HttpResponse]
"""``(emulator, endpoint, params)`` -> response."""


class RestApi:
    """Dispatches REST paths to the venue modules."""

    def __init__(self, emulator: Emulator, *, binance: BinanceHandler, bybit: BybitHandler) -> None:
        """Bind the API to an emulator (feeds, clock, limits, faults).

        Args:
            emulator: The emulator.
            binance: Handler of Binance endpoints.
            bybit: Handler of Bybit endpoints.
        """
        self.emu = emulator
        self._binance = binance
        self._bybit = bybit

    @staticmethod
    def handles(path: str) -> bool:
        """Whether ``path`` is a REST endpoint of some venue."""
        return path.startswith(REST_PREFIXES)

    def respond(self, path: str) -> HttpResponse:
        """Answer one GET request.

        Args:
            path: Request path with query string.
        """
        split = urlsplit(path)
        params = Params(split.query)
        if split.path.startswith("/bybit/"):
            return self._bybit(self.emu, split.path[len("/bybit/v5/market/") :], params)
        market = "spot" if split.path.startswith("/binance/spot/") else "usdm"
        prefix = "/binance/spot/api/v3/" if market == "spot" else "/binance/usdm/fapi/v1/"
        if not split.path.startswith(prefix):
            return HttpResponse(404, b'{"code":-1000,"msg":"Unknown endpoint."}')
        return self._binance(self.emu, market, split.path[len(prefix) :], params)
