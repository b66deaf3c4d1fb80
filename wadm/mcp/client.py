"""The MCP server's only way to WADM: its REST API over HTTP(S), with an API key.

Every failure becomes a :class:`ToolError` whose message tells the model what happened and what
to do about it (WADM unreachable, a refused key, a symbol that is not collected with the list of
those that are, no data yet, a rate limit with the wait). Nothing here knows about markets beyond
what ``/api/v1/symbols`` says.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from mcp.server.mcpserver.exceptions import ToolError

__all__ = ["Listing", "WadmClient", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8920"
LISTING_TTL = 60.0  # seconds the list of collected markets is reused


@dataclass(frozen=True, slots=True)
class Listing:
    """One collected (exchange, market, symbol) as ``/api/v1/symbols`` lists it."""

    exchange: str
    market: str
    symbol: str
    channels: tuple[str, ...]
    collecting: bool
    since: int | None  # ms
    tick: float | None
    lot: float | None

    @property
    def name(self) -> str:
        return f"{self.exchange} {self.market}"


class WadmClient:
    """An async client of one WADM API.

    Args:
        url: the API's base URL (``WADM_URL``), e.g. ``https://wadm.example.com``.
        api_key: sent as ``Authorization: Bearer`` when given (``WADM_API_KEY``).
        ca_file: a PEM bundle to trust instead of the system's (a private CA, ``WADM_CA_FILE``).
        timeout: seconds for one request.
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *, ca_file: str | None = None,
                 timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "wadm-mcp"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, verify=verify,
                                       follow_redirects=False)
        self._listing: tuple[float, list[Listing]] | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, params: Mapping[str, object] | None = None, *,
                  ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
        """GET one endpoint and return its JSON object (an answer with a status in ``ok``); raises
        ToolError with an actionable message."""
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            resp = await self._http.get(path, params=query)
        except httpx.TimeoutException:
            raise ToolError(f"WADM at {self.url} did not answer {path} in time; it may be overloaded or the "
                            "network is slow. Try again in a moment, or ask for less (a shorter window).") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"WADM is unreachable at {self.url} ({type(exc).__name__}: {exc}). Check that the "
                            "service is running and that WADM_URL points at it (an SSH tunnel or HTTPS "
                            "address for a remote server).") from None
        if resp.status_code in ok:
            try:
                body = resp.json()
            except ValueError:
                raise ToolError(f"{self.url}{path} did not answer JSON: is WADM_URL the WADM API?") from None
            if not isinstance(body, dict):
                raise ToolError(f"{self.url}{path} answered an unexpected document: is WADM_URL the WADM API?")
            return body
        raise await self._failure(resp, path, query)

    async def listing(self) -> list[Listing]:
        """What WADM collects (cached for a minute)."""
        now = time.monotonic()
        if self._listing is not None and now - self._listing[0] < LISTING_TTL:
            return self._listing[1]
        body = await self.get("/api/v1/symbols")
        rows = [Listing(str(s["exchange"]), str(s["market"]), str(s["symbol"]), tuple(s.get("channels") or ()),
                        bool(s.get("collecting", True)), s.get("since"), s.get("tick_size"), s.get("lot_size"))
                for s in body.get("symbols", [])]
        self._listing = (now, rows)
        return rows

    async def markets_of(self, symbol: str, exchange: str | None = None, market: str | None = None) -> list[Listing]:
        """The collected markets of ``symbol`` matching the filters; ToolError listing what exists when none."""
        rows = await self.listing()
        mine = [r for r in rows if r.symbol == symbol]
        if not mine:
            raise ToolError(f"{symbol} is not collected by this WADM. Collected: {collected(rows)}.")
        found = [r for r in mine if (exchange is None or r.exchange == exchange)
                 and (market is None or r.market == market)]
        if not found:
            wanted = " ".join(x for x in (exchange, market) if x)
            raise ToolError(f"{symbol} is not collected on {wanted}; it is on: {', '.join(r.name for r in mine)}.")
        return found

    async def _failure(self, resp: httpx.Response, path: str, query: Mapping[str, str]) -> ToolError:
        error: dict[str, Any] = {}
        try:
            body = resp.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                error = body["error"]
        except ValueError:
            pass
        message = str(error.get("message") or resp.reason_phrase or "no detail")
        status = resp.status_code
        if status == 401:
            return ToolError("WADM refused the API key (401): set WADM_API_KEY in this MCP server's environment "
                             "to one of the keys in the server's WADM_API_KEYS.")
        if status == 404 and path.startswith("/api/v1/") and "symbol" in message.lower():
            rows = await self.listing()
            return ToolError(f"{message}. Collected: {collected(rows)}.")
        if status == 429:
            wait = resp.headers.get("Retry-After", "1")
            return ToolError(f"WADM is rate limiting this client (429): wait {wait} s before the next call, "
                             "and prefer one broad call (get_wyckoff_context) to many narrow ones.")
        if status == 503:
            return ToolError(f"WADM has no data for this yet (503): {message}. Collection may have just "
                             "started or be reconnecting; get_status says which.")
        if status == 400:
            name = error.get("parameter")
            return ToolError(f"bad request{f' ({name})' if name else ''}: {message}")
        if status in (502, 504):
            return ToolError(f"the proxy in front of WADM at {self.url} could not reach it ({status}): the WADM "
                             "service is down or restarting.")
        return ToolError(f"WADM answered {status} to {path}: {message}")


def collected(rows: list[Listing]) -> str:
    """``BTCUSDT (binance spot, bybit linear), ETHUSDT (...)``: what a model can ask for."""
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r.symbol, []).append(r.name)
    return "; ".join(f"{s} ({', '.join(m)})" for s, m in sorted(by.items())) or "nothing yet"


def _param(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
